"""`popbox fetch` end to end, as a child process against a real popbox on 127.0.0.1: into
a Maildir and an mbox, --keep and delete, exit statuses, and exactly-once delivery across
kill -9 (mid-message, after N messages, mid-mbox-append), a dropped connection and a
server without UIDL (RFC 1939 §6: only QUIT deletes; §7: UIDL identifies a message)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fetch_helpers import (
    NoUidlServer,
    Result,
    fetch_argv,
    finish,
    kill,
    maildir_files,
    read_mboxrd,
    relay,
    run_fetch,
    start_fetch,
)
from helpers import MailEnv, running_server
from popbox import client
from popbox.client import to_lf
from popbox.server.context import ServerContext

SMALL = [
    b"Return-Path: <bob@example.org>\nFrom: bob@example.org\nSubject: one\n\n"
    b"From the start\n>From quoted\n.dot line\n..two\n",
    b"Subject: two\n\nno final newline",
    b"Subject: three\r\n\r\nstored with CRLF\r\n>>From deep\r\n",
    b"Subject: four\n\n\xff\xfe 8-bit and \x00 NUL\n",
]


def as_delivered(message: bytes) -> bytes:
    """What fetch stores: the message as POP3 sends it (CRLF, a final line end), in LF."""
    wire = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if wire and not wire.endswith(b"\r\n"):
        wire += b"\r\n"
    return to_lf(wire)


def big(n: int, size: int = 3 << 20) -> bytes:
    line = b"%07d big message line .....................................\n"
    return b"Subject: big %d\n\n" % n + b"".join(line % i for i in range(size // 60))


def maildir_counts(path: Path) -> Counter[bytes]:
    return Counter(maildir_files(path).values())


def mbox_counts(path: Path) -> Counter[bytes]:
    return Counter(body for _, body in read_mboxrd(path.read_bytes()))


async def sessions_ended(ctx: ServerContext | None) -> None:
    """Wait until the server has finished every session (so its maildrop lock is free)."""
    if ctx is not None and ctx.sessions:
        await asyncio.wait(set(ctx.sessions))


class Setup:
    """A popbox server with alice's mail, and fetch arguments for a destination."""

    def __init__(self, env: MailEnv, port: int, ctx: ServerContext | None, kind: str) -> None:
        self.env, self.port, self.ctx, self.kind = env, port, ctx, kind
        self.dest = env.root / ("Maildir-out" if kind == "maildir" else "mbox-out")
        self.state = env.root / "state" / "fetch.json"

    def argv(self, *args: str, port: int | None = None) -> list[str]:
        return fetch_argv(port or self.port, "--tls", "none", f"--{self.kind}",
                          str(self.dest), *args, state=self.state)

    def delivered(self) -> Counter[bytes]:
        if self.kind == "maildir":
            return maildir_counts(self.dest)
        return mbox_counts(self.dest) if self.dest.exists() else Counter()

    async def run(self, *args: str) -> Result:
        return await run_fetch(self.argv(*args))


@pytest.fixture
async def server(env: MailEnv) -> AsyncIterator[tuple[int, ServerContext]]:
    async with running_server(env.config()) as (port, ctx):
        yield port, ctx


def exactly_once(setup: Setup, messages: list[bytes]) -> None:
    assert setup.delivered() == Counter(as_delivered(m) for m in messages)


# --- ordinary runs -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["maildir", "mbox"])
async def test_keep_then_delete_and_new_mail_once(
    env: MailEnv, server: tuple[int, ServerContext], kind: str
) -> None:
    """--keep leaves the mail; the next run tells old from new by UIDL (RFC 1939 §7),
    fetches only the mail that arrived in between, and (without --keep) deletes it all
    once delivered; a third run finds nothing."""
    setup = Setup(env, *server, kind)
    for message in SMALL[:3]:
        env.put("alice", message)
    first = await setup.run("--keep")
    assert first.status == 0, first.err
    assert first.out == (f"popbox fetch: 3 new message(s) for alice@127.0.0.1:{setup.port} "
                         f"delivered to {setup.dest}\n")
    exactly_once(setup, SMALL[:3])
    assert len(env.messages("alice")) == 3
    env.put("alice", SMALL[3])
    second = await setup.run()
    assert second.status == 0, second.err
    assert "1 new message(s)" in second.out and "4 deleted on the server" in second.out
    assert env.messages("alice") == []
    exactly_once(setup, SMALL)
    third = await setup.run()
    assert third.status == 0
    assert third.out == f"popbox fetch: no new mail for alice@127.0.0.1:{setup.port}\n"
    exactly_once(setup, SMALL)


async def test_maildir_layout_and_limit(
    env: MailEnv, server: tuple[int, ServerContext]
) -> None:
    """Maildir (cr.yp.to): created with tmp/new/cur; names carry the time, the message key,
    and Dovecot's S= (file size) and W= (size with CRLF) that popbox itself reads.
    --limit leaves the rest for the next run."""
    setup = Setup(env, *server, "maildir")
    env.put("alice", SMALL[0])
    env.put("alice", SMALL[1])
    first = await setup.run("--limit", "1")
    assert "1 new message(s)" in first.out and "1 left for the next run" in first.out
    assert {p.name for p in setup.dest.iterdir()} == {"tmp", "new", "cur"}
    [(name, data)] = maildir_files(setup.dest).items()
    match = re.fullmatch(r"(\d+)\.M(\d{6})K([0-9a-f]{32})\.[^,/]+,S=(\d+),W=(\d+)", name)
    assert match, name
    assert int(match.group(4)) == len(data)
    assert int(match.group(5)) == len(data) + data.count(b"\n")
    assert oct((setup.dest / "new" / name).stat().st_mode & 0o777) == "0o600"
    assert env.messages("alice") == [SMALL[1]]
    second = await setup.run("--limit", "1")
    assert "1 new message(s)" in second.out and "left" not in second.out
    exactly_once(setup, SMALL[:2])


async def test_mbox_format(env: MailEnv, server: tuple[int, ServerContext]) -> None:
    """mboxrd: a `From sender date` line (the sender from Return-Path, else
    MAILER-DAEMON), ">" added to ">*From " lines, an empty line after each message, and
    what was in the file before kept, with the empty line it lacked."""
    setup = Setup(env, *server, "mbox")
    setup.dest.write_bytes(b"From someone Mon Jan  1 00:00:00 2024\nSubject: old\n\nold")
    for message in SMALL:
        env.put("alice", message)
    assert (await setup.run()).status == 0
    data = setup.dest.read_bytes()
    assert data.startswith(b"From someone Mon Jan  1 00:00:00 2024\nSubject: old\n\nold\n\n"
                           b"From bob@example.org ")
    assert b"\n>From the start\n>>From quoted\n" in data
    assert b"\n>>>From deep\n" in data
    entries = read_mboxrd(data)
    assert [body for _, body in entries] == [b"Subject: old\n\nold\n"] + [
        as_delivered(m) for m in SMALL]
    assert re.fullmatch(rb"From MAILER-DAEMON \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}",
                        entries[2][0]), entries[2][0]


# --- failures: one line, sysexits status -------------------------------------------------


def one_line(result: Result, status: int, text: str) -> None:
    assert result.status == status, result
    assert result.err.count("\n") == 1 and "Traceback" not in result.err, result.err
    assert result.err.startswith("popbox fetch: ") and text in result.err, result.err


async def test_failures_are_one_line_with_sysexits_status(
    env: MailEnv, server: tuple[int, ServerContext]
) -> None:
    """77 login refused ([AUTH], RFC 3206); 75 [IN-USE] (RFC 2449 §8.1.1), connection
    refused, another fetch on the state file; 78 no STLS (RFC 2595: never plaintext
    instead); 64 usage. The runs are
    independent (each its own state file) and run side by side."""
    setup = Setup(env, *server, "maildir")
    env.add_user("bob")
    env.put("alice", SMALL[0])
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = closed.getsockname()[1]
    states = [env.root / f"state-{i}" / "fetch.json" for i in range(7)]
    states[4].parent.mkdir()

    def argv(state: Path, *args: str, port: int = setup.port, user: str = "alice"
             ) -> list[str]:
        return fetch_argv(port, *args, "--maildir", str(setup.dest), state=state, user=user)

    async with await client.connect("127.0.0.1", setup.port, tls="none") as pop:
        await pop.login("alice", "secret")  # holds alice's maildrop
        with open(f"{states[4]}.lock", "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            results = await asyncio.gather(
                run_fetch(argv(states[0], "--tls", "none", user="bob"), password="wrong"),
                run_fetch(argv(states[1], "--tls", "none")),
                run_fetch(argv(states[2], "--tls", "none", port=refused)),
                run_fetch(argv(states[3])),
                run_fetch(argv(states[4], "--tls", "none")),
                run_fetch(argv(states[5], "--tls", "none"), password=""),
                run_fetch(argv(states[6], "--tls", "none", "--limit", "-1")),
                run_fetch(argv(states[6], "--no-such-option")),
            )
    one_line(results[0], 77, "as bob refused: AUTH: -ERR [AUTH]")
    one_line(results[1], 75, "[IN-USE]")
    one_line(results[2], 75, "cannot connect")
    one_line(results[3], 78, "does not offer STLS")
    one_line(results[4], 75, "another popbox fetch")
    one_line(results[5], 64, "no password")
    one_line(results[6], 64, "--limit")
    assert results[7].status == 64 and "usage: popbox fetch" in results[7].err
    assert maildir_counts(setup.dest) == Counter()
    assert len(env.messages("alice")) == 1


async def test_tls_failure_is_one_line(tls_fetch_env: tuple[MailEnv, str]) -> None:
    """RFC 8314: a certificate nobody vouches for stops the fetch (75); --cafile trusts it."""
    env, cafile = tls_fetch_env
    for message in SMALL[:2]:
        env.put("alice", message)
    async with running_server(env.config()) as (port, ctx):
        setup = Setup(env, port, ctx, "maildir")
        argv = fetch_argv(port, "--tls", "starttls", "--maildir", str(setup.dest),
                          state=setup.state)
        one_line(await run_fetch(argv), 75, "certificate verify failed")
        ok = await run_fetch([*argv, "--cafile", cafile])
        assert ok.status == 0, ok.err
        exactly_once(setup, SMALL[:2])


@pytest.fixture
def tls_fetch_env(env: MailEnv, tmp_path: Path) -> tuple[MailEnv, str]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    chain, key, cafile = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(cafile))
    env.settings["tls"] = {"cert": str(chain), "key": str(key)}
    return env, str(cafile)


# --- interruptions: every message exactly once -------------------------------------------


@pytest.mark.parametrize("kind", ["maildir", "mbox"])
async def test_kill_while_a_big_message_streams(
    env: MailEnv, server: tuple[int, ServerContext], kind: str
) -> None:
    """kill -9 halfway through a 3 MB RETR: the server deletes nothing (no QUIT, RFC 1939
    §6), nothing half-written is visible; the next run delivers each message once."""
    setup = Setup(env, *server, kind)
    messages = [SMALL[0], big(1), *SMALL[1:]]
    for message in messages:
        env.put("alice", message)
    async with relay(setup.port, trigger_bytes=1 << 20) as (r, port):
        proc = await start_fetch(setup.argv(port=port))
        await r.triggered.wait()
        await kill(proc)
        r.disarm()
        await sessions_ended(setup.ctx)
        assert len(env.messages("alice")) == 5
        assert sum(setup.delivered().values()) <= 1
        result = await run_fetch(setup.argv("-v", port=port))
    assert result.status == 0, result.err
    if kind == "maildir":
        assert "1 found delivered by an interrupted run" in result.out
    exactly_once(setup, messages)
    assert env.messages("alice") == []
    if kind == "maildir":
        assert list((setup.dest / "tmp").iterdir()) == []
    else:
        assert list(setup.state.with_name("fetch.json.spool").iterdir()) == []


@pytest.mark.parametrize(("kind", "retrs"), [("maildir", 2), ("mbox", 5)])
async def test_kill_after_some_messages(
    env: MailEnv, server: tuple[int, ServerContext], kind: str, retrs: int
) -> None:
    """kill -9 when the N-th RETR is on its way, with a state update every 2 messages:
    batches already recorded were DELE'd but, without QUIT, not deleted; a delivered but
    unrecorded message (Maildir) is found by its name and not delivered again."""
    setup = Setup(env, *server, kind)
    messages = [b"Subject: m%d\n\nbody %d\n" % (i, i) for i in range(7)]
    for message in messages:
        env.put("alice", message)
    async with relay(setup.port, trigger_retr=retrs) as (r, port):
        proc = await start_fetch(setup.argv("--batch", "2", port=port))
        await r.triggered.wait()
        await kill(proc)
        r.disarm()
        await sessions_ended(setup.ctx)
        assert len(env.messages("alice")) == 7  # no QUIT: nothing deleted
        rerun = await run_fetch(setup.argv(port=port))
    assert rerun.status == 0, rerun.err
    exactly_once(setup, messages)
    assert env.messages("alice") == []
    recorded = (retrs - 1) // 2 * 2  # whole batches before the frozen RETR
    found = (retrs - 1) % 2 if kind == "maildir" else 0  # delivered, not yet recorded
    assert f" {7 - recorded - found} new message(s)" in rerun.out
    assert ("1 found delivered by an interrupted run" in rerun.out) == bool(found)
    assert "; 7 deleted on the server" in rerun.out


async def test_server_dropping_the_connection_mid_retr(
    env: MailEnv, server: tuple[int, ServerContext]
) -> None:
    """The connection breaks during a RETR: fetch says so in one line (75), keeps what it
    had completely (recorded), and the next run fetches the rest, each message once."""
    setup = Setup(env, *server, "maildir")
    messages = [*SMALL[:2], big(2), SMALL[2]]
    for message in messages:
        env.put("alice", message)
    async with relay(setup.port, trigger_bytes=1 << 20, drop=True) as (r, port):
        result = await run_fetch(setup.argv(port=port))
        one_line(result, 75, "closed the connection")
        r.disarm()
        await sessions_ended(setup.ctx)
        assert len(env.messages("alice")) == 4
        exactly_once(setup, SMALL[:2])
        again = await run_fetch(setup.argv(port=port))
    assert again.status == 0 and "2 new message(s)" in again.out and "4 deleted" in again.out
    exactly_once(setup, messages)


CRASH = r"""
import os, signal, sys
from popbox.cli.main import main

mode, limit, mbox = sys.argv[1], int(sys.argv[2]), os.path.realpath(sys.argv[3])
real_write, real_fsync = os.write, os.fsync
written = 0

def to_mbox(fd):
    return os.path.realpath(f"/proc/self/fd/{fd}") == mbox

def write(fd, data):
    global written
    if mode == "write" and to_mbox(fd) and written + len(data) > limit:
        real_write(fd, bytes(data[: limit - written]))
        os.kill(os.getpid(), signal.SIGKILL)
    written += len(data)
    return real_write(fd, data)

def fsync(fd):
    real_fsync(fd)
    if mode == "fsync" and to_mbox(fd) and written:
        os.kill(os.getpid(), signal.SIGKILL)

os.write, os.fsync = write, fsync
sys.exit(main(sys.argv[4:]))
"""


async def crash_during_append(setup: Setup, mode: str, limit: int) -> None:
    argv = setup.argv()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASH, mode, str(limit), str(setup.dest), *argv[3:],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "POPBOX_FETCH_PASSWORD": "secret"})
    result = await finish(proc)
    assert result.status == -9, result
    await sessions_ended(setup.ctx)


@pytest.mark.parametrize(("mode", "outcome"), [("write", "torn"), ("fsync", "complete")])
async def test_mbox_crash_during_append(
    env: MailEnv, server: tuple[int, ServerContext], mode: str, outcome: str
) -> None:
    """A crash in the middle of an mbox append (torn: truncated back to where it started,
    then fetched again) or after it but before the state recorded it (complete: recorded,
    not fetched again). What was in the mbox before is never touched."""
    setup = Setup(env, *server, "mbox")
    before = b"From old Mon Jan  1 00:00:00 2024\nSubject: old\n\nkept\n\n"
    setup.dest.write_bytes(before)
    for message in SMALL:
        env.put("alice", message)
    await crash_during_append(setup, mode, 150)
    assert setup.dest.read_bytes().startswith(before)
    assert len(setup.dest.read_bytes()) > len(before)
    assert len(env.messages("alice")) == 4
    rerun = await setup.run("-v")
    assert rerun.status == 0, rerun.err
    assert f"interrupted delivery to {setup.dest}: {outcome}" in rerun.err
    assert setup.dest.read_bytes().startswith(before)
    assert mbox_counts(setup.dest) == Counter(
        [b"Subject: old\n\nkept\n", *(as_delivered(m) for m in SMALL)])
    assert env.messages("alice") == []


async def test_mbox_changed_after_a_crash_is_left_alone(
    env: MailEnv, server: tuple[int, ServerContext]
) -> None:
    """After a torn append, another program appended to the mbox: fetch cannot tell its
    bytes from ours, so it touches nothing and says so (74)."""
    setup = Setup(env, *server, "mbox")
    for message in SMALL:
        env.put("alice", message)
    await crash_during_append(setup, "write", 100)
    with setup.dest.open("ab") as f:
        f.write(b"\n\nFrom mta Mon Jan  1 00:00:00 2024\nSubject: local\n\nlocal mail\n\n")
    before = setup.dest.read_bytes()
    one_line(await setup.run(), 74, "changed after an interrupted delivery")
    assert setup.dest.read_bytes() == before
    assert len(env.messages("alice")) == 4


# --- a server without UIDL ---------------------------------------------------------------


async def test_server_without_uidl(env: MailEnv) -> None:
    """RFC 1939 §7: UIDL is optional. Without it, --keep is refused (69: old mail cannot be
    told from new); a deleting run fetches everything and deletes it."""
    messages = [b"Subject: a\n\none\n", b"Subject: b\n\n.two\n"]
    fake = NoUidlServer(messages)
    server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        setup = Setup(env, port, None, "maildir")
        one_line(await setup.run("--keep"), 69, "no UIDL")
        assert len(fake.messages) == 2
        result = await setup.run()
        assert result.status == 0 and "2 new message(s)" in result.out, result
        assert fake.messages == {}
        exactly_once(setup, messages)
    finally:
        server.close()
        await server.wait_closed()
