"""Retention rules against a real popbox on 127.0.0.1, into a real Maildir: `keep_days`
counted from the first delivery the state file records (the clock injected and moved
forward), the server's EXPIRE capability (RFC 2449 §6.7) winning when smaller, and
`max_size` with `oversize` = skip (reported once), delete (DELE unread, RFC 1939 §5) and
headers (a stand-in from `TOP n 0`, RFC 1939 §7, delivered once; the message kept)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from delivery_helpers import Recorder, fetch
from fetch_helpers import maildir_files
from helpers import MailEnv, crlf, running_server
from popbox.client.fetcher import Options
from popbox.client.maildir import Maildir
from popbox.client.retention import DAY, server_expire

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def delivered(maildir: Path) -> list[bytes]:
    return sorted(maildir_files(maildir).values())


def state_account(path: Path) -> dict[str, object]:
    (account,) = json.loads(path.read_text())["accounts"]
    assert isinstance(account, dict)
    return account


async def test_keep_days(env: MailEnv, tmp_path: Path) -> None:
    env.add_user("alice")
    first = [f"Subject: {n}\n\n{n}\n".encode() for n in range(3)]
    for message in first:
        env.put("alice", message)
    clock = Clock()
    options = Options(keep_days=2, clock=clock)
    maildir, state = tmp_path / "Maildir", tmp_path / "state.json"
    async with running_server(env.config()) as (port, _):
        report = await fetch(port, Maildir(maildir), state, options)
        assert (report.delivered, report.deleted) == (3, 0)
        assert set(state_account(state)["delivered_at"].values()) == {T0}  # type: ignore[union-attr]

        clock.now = T0 + DAY
        late = b"Subject: late\n\nlate\n"
        env.put("alice", late)
        report = await fetch(port, Maildir(maildir), state, options)
        assert (report.new, report.delivered, report.deleted) == (1, 1, 0)

        clock.now = T0 + 2 * DAY - 1
        report = await fetch(port, Maildir(maildir), state, options)
        assert (report.new, report.deleted) == (0, 0)
        assert len(env.messages("alice")) == 4

        clock.now = T0 + 2 * DAY
        report = await fetch(port, Maildir(maildir), state, options)
        assert (report.new, report.deleted) == (0, 3)
        assert env.messages("alice") == [late]

        clock.now = T0 + 3 * DAY
        report = await fetch(port, Maildir(maildir), state, options)
        assert report.deleted == 1
        assert env.messages("alice") == []
        # The next session no longer sees them: the state forgets them.
        await fetch(port, Maildir(maildir), state, options)
    assert delivered(maildir) == sorted([*first, late])
    assert state_account(state)["delivered_at"] == {}


async def test_keep_days_with_an_older_state_file(env: MailEnv, tmp_path: Path) -> None:
    """A state file written before delivery times were kept: its records count from the
    first run with keep_days, so nothing is deleted early."""
    env.add_user("alice")
    paths = [env.put("alice", f"Subject: {n}\n\n{n}\n".encode()) for n in range(2)]
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"version": 1, "accounts": [{
        "server": "127.0.0.1", "port": 0, "user": "alice",
        "delivered": [paths[0].name], "pending": None}]}))
    clock = Clock()
    async with running_server(env.config()) as (port, _):
        data = json.loads(state.read_text())
        data["accounts"][0]["port"] = port
        state.write_text(json.dumps(data))
        options = Options(keep_days=1, clock=clock)
        report = await fetch(port, Maildir(tmp_path / "Maildir"), state, options)
        assert (report.new, report.delivered, report.deleted) == (1, 1, 0)
        assert state_account(state)["delivered_at"] == {p.name: T0 for p in paths}
        clock.now = T0 + DAY
        report = await fetch(port, Maildir(tmp_path / "Maildir"), state, options)
        assert report.deleted == 2
    assert env.messages("alice") == []


def test_server_expire() -> None:
    assert server_expire({"EXPIRE": ["5"]}) == 5
    assert server_expire({"EXPIRE": ["0", "USER"]}) == 0
    assert server_expire({"EXPIRE": ["NEVER"]}) is None
    assert server_expire({"TOP": []}) is None
    assert server_expire(None) is None


@contextlib.asynccontextmanager
async def expire_relay(target: int, expire: bytes) -> AsyncIterator[int]:
    """popbox announces EXPIRE NEVER; this relay on 127.0.0.1 passes everything between
    the client and the server through, and changes that line to EXPIRE `expire` (no
    server installed here can be told to announce a finite EXPIRE)."""
    tasks: set[asyncio.Task[None]] = set()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   rewrite: bool) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if rewrite:
                    data = data.replace(b"EXPIRE NEVER\r\n", b"EXPIRE " + expire + b"\r\n")
                writer.write(data)
                await writer.drain()
        writer.close()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        for coro in (pump(reader, up_writer, False), pump(up_reader, writer, True)):
            task = asyncio.ensure_future(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def test_server_expire_wins_when_smaller(env: MailEnv, tmp_path: Path) -> None:
    env.add_user("alice")
    env.put("alice", b"Subject: a\n\na\n")
    clock = Clock()
    options = Options(keep_days=5, clock=clock)
    async with running_server(env.config()) as (port, _), expire_relay(port, b"1") as relay:
        report = await fetch(relay, Maildir(tmp_path / "Maildir"), tmp_path / "s.json", options)
        assert (report.delivered, report.deleted) == (1, 0)
        assert any("EXPIRE 1" in note and "keep_days = 5" in note for note in report.notes)
        clock.now = T0 + DAY
        report = await fetch(relay, Maildir(tmp_path / "Maildir"), tmp_path / "s.json", options)
        assert report.deleted == 1
        assert env.messages("alice") == []
        # A larger EXPIRE changes nothing and is not reported.
        env.put("alice", b"Subject: b\n\nb\n")
    async with running_server(env.config()) as (port, _), expire_relay(port, b"9") as relay:
        report = await fetch(relay, Maildir(tmp_path / "Maildir"), tmp_path / "t.json",
                             Options(keep_days=5, clock=clock))
        assert (report.delivered, report.deleted, report.notes) == (1, 0, [])
        report = await fetch(relay, Maildir(tmp_path / "Maildir"), tmp_path / "u.json",
                             Options(keep=True))
        assert any("EXPIRE 9" in note and "whatever keep says" in note
                   for note in report.notes)


SMALL = b"Subject: small\n\nsmall\n"
BIG = [b"Subject: big %d\nMIME-Version: 1.0\nContent-Type: multipart/mixed;\n boundary=x\n\n"
       % n + b"--x\n" + b"y" * 5000 + b"\n--x--\n" for n in range(2)]


@pytest.fixture
def oversized(env: MailEnv) -> MailEnv:
    env.add_user("alice")
    env.put("alice", SMALL)
    for message in BIG:
        env.put("alice", message)
    return env


async def test_oversize_skip_reports_once(oversized: MailEnv, tmp_path: Path) -> None:
    options = Options(max_size=1000)
    maildir, state = tmp_path / "Maildir", tmp_path / "state.json"
    async with running_server(oversized.config()) as (port, _):
        report = await fetch(port, Maildir(maildir), state, options)
        assert (report.new, report.delivered, report.skipped, report.deleted) == (3, 1, 2, 1)
        assert len(report.notes) == 2
        assert all("over max_size 1000: left on the server" in n for n in report.notes)
        report = await fetch(port, Maildir(maildir), state, options)
        assert (report.new, report.skipped, report.notes) == (2, 2, [])
        assert sorted(oversized.messages("alice")) == sorted(BIG)
        report = await fetch(port, Maildir(maildir), state, Options(max_size=len(crlf(BIG[0]))))
        assert (report.delivered, report.deleted) == (2, 2)
    assert delivered(maildir) == sorted([SMALL, *BIG])
    assert oversized.messages("alice") == []
    assert state_account(state)["oversize_reported"] == []


async def test_oversize_delete(oversized: MailEnv, tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    async with running_server(oversized.config()) as (port, _):
        report = await fetch(port, Maildir(maildir), tmp_path / "state.json",
                             Options(max_size=1000, oversize="delete"))
    assert (report.delivered, report.deleted, report.octets) == (1, 3, len(crlf(SMALL)))
    assert len(report.notes) == 2
    assert all("deleted on the server without being fetched" in n for n in report.notes)
    assert delivered(maildir) == [SMALL]
    assert oversized.messages("alice") == []


async def test_oversize_headers(oversized: MailEnv, tmp_path: Path) -> None:
    maildir, state = tmp_path / "Maildir", tmp_path / "state.json"
    options = Options(max_size=1000, oversize="headers")
    progress = Recorder()
    async with running_server(oversized.config()) as (port, _):
        report = await fetch(port, Maildir(maildir), state, options, progress)
        assert (report.delivered, report.skipped, report.deleted) == (1, 2, 1)
        assert progress.begun == [(3, len(crlf(SMALL)))]  # a stand-in's size is not known
        assert progress.messages == 3
        assert progress.octets == report.octets > len(crlf(SMALL))
        files = delivered(maildir)
        assert len(files) == 3
        stand_ins = [f for f in files if f != SMALL]
        for n, stand_in in enumerate(sorted(stand_ins)):
            head, _, note = stand_in.partition(b"\n\n")
            assert head.startswith(b"Subject: big %d\n" % n)
            assert b"boundary" not in head  # the multipart structure is gone
            assert b"Content-Type: text/plain; charset=us-ascii" in head
            assert f"This message is {len(crlf(BIG[n]))} octets".encode() in note
            assert b"y" * 100 not in stand_in
        # The messages stay on the server (only their headers were delivered), and the
        # stand-ins are not delivered again.
        assert sorted(oversized.messages("alice")) == sorted(BIG)
        report = await fetch(port, Maildir(maildir), state, options)
        assert (report.delivered, report.skipped, report.deleted, report.notes) == (0, 2, 0, [])
        assert len(delivered(maildir)) == 3
        # Without the size rule the messages themselves are fetched, then deleted.
        report = await fetch(port, Maildir(maildir), state, Options())
        assert (report.delivered, report.deleted) == (2, 2)
        assert oversized.messages("alice") == []
        await fetch(port, Maildir(maildir), state, Options())
    assert sorted(set(delivered(maildir)) - set(stand_ins)) == sorted([SMALL, *BIG])
    assert state_account(state)["delivered"] == []  # the stand-ins' records went too


async def test_oversize_with_a_limit(oversized: MailEnv, tmp_path: Path) -> None:
    """`limit` counts deliveries, a stand-in included."""
    maildir, state = tmp_path / "Maildir", tmp_path / "state.json"
    async with running_server(oversized.config()) as (port, _):
        report = await fetch(port, Maildir(maildir), state,
                             Options(max_size=1000, oversize="headers", limit=2, keep=True))
        assert (report.delivered, report.left, report.deleted) == (1, 1, 0)
        assert len(delivered(maildir)) == 2
        report = await fetch(port, Maildir(maildir), state,
                             Options(max_size=1000, oversize="headers", limit=2, keep=True))
        assert (report.delivered, report.left) == (0, 0)
    assert len(delivered(maildir)) == 3
