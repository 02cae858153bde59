"""`popbox fetch --daemon` as a child process against a real popbox on 127.0.0.1: new mail
within one interval, SIGHUP adding an account (and a broken file on SIGHUP changing
nothing), SIGTERM in the middle of a 20 MB RETR (exit 0 within 10 s; RFC 1939 §6: without
QUIT nothing is deleted, so the next run delivers it once), backoff on [IN-USE] (RFC 2449
§8.1.1), [AUTH] (RFC 3206 §4) said once and retried at the interval, and SIGKILL at 100
random moments while mail keeps arriving: every message delivered exactly once, in a
Maildir and in an mbox."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent_helpers import (
    Forker,
    deliver,
    popbox_account,
    run_agent,
    start_agent,
    write_accounts,
)
from fetch_helpers import maildir_files, read_mboxrd, relay
from helpers import MailEnv, running_server
from popbox import client
from popbox.client import to_lf
from popbox.server.context import ServerContext


def wire(message: bytes) -> bytes:
    return to_lf(message.replace(b"\n", b"\r\n"))


class Daemon:
    """A running `popbox fetch --daemon`: its output lines as they come (stdout and
    stderr, in order), awaited by pattern."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, root: Path, config: Path, *args: str) -> Daemon:
        return cls(await start_agent(root, config, "--daemon", *args, merged=True))

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            async with self._changed:
                self.lines.append(line.decode().rstrip("\n"))
                self._changed.notify_all()

    async def wait_line(self, pattern: str, after: int = 0, timeout: float = 30) -> int:
        """The index of the first line from `after` on that matches `pattern`."""
        async def find() -> int:
            async with self._changed:
                while True:
                    for i in range(after, len(self.lines)):
                        if re.search(pattern, self.lines[i]):
                            return i
                    await self._changed.wait()
        try:
            return await asyncio.wait_for(find(), timeout)
        except TimeoutError:
            raise AssertionError(f"no line matching {pattern!r} in {self.lines}") from None

    async def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        """Send `sig`; the exit status and the seconds it took to exit."""
        start = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        status = await asyncio.wait_for(self.proc.wait(), 30)
        await asyncio.wait_for(self._reader, 10)
        return status, time.monotonic() - start


@contextlib.asynccontextmanager
async def daemon(root: Path, config: Path, *args: str) -> AsyncIterator[Daemon]:
    d = await Daemon.start(root, config, *args)
    try:
        yield d
    finally:
        if d.proc.returncode is None:
            d.proc.kill()
            await d.proc.wait()
        d._reader.cancel()


@pytest.fixture
async def server(env: MailEnv) -> AsyncIterator[tuple[int, ServerContext]]:
    env.add_user("alice")
    env.add_user("bob")
    async with running_server(env.config()) as (port, ctx):
        yield port, ctx


async def test_new_mail_within_an_interval_sighup_and_sigterm(
    env: MailEnv, server: tuple[int, ServerContext], tmp_path: Path
) -> None:
    """Mail put after a poll is delivered by the next one (interval + 10 % jitter); SIGHUP
    with an added account starts it; SIGHUP with a broken file keeps the accounts and
    says so in one line; SIGHUP with one account removed and one changed applies both;
    SIGTERM: exit 0 at once."""
    port, _ = server
    interval = 1.5
    config = tmp_path / "fetch.toml"
    work = popbox_account(port, "alice", maildir="Maildir", interval=interval)
    write_accounts(config, {"work": work})
    async with daemon(tmp_path, config) as d:
        await d.wait_line(r"^popbox fetch: polling 1 account\(s\)$")
        first = await d.wait_line(r"work: no new mail for alice@.*; next poll in 1\.\d\d s$")
        put_at = time.monotonic()
        deliver(env, "alice", b"Subject: new\n\nnew mail\n")
        got = await d.wait_line(r"work: 1 new message\(s\) for alice", after=first)
        assert time.monotonic() - put_at < interval * 1.1 + 1.0
        assert list(maildir_files(tmp_path / "Maildir").values()) == [
            wire(b"Subject: new\n\nnew mail\n")]
        assert got == first + 1  # one line per poll

        deliver(env, "bob", b"Subject: for bob\n\nhello\n")
        home = popbox_account(port, "bob", mbox="bob.mbox", interval=interval)
        write_accounts(config, {"work": work, "home": home})
        d.proc.send_signal(signal.SIGHUP)
        mark = await d.wait_line(r"polling 2 account\(s\): added home$")
        await d.wait_line(r"home: 1 new message\(s\) for bob@.* delivered to .*bob\.mbox",
                          after=mark)
        bodies = [body for _, body in read_mboxrd((tmp_path / "bob.mbox").read_bytes())]
        assert bodies == [wire(b"Subject: for bob\n\nhello\n")]

        config.write_text("[accounts.work\n")
        d.proc.send_signal(signal.SIGHUP)
        mark = await d.wait_line(r"the accounts file was not reloaded: fetch\.toml: not valid")
        await d.wait_line(r"work: no new mail", after=mark)
        await d.wait_line(r"home: no new mail", after=mark)

        write_accounts(config, {"home": {**home, "interval": 0.5}})
        d.proc.send_signal(signal.SIGHUP)
        mark = await d.wait_line(r"polling 1 account\(s\): removed work; changed home$")
        polls = [await d.wait_line(r"home: no new mail.*next poll in 0\.5\d s$", after=mark)]
        polls.append(await d.wait_line(r"home: no new mail", after=polls[0] + 1))
        assert polls[1] == polls[0] + 1  # nothing of work after its last run
        status, seconds = await d.stop()
    assert status == 0 and seconds < 10
    assert d.lines[-1] == "popbox fetch: stopped"
    assert env.messages("alice") == env.messages("bob") == []


async def test_sigterm_mid_retr_of_20_mb(env: MailEnv, server: tuple[int, ServerContext],
                                         tmp_path: Path) -> None:
    """SIGTERM while a 20 MB message streams from a server that has stopped answering:
    exit 0 within 10 s; nothing is deleted (no QUIT); the next run delivers it once."""
    port, ctx = server
    line = b"a line of a very big message ..........................................\n"
    big = b"Subject: big\n\n" + line * (20_000_000 // len(line))
    env.put("alice", big)
    env.put("alice", b"Subject: small\n\nsmall\n")
    async with relay(port, trigger_bytes=5_000_000) as (r, relay_port):
        config = write_accounts(tmp_path / "fetch.toml", {
            "work": popbox_account(relay_port, "alice", maildir="M", interval=60)})
        async with daemon(tmp_path, config) as d:
            await asyncio.wait_for(r.triggered.wait(), 60)
            status, seconds = await d.stop()
        assert status == 0 and seconds < 10, (status, seconds, d.lines)
        r.disarm()
        if ctx.sessions:
            await asyncio.wait(set(ctx.sessions))
        assert len(env.messages("alice")) == 2
        result = await run_agent(tmp_path, config)
    assert result.status == 0, result.err
    assert Counter(maildir_files(tmp_path / "M").values()) == Counter(
        [wire(big), wire(b"Subject: small\n\nsmall\n")])
    assert env.messages("alice") == []


@contextlib.asynccontextmanager
async def watching(target: int, after: int) -> AsyncIterator[tuple[asyncio.Event, int]]:
    """A pass-through proxy to `target` that sets its event once `after` octets have
    come from the server (and goes on forwarding)."""
    seen = asyncio.Event()
    count = 0
    tasks: set[asyncio.Task[None]] = set()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   counted: bool) -> None:
        nonlocal count
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if counted:
                    count += len(data)
                    if count >= after:
                        seen.set()
                writer.write(data)
                await writer.drain()
        writer.close()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        for job in (pump(reader, up_writer, False), pump(up_reader, writer, True)):
            task = asyncio.ensure_future(job)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    proxy = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield seen, proxy.sockets[0].getsockname()[1]
    finally:
        proxy.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await proxy.wait_closed()


async def test_sigterm_finishes_the_message_in_flight(
    env: MailEnv, server: tuple[int, ServerContext], tmp_path: Path
) -> None:
    """SIGTERM while a 20 MB message streams from a server that goes on answering: that
    message is delivered and recorded, DELE'd and removed at QUIT (RFC 1939 §6); the
    next message is left for later; exit 0 within 10 s."""
    port, ctx = server
    line = b"a line of a very big message ..........................................\n"
    big = b"Subject: big\n\n" + line * (20_000_000 // len(line))
    env.put("alice", big)
    env.put("alice", b"Subject: small\n\nsmall\n")
    async with watching(port, 2_000_000) as (seen, proxy_port):
        config = write_accounts(tmp_path / "fetch.toml", {
            "work": popbox_account(proxy_port, "alice", maildir="M", interval=60)})
        async with daemon(tmp_path, config) as d:
            await asyncio.wait_for(seen.wait(), 60)
            status, seconds = await d.stop()
    assert status == 0 and seconds < 10, (status, seconds, d.lines)
    assert any("work: 1 new message(s)" in x and "stopped early" in x for x in d.lines), d.lines
    if ctx.sessions:
        await asyncio.wait(set(ctx.sessions))
    assert list(maildir_files(tmp_path / "M").values()) == [wire(big)]
    assert env.messages("alice") == [b"Subject: small\n\nsmall\n"]


async def test_backoff_on_in_use_and_auth_said_once(
    env: MailEnv, server: tuple[int, ServerContext], tmp_path: Path
) -> None:
    """While another session holds the maildrop, each poll waits twice as long as the
    last; once it is free, the mail comes. A refused login is said once and retried at
    the plain interval (every run is still a JSON object)."""
    port, _ = server
    env.put("alice", b"Subject: waiting\n\nx\n")
    config = write_accounts(tmp_path / "fetch.toml", {
        "work": popbox_account(port, "alice", maildir="M", interval=0.2),
        "wrong": popbox_account(port, "bob", maildir="W", interval=0.2, password="nope"),
    })
    async with await client.connect("127.0.0.1", port, tls="none") as pop:
        await pop.login("alice", "secret")
        async with daemon(tmp_path, config, "--json") as d:
            delays: list[float] = []
            at = 0
            for _ in range(3):
                at = await d.wait_line(r"work: the mailbox of alice .* \[IN-USE\]", after=at)
                delays.append(float(re.findall(r"next poll in ([\d.]+) s$", d.lines[at])[0]))
                at += 1
            for n, delay in enumerate(delays, 1):
                assert 0.2 * 2 ** n <= delay <= 0.2 * 2 ** n * 1.1 + 0.01, delays
            runs = [json.loads(x) for x in d.lines if x.startswith("{")]
            wrong = [x for x in runs if x["account"] == "wrong"]
            assert wrong and all(x["error"]["class"] == "EX_NOPERM" for x in wrong)
            await pop.quit()
            await d.wait_line(r'"account": "work".*"delivered": 1', timeout=60)
            said = sum("popbox fetch: wrong: login" in x for x in d.lines)
            polls = sum('"account": "wrong"' in x for x in d.lines)
            assert said == 1 and polls >= 5, d.lines
            status, _ = await d.stop()
    assert status == 0
    assert list(maildir_files(tmp_path / "M").values()) == [wire(b"Subject: waiting\n\nx\n")]


@pytest.mark.timeout(400)
async def test_sigkill_at_random_moments_delivers_every_message_once(
    env: MailEnv, server: tuple[int, ServerContext], tmp_path: Path
) -> None:
    """100 SIGKILLs of `popbox fetch --daemon` polling every 200 ms, at random moments
    after it is ready or just after it delivered a message (two at a time; forked from a
    process that imported popbox once),
    while mail keeps arriving (some of it 300 KB, so that kills land mid-RETR too): after
    a last clean run, every message is in the Maildir or the mbox exactly once."""
    port, ctx = server
    seed = int(os.environ.get("POPBOX_KILL_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    sent: dict[str, list[bytes]] = {"alice": [], "bob": []}
    config = write_accounts(tmp_path / "fetch.toml", {
        "box": popbox_account(port, "alice", maildir="Maildir", interval=0.2, batch=3),
        "spool": popbox_account(port, "bob", mbox="mail.mbox", interval=0.2, batch=3),
    })
    stop_mail = asyncio.Event()

    async def keep_sending() -> None:
        n = 0
        while not stop_mail.is_set():
            for user in ("alice", "bob"):
                for _ in range(rng.randrange(1, 6)):
                    n += 1
                    size = 300_000 if rng.random() < 0.1 else rng.randrange(10, 3000)
                    message = b"Subject: %d\n\n" % n + b"y" * size + b"\n"
                    deliver(env, user, message)
                    sent[user].append(message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_mail.wait(), 0.3)

    recovered = 0  # -v lines of runs finishing what a killed one left half done

    async def lane(forker: Forker, kills: int) -> None:
        nonlocal recovered
        for _ in range(kills):
            pid, output = await forker.spawn(["--config", str(config), "--daemon", "-v"])
            seen = b""
            while b"polling" not in seen:
                seen = await asyncio.wait_for(output.readline(), 60)
            if rng.random() < 0.5:  # any moment
                await asyncio.sleep(rng.uniform(0, 0.6))
            else:  # just after a message, mid-batch (up to a second for one to come)
                with contextlib.suppress(TimeoutError):
                    while b") delivered" not in seen:
                        seen = await asyncio.wait_for(output.readline(), 1)
                await asyncio.sleep(rng.uniform(0, 0.02))
            os.kill(pid, signal.SIGKILL)
            rest = b""
            while data := await asyncio.wait_for(output.read(65536), 30):  # to its end
                rest += data
            recovered += len(re.findall(rb"interrupted (?:run|delivery)", rest))

    sender = asyncio.ensure_future(keep_sending())
    started = time.monotonic()
    try:
        # Two daemons at once (each lane kills 50 times): they also meet on the state
        # files' locks, which a killed holder releases.
        async with Forker(tmp_path) as forker:
            await asyncio.gather(lane(forker, 50), lane(forker, 50))
    finally:
        stop_mail.set()
        await sender
    killing = time.monotonic() - started
    for _ in range(20):  # a session a kill cut short may hold a maildrop for a moment
        if ctx.sessions:
            await asyncio.wait(set(ctx.sessions))
        last = await run_agent(tmp_path, config)
        if last.status == 0:
            break
    assert last.status == 0, (seed, last)
    got_maildir = Counter(maildir_files(tmp_path / "Maildir").values())
    got_mbox = Counter(body for _, body in read_mboxrd((tmp_path / "mail.mbox").read_bytes()))
    assert got_maildir == Counter(wire(m) for m in sent["alice"]), f"seed {seed}"
    assert got_mbox == Counter(wire(m) for m in sent["bob"]), f"seed {seed}"
    assert env.messages("alice") == env.messages("bob") == [], f"seed {seed}"
    print(f"seed {seed}: 100 kills in {killing:.1f} s, {len(sent['alice'])} + "
          f"{len(sent['bob'])} messages, {recovered} recoveries from a kill")


async def test_never_more_often_than_login_delay(env: MailEnv, tmp_path: Path) -> None:
    """A server announcing LOGIN-DELAY 1 (RFC 2449 §6.8) is polled every second at the
    soonest, though the account asks for 0.2 s, so it never answers [LOGIN-DELAY].
    SIGINT stops the daemon as SIGTERM does."""
    env.add_user("alice")
    async with running_server(env.config(limits={"login_delay": 1})) as (port, _):
        config = write_accounts(tmp_path / "fetch.toml", {
            "work": popbox_account(port, "alice", maildir="M", interval=0.2)})
        async with daemon(tmp_path, config) as d:
            at = 0
            for _ in range(3):
                at = await d.wait_line(r"work: ", after=at) + 1
            status, seconds = await d.stop(signal.SIGINT)
    polls = [line for line in d.lines if "work: " in line]
    assert all("no new mail" in line for line in polls), polls
    delays = [float(re.findall(r"next poll in ([\d.]+) s$", line)[0]) for line in polls]
    assert all(1.0 <= delay <= 1.11 for delay in delays), delays
    assert status == 0 and seconds < 10 and d.lines[-1] == "popbox fetch: stopped"
