"""Helpers for the client and `popbox fetch` tests: the fetch command as a child process,
a TCP relay on 127.0.0.1 that can freeze or cut a conversation at a chosen point, and
readers for what fetch delivers (Maildir, mboxrd)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

FETCH_TIMEOUT = 60


@dataclass
class Result:
    status: int
    out: str
    err: str


def fetch_argv(port: int, *args: str, state: Path, user: str = "alice") -> list[str]:
    return [sys.executable, "-m", "popbox", "fetch", "--server", "127.0.0.1", "--port",
            str(port), "--user", user, "--state", str(state), *args]


def fetch_env(password: str = "secret") -> dict[str, str]:
    return {**os.environ, "POPBOX_FETCH_PASSWORD": password}


async def start_fetch(argv: list[str], password: str = "secret"
                      ) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=fetch_env(password))


async def finish(proc: asyncio.subprocess.Process) -> Result:
    out, err = await asyncio.wait_for(proc.communicate(), FETCH_TIMEOUT)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def run_fetch(argv: list[str], password: str = "secret") -> Result:
    return await finish(await start_fetch(argv, password))


async def kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL: no finally blocks, no atexit, no flushing."""
    proc.kill()
    await asyncio.wait_for(proc.communicate(), FETCH_TIMEOUT)


def maildir_files(maildir: Path) -> dict[str, bytes]:
    """Every message file in new/ and cur/ by name."""
    return {p.name: p.read_bytes() for sub in ("new", "cur") if (maildir / sub).is_dir()
            for p in (maildir / sub).iterdir()}


def read_mboxrd(data: bytes) -> list[tuple[bytes, bytes]]:
    """(From line, message) pairs: a message starts at "From " after an empty line (or at
    the start), ends before the empty line that precedes the next; one ">" is removed
    from lines matching ">+From "."""
    assert not data or data.startswith(b"From "), data[:80]
    messages: list[tuple[bytes, bytes]] = []
    if not data:
        return messages
    assert data.endswith(b"\n\n"), data[-80:]
    for part in re.split(rb"\n\n(?=From )", data[:-2]):
        first, _, body = part.partition(b"\n")
        body = body + b"\n" if body else body
        messages.append((first, re.sub(rb"(?m)^>(>*From )", rb"\1", body)))
    return messages


class Relay:
    """Forwards connections on 127.0.0.1 to `target`. When `trigger_retr` RETR commands
    have been sent, or `trigger_bytes` octets have come back from the server, it sets
    `triggered` and freezes the conversation (forwards nothing more) or, with `drop`,
    cuts both connections. A rerun goes through the same relay (`disarm`), so that fetch
    sees the same server and port."""

    def __init__(self, target: int, *, trigger_retr: int | None = None,
                 trigger_bytes: int | None = None, drop: bool = False) -> None:
        self.target = target
        self.trigger_retr = trigger_retr
        self.trigger_bytes = trigger_bytes
        self.drop = drop
        self.triggered = asyncio.Event()
        self.retrs = 0
        self.from_server = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def _fire(self) -> None:
        self.triggered.set()
        if self.drop:
            self.close_connections()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers += [writer, up_writer]
        for task in (self._pump(reader, up_writer, upstream=True),
                     self._pump(up_reader, writer, upstream=False)):
            t = asyncio.ensure_future(task)
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    upstream: bool) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while not self.triggered.is_set():
                data = await reader.read(65536)
                if not data:
                    writer.close()
                    return
                if upstream and self.trigger_retr is not None:
                    self.retrs += data.count(b"RETR ")
                    if self.retrs >= self.trigger_retr:
                        self._fire()
                        return
                if not upstream:
                    self.from_server += len(data)
                    if self.trigger_bytes is not None and self.from_server >= self.trigger_bytes:
                        self._fire()
                        return
                writer.write(data)
                await writer.drain()

    def disarm(self) -> None:
        """Cut the frozen conversation; from now on, forward everything."""
        self.close_connections()
        self.trigger_retr = self.trigger_bytes = None
        self.drop = False
        self.triggered.clear()

    def close_connections(self) -> None:
        for writer in self._writers:
            writer.transport.abort()

    async def stop(self) -> None:
        self.close_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def relay(target: int, **kwargs: object) -> AsyncIterator[tuple[Relay, int]]:
    r = Relay(target, **kwargs)  # type: ignore[arg-type]
    port = await r.start()
    try:
        yield r, port
    finally:
        await r.stop()


class NoUidlServer:
    """A minimal RFC 1939 server without CAPA and UIDL; DELE applied at QUIT."""

    def __init__(self, messages: list[bytes]) -> None:
        self.messages: dict[int, bytes] = dict(enumerate(messages, 1))

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        deleted: set[int] = set()
        writer.write(b"+OK old server\r\n")
        while line := await reader.readline():
            verb, _, arg = line.strip().decode().partition(" ")
            verb = verb.upper()
            if verb == "QUIT":
                for n in deleted:
                    del self.messages[n]
                writer.write(b"+OK bye\r\n")
                break
            if verb in ("USER", "PASS", "NOOP"):
                writer.write(b"+OK\r\n")
            elif verb == "LIST":
                live = {n: m for n, m in self.messages.items() if n not in deleted}
                writer.write(b"+OK\r\n" + b"".join(b"%d %d\r\n" % (n, len(m)) for n, m in
                                                   live.items()) + b".\r\n")
            elif verb == "RETR":
                body = self.messages[int(arg)].replace(b"\n", b"\r\n")
                writer.write(b"+OK\r\n" + body.replace(b"\r\n.", b"\r\n..") + b".\r\n")
            elif verb == "DELE":
                deleted.add(int(arg))
                writer.write(b"+OK\r\n")
            else:
                writer.write(b"-ERR unknown command\r\n")
            await writer.drain()
        writer.close()
