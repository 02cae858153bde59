"""The load generator: a POP3 client in its own process, asyncio on uvloop.

Run as ``python -m bench.load``: it reads one job (JSON) from the first line of stdin,
runs it and prints the result as one JSON line on stdout. Jobs that hold sessions open
(``idle``, ``huge``) print an event line at each checkpoint and wait for a line on stdin
before going on, so the harness can read the server's memory at that moment.

Every reply is checked: the status is ``+OK``; STAT equals the expected (messages,
octets) for the user; a multi-line reply ends with CRLF "." CRLF and every line starting
with "." in it is byte-stuffed; the octets of a RETR after un-stuffing equal the size
LIST gave for that message. A failed check counts as an error (and ends that session);
the first few error texts are reported.

Every job is bounded: by a number of operations and by a deadline.

Jobs::

    {"kind": "logins", "port": P, "users": [[user, pw, msgs, octets], ...],
     "concurrency": C, "max_ops": N, "seconds": S}
        C workers; worker w logs in as users[w], users[w + C], ... in turn:
        connect, USER, PASS, STAT, QUIT, wait for the server to close.
        With "stls": true and "cafile": PEM, the session starts with STLS.
    {"kind": "retr", ...same fields...}
        C workers, one user each: login, STAT, LIST, RETR every message, QUIT;
        again until `seconds` have passed (a started session is finished).
    {"kind": "uidl", "port": P, "users": [[user, pw, msgs, octets]]}
        one session: time from sending PASS to the end of the UIDL listing.
    {"kind": "idle", "port": P, "users": [...], "concurrency": C, "seconds": S}
        log every user in (C at a time) and keep the sessions open; print
        {"event": "ready", "ok": n, ...}; on a stdin line, close them all.
        With "stls": true and "cafile": PEM, every session starts with STLS and
        stays in TLS while it is open.
    {"kind": "huge", "port": P, "users": [[user, pw, 1, octets]]}
        login + STAT, event "logged-in", wait; RETR 1, event "retrieved", wait; QUIT.
    {"kind": "mixed", ...the fields of "logins"...}
        C workers; worker w has users[w], users[w + C], ... and takes them in turn:
        login, STAT, UIDL, LIST, RETR of the newest few messages, DELE of the oldest
        while more than a few are left, QUIT. Each user's (messages, octets) is
        followed from session to session (STAT must equal it) and returned in "state".
    {"kind": "quit", "port": P, "users": [[user, pw, msgs, octets]], "sessions": N,
     "dele": bool}
        N sessions one after the other, each after an event "reset" (the harness may
        put the maildrop back as it was): login, STAT, LIST, RETR of every message
        (and DELE of each with "dele"), QUIT. A sample is the time from sending QUIT
        to reading its +OK line (the server commits first, RFC 1939 §6).
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast

from bench.servers import raise_fd_limit

TERM = b"\r\n.\r\n"
IO_TIMEOUT = 60.0


class CheckError(Exception):
    """A reply that is not what the protocol or the corpus says it must be."""


class _Conn(asyncio.Protocol):
    """A minimal POP3 client connection over an asyncio Protocol (no StreamReader copies)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.scan = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def _more(self) -> None:
        if self.closed:
            raise CheckError("connection closed by the server")
        # A timer of the loop's own rather than asyncio.wait_for, which costs several
        # objects and callbacks per wait: the generator's CPU is taken from the servers.
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        timer = loop.call_later(IO_TIMEOUT, self._expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None

    @staticmethod
    def _expire(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(CheckError(f"no reply within {IO_TIMEOUT:.0f}s"))

    def send(self, line: bytes) -> None:
        assert self.transport is not None
        self.transport.write(line + b"\r\n")

    async def line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                out = bytes(self.buf[:end])
                del self.buf[:end + 2]
                return out
            await self._more()

    async def ok(self, command: bytes) -> bytes:
        self.send(command)
        reply = await self.line()
        if not reply.startswith(b"+OK"):
            shown = command.split()[0] if command.upper().startswith(b"PASS") else command
            raise CheckError(f"{shown.decode()}: {reply[:100]!r}")
        return reply

    async def body(self) -> bytes:
        """The data of a multi-line reply (after its status line), terminator removed:
        every line with its CRLF, still byte-stuffed."""
        start = 0
        while True:
            if self.buf[:3] == b".\r\n":  # at the start: an empty listing
                del self.buf[:3]
                return b""
            end = self.buf.find(TERM, start)
            if end >= 0:
                with memoryview(self.buf) as view:
                    data = bytes(view[:end + 2])
                del self.buf[:end + 5]
                return data
            start = max(0, len(self.buf) - 4)
            await self._more()

    async def multi(self, command: bytes) -> bytes:
        await self.ok(command)
        return await self.body()

    async def message_size(self, command: bytes) -> int:
        """Send RETR: the octets of its data once un-stuffed. The data is checked
        where it lies in the buffer and dropped (see `unstuffed_size`)."""
        await self.ok(command)
        # Nothing is pipelined, so the reply is complete when the buffer ends with the
        # terminator. One that comes early (an unstuffed "." line) fails the check below.
        while not (self.buf.endswith(TERM) or self.buf == b".\r\n"):  # or: no data
            await self._more()
        size = unstuffed_size(self.buf, len(self.buf) - 3)
        self.buf.clear()
        return size

    async def wait_closed(self) -> None:
        while not self.closed:
            await self._more_or_closed()

    async def _more_or_closed(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self.waiter, IO_TIMEOUT)
        except TimeoutError:
            raise CheckError("server did not close after QUIT") from None
        finally:
            self.waiter = None

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


_DOT_LINE = re.compile(rb"\n\.(.)", re.DOTALL)


def unstuffed_size(data: bytes | bytearray, end: int) -> int:
    """Octets of `data[:end]` (lines with CRLF, byte-stuffed) after removing byte-stuffing;
    raises if a line starting with "." was not stuffed or `data[:end]` does not end with
    CRLF. One pass (re: two `bytes.count` passes cost more than twice as much)."""
    if end and data[end - 2:end] != b"\r\n":
        raise CheckError("multi-line data does not end with CRLF")
    after_dots = _DOT_LINE.findall(data, 0, end)
    if end and data[:1] == b".":
        after_dots.append(data[1:2])
    stuffed = after_dots.count(b".")
    if stuffed != len(after_dots):
        raise CheckError("a line starting with '.' was not byte-stuffed")
    return end - stuffed


@dataclass
class Session:
    user: str
    password: str
    msgs: int
    octets: int

    @classmethod
    def of(cls, row: list[Any]) -> Session:
        return cls(str(row[0]), str(row[1]), int(row[2]), int(row[3]))


async def connect(port: int, tls: ssl.SSLContext | None = None) -> _Conn:
    """Connect and read the greeting; with `tls`, upgrade with STLS (RFC 2595 §4)."""
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(
        loop.create_connection(_Conn, "127.0.0.1", port), IO_TIMEOUT)
    greeting = await conn.line()
    if not greeting.startswith(b"+OK"):
        conn.abort()
        raise CheckError(f"greeting: {greeting[:100]!r}")
    if tls is not None:
        try:
            await conn.ok(b"STLS")
            assert conn.transport is not None
            new = await asyncio.wait_for(loop.start_tls(
                conn.transport, conn, tls, server_hostname="localhost"), IO_TIMEOUT)
        except BaseException:
            conn.abort()
            raise
        if new is None:
            raise CheckError("STLS: the connection closed during the handshake")
        conn.transport = new
    return conn


def tls_context(job: dict[str, Any]) -> ssl.SSLContext | None:
    if not job.get("stls"):
        return None
    return ssl.create_default_context(cafile=str(job["cafile"]))


async def login(port: int, s: Session, tls: ssl.SSLContext | None = None) -> _Conn:
    conn = await connect(port, tls)
    try:
        await conn.ok(b"USER " + s.user.encode())
        await conn.ok(b"PASS " + s.password.encode())
    except BaseException:
        conn.abort()
        raise
    return conn


async def check_stat(conn: _Conn, s: Session) -> None:
    reply = await conn.ok(b"STAT")
    parts = reply.split()
    if len(parts) < 3 or (int(parts[1]), int(parts[2])) != (s.msgs, s.octets):
        raise CheckError(f"{s.user}: STAT {reply!r}, expected {s.msgs} {s.octets}")


async def quit_(conn: _Conn) -> None:
    await conn.ok(b"QUIT")
    await conn.wait_closed()


async def list_sizes(conn: _Conn, s: Session) -> list[int]:
    data = await conn.multi(b"LIST")
    sizes = [int(line.split()[1]) for line in data.split(b"\r\n") if line]
    if len(sizes) != s.msgs or sum(sizes) != s.octets:
        raise CheckError(f"{s.user}: LIST gives {len(sizes)} messages, {sum(sizes)} octets")
    return sizes


async def retr(conn: _Conn, number: int, size: int) -> int:
    got = await conn.message_size(b"RETR %d" % number)
    if got != size:
        raise CheckError(f"RETR {number}: {got} octets after un-stuffing, LIST said {size}")
    return got


@dataclass
class Tally:
    ok: int = 0
    errors: int = 0
    messages: int = 0
    octets: int = 0
    latencies: list[float] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.samples) < 5:
            self.samples.append(f"{type(exc).__name__}: {exc}"[:300])


async def job_logins(job: dict[str, Any]) -> dict[str, Any]:
    users = [Session.of(row) for row in job["users"]]
    port, conc = int(job["port"]), int(job["concurrency"])
    max_ops, deadline = int(job["max_ops"]), time.monotonic() + float(job["seconds"])
    tally = Tally()
    started = 0
    tls = tls_context(job)

    async def worker(w: int) -> None:
        nonlocal started
        mine = users[w::conc] or [users[w % len(users)]]
        i = 0
        while started < max_ops and time.monotonic() < deadline:
            started += 1
            s = mine[i % len(mine)]
            i += 1
            t0 = time.perf_counter()
            conn = None
            try:
                conn = await login(port, s, tls)
                await check_stat(conn, s)
                await quit_(conn)
            except (CheckError, OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
                tally.error(exc)
                if conn is not None:
                    conn.abort()
                continue
            tally.latencies.append(time.perf_counter() - t0)
            tally.ok += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(conc)))
    return result(tally, time.perf_counter() - t0)


async def job_retr(job: dict[str, Any]) -> dict[str, Any]:
    users = [Session.of(row) for row in job["users"]]
    port, conc = int(job["port"]), int(job["concurrency"])
    max_ops, deadline = int(job["max_ops"]), time.monotonic() + float(job["seconds"])
    tally = Tally()

    async def worker(w: int) -> None:
        s = users[w % len(users)]
        sessions = 0
        while sessions < max_ops and (sessions == 0 or time.monotonic() < deadline):
            sessions += 1
            conn = None
            try:
                conn = await login(port, s)
                await check_stat(conn, s)
                sizes = await list_sizes(conn, s)
                for number, size in enumerate(sizes, 1):
                    got = await retr(conn, number, size)  # (not `+= await`: workers race)
                    tally.octets += got
                    tally.messages += 1
                await quit_(conn)
            except (CheckError, OSError, TimeoutError) as exc:
                tally.error(exc)
                if conn is not None:
                    conn.abort()
                continue
            tally.ok += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(conc)))
    return result(tally, time.perf_counter() - t0)


async def job_uidl(job: dict[str, Any]) -> dict[str, Any]:
    s = Session.of(job["users"][0])
    port = int(job["port"])
    conn = await connect(port)
    try:
        await conn.ok(b"USER " + s.user.encode())
        t0 = time.perf_counter()
        await conn.ok(b"PASS " + s.password.encode())
        t1 = time.perf_counter()
        await check_stat(conn, s)
        data = await conn.multi(b"UIDL")
        t2 = time.perf_counter()
        uidls = [line.split()[1] for line in data.split(b"\r\n") if line]
        if len(uidls) != s.msgs or len(set(uidls)) != s.msgs:
            raise CheckError(f"UIDL: {len(uidls)} lines, {len(set(uidls))} unique, "
                             f"expected {s.msgs}")
        await quit_(conn)
    finally:
        conn.abort()
    return {"ok": 1, "errors": 0, "login_s": t1 - t0, "latency_s": t2 - t0}


async def _stdin_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def job_idle(job: dict[str, Any]) -> dict[str, Any]:
    users = [Session.of(row) for row in job["users"]]
    port = int(job["port"])
    gate = asyncio.Semaphore(int(job["concurrency"]))
    deadline = time.monotonic() + float(job["seconds"])
    tally = Tally()
    conns: list[_Conn] = []
    tls = tls_context(job)

    async def one(s: Session) -> None:
        async with gate:
            if time.monotonic() > deadline:
                tally.error(CheckError("not started: time bound reached"))
                return
            conn = None
            try:
                conn = await login(port, s, tls)
                await check_stat(conn, s)
            except (CheckError, OSError, TimeoutError) as exc:  # ssl.SSLError: an OSError
                tally.error(exc)
                if conn is not None:  # a failed session holds nothing open
                    conn.abort()
                return
            conns.append(conn)
            tally.ok += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(s) for s in users))
    elapsed = time.perf_counter() - t0
    alive = sum(1 for c in conns if not c.closed)
    emit({"event": "ready", "ok": tally.ok, "alive": alive, "errors": tally.errors,
          "samples": tally.samples, "seconds": elapsed})
    await _stdin_line()
    alive = sum(1 for c in conns if not c.closed)  # the server kept them all?
    for conn in conns:
        conn.abort()
    await asyncio.sleep(0)
    out = result(tally, elapsed)
    out["alive_at_end"] = alive
    return out


async def job_huge(job: dict[str, Any]) -> dict[str, Any]:
    s = Session.of(job["users"][0])
    conn = await login(int(job["port"]), s)
    try:
        await check_stat(conn, s)
        sizes = await list_sizes(conn, s)
        emit({"event": "logged-in"})
        await _stdin_line()
        t0 = time.perf_counter()
        got = await retr(conn, 1, sizes[0])
        elapsed = time.perf_counter() - t0
        emit({"event": "retrieved"})
        await _stdin_line()
        await quit_(conn)
    finally:
        conn.abort()
    return {"ok": 1, "errors": 0, "octets": got, "seconds": elapsed}


MIXED_RETR = 3  # messages a mixed session retrieves (the newest)
MIXED_KEEP = 5  # a mixed session deletes the oldest message while more than this are left


async def job_mixed(job: dict[str, Any]) -> dict[str, Any]:
    users = [Session.of(row) for row in job["users"]]
    port, conc = int(job["port"]), int(job["concurrency"])
    max_ops, deadline = int(job["max_ops"]), time.monotonic() + float(job["seconds"])
    tally = Tally()
    started = 0
    state: dict[str, list[int] | None] = {s.user: [s.msgs, s.octets] for s in users}

    async def session(s: Session) -> None:
        conn = await login(port, s)
        try:
            await check_stat(conn, s)
            data = await conn.multi(b"UIDL")
            uidls = {line.split()[1] for line in data.split(b"\r\n") if line}
            if len(uidls) != s.msgs:
                raise CheckError(f"{s.user}: UIDL gives {len(uidls)} unique, STAT {s.msgs}")
            sizes = await list_sizes(conn, s)
            for number in range(max(1, s.msgs - MIXED_RETR + 1), s.msgs + 1):
                tally.octets += await retr(conn, number, sizes[number - 1])
                tally.messages += 1
            deleted = 0
            if s.msgs > MIXED_KEEP:
                await conn.ok(b"DELE 1")
                deleted = sizes[0]
            state[s.user] = None  # unknown until QUIT has answered
            await quit_(conn)
        except BaseException:
            conn.abort()
            raise
        if deleted:
            s.msgs, s.octets = s.msgs - 1, s.octets - deleted
        state[s.user] = [s.msgs, s.octets]

    async def worker(w: int) -> None:
        nonlocal started
        mine = users[w::conc]
        i = 0
        while mine and started < max_ops and time.monotonic() < deadline:
            started += 1
            s = mine[i % len(mine)]
            i += 1
            t0 = time.perf_counter()
            try:
                await session(s)
            except (CheckError, OSError, TimeoutError) as exc:
                tally.error(exc)
                mine.remove(s)  # its state is unknown now: not used again
                state[s.user] = None
                continue
            tally.latencies.append(time.perf_counter() - t0)
            tally.ok += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(conc)))
    out = result(tally, time.perf_counter() - t0)
    out["state"] = {user: v for user, v in state.items() if v is not None}
    return out


async def job_quit(job: dict[str, Any]) -> dict[str, Any]:
    s = Session.of(job["users"][0])
    port, dele = int(job["port"]), bool(job.get("dele"))
    tally = Tally()
    for n in range(int(job["sessions"])):
        emit({"event": "reset", "session": n})
        await _stdin_line()
        conn = await login(port, s)
        try:
            await check_stat(conn, s)
            sizes = await list_sizes(conn, s)
            for number, size in enumerate(sizes, 1):
                await retr(conn, number, size)
            if dele:
                for number in range(1, len(sizes) + 1):
                    await conn.ok(b"DELE %d" % number)
            t0 = time.perf_counter()
            await conn.ok(b"QUIT")
            tally.latencies.append(time.perf_counter() - t0)
            await conn.wait_closed()
        finally:
            conn.abort()
        tally.ok += 1
    out = result(tally, 0.0)
    out["latencies"] = [1000 * t for t in tally.latencies]  # ms, in session order
    return out


def result(tally: Tally, elapsed: float) -> dict[str, Any]:
    lat = sorted(tally.latencies)
    return {
        "ok": tally.ok, "errors": tally.errors, "samples": tally.samples,
        "seconds": elapsed, "messages": tally.messages, "octets": tally.octets,
        "p50_ms": 1000 * lat[len(lat) // 2] if lat else None,
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
    }


JOBS = {"logins": job_logins, "retr": job_retr, "uidl": job_uidl, "idle": job_idle,
        "huge": job_huge, "mixed": job_mixed, "quit": job_quit}


def main() -> int:
    raise_fd_limit()
    job = json.loads(sys.stdin.readline())
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def run() -> dict[str, Any]:
        return await asyncio.wait_for(JOBS[job["kind"]](job), float(job.get("timeout", 600)))

    try:
        out = asyncio.run(run())
    except (CheckError, OSError, TimeoutError) as exc:
        out = {**result(Tally(), 0.0), "errors": 1,
               "samples": [f"{type(exc).__name__}: {exc}"[:300]]}
    emit({"event": "result", **out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
