"""Full disks lose nothing: a small tmpfs, mounted by the test and filled to the last page,
under the mail store (QUIT, caches, LMTP, `popbox deliver`) and under `popbox fetch`'s
destinations.

RFC 1939 §6: the UPDATE state removes messages only when it can; an -ERR QUIT (here
`[SYS/TEMP]`, RFC 3206 §4) leaves the maildrop as it was. RFC 2033 §4.2 with RFC 3463
§3.4: a recipient whose mailbox cannot take the message now gets 452 4.3.1 (mail system
full), so the MTA keeps it and retries. sysexits.h: EX_IOERR (74) when `popbox fetch`
cannot write its destination, EX_TEMPFAIL (75) for `popbox deliver`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fetch_helpers import fetch_argv, maildir_files, read_mboxrd, run_fetch
from helpers import Client, MailEnv, running_server
from pg import LmtpClient, LmtpProcess
from popbox.proto.wire import wire_size
from tmpfs import Disk, mounted

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None,
                                reason="mounting a tmpfs needs root")

_PAD = b"padding to more than a page\n" * 200  # so that no write fits a file's last page
MESSAGES = [b"Subject: one\n\nfirst body\n" + _PAD, b"Subject: two\n\nsecond body\n" + _PAD,
            b"Subject: three\n\nthird body\n" + _PAD]


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    with mounted(tmp_path / "disk") as made:
        yield made


async def _lmtp(port: int, message: bytes, *recipients: str) -> list[tuple[int, str]]:
    """The per-recipient replies after DATA (RFC 2033 §4.2)."""
    client = await LmtpClient.connect(port)
    assert (await client.cmd("MAIL FROM:<s@x>"))[0] == 250
    for rcpt in recipients:
        assert (await client.cmd(f"RCPT TO:<{rcpt}>"))[0] == 250
    assert (await client.cmd("DATA"))[0] == 354
    client.send_data(message)
    replies = [await client.reply() for _ in recipients]
    await client.cmd("QUIT")
    return replies


def _users(env: MailEnv, **locations: str) -> None:
    env.users.write_text("".join(
        f"{name}:{{PLAIN}}secret::::::userdb_mail={where}\n" for name, where in locations.items()
    ))


def _maildir(root: Path, *, sizes: bool, messages: list[bytes] = MESSAGES) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    for i, text in enumerate(messages):
        name = f"{1700000000 + i}.M{i}P1.host"
        if sizes:
            name += f",S={len(text)},W={wire_size(text)}"
        (root / "new" / name).write_bytes(text)
    return root


def _mbox(path: Path) -> bytes:
    data = b"".join(b"From sender@example.org Thu Jan  1 00:00:00 2026\n" + text + b"\n"
                    for text in MESSAGES)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


async def _session(port: int, user: str) -> Client:
    client = await Client.connect(port)
    reply = await client.login(user)
    assert reply.startswith(b"+OK Logged in. 3 messages"), reply
    return client


async def test_quit_on_a_full_disk_applies_nothing_to_an_mbox(disk: Disk, tmp_path: Path
                                                              ) -> None:
    """Deleting the first message of three needs room for the rewrite's journal (locked
    with fcntl only: a dotlock needs room too): with the disk full, QUIT answers
    -ERR [SYS/TEMP], the spool is byte for byte as it was, and the next session has all
    three; with room again, the same QUIT deletes."""
    env = MailEnv(tmp_path)
    spool = disk.path / "spool" / "alice"
    before = _mbox(spool)
    _users(env, alice=f"mbox:{spool}")
    # A dotlock is a file with content: on a full disk no session could start at all.
    async with running_server(env.config(store={"mbox_lock": ["fcntl"]})) as (port, _ctx):
        client = await _session(port, "alice")  # the index is written with room to spare
        await client.close()
        disk.fill()
        client = await _session(port, "alice")
        assert (await client.cmd("DELE 1")).startswith(b"+OK")
        reply = await client.cmd("QUIT")
        assert reply.startswith(b"-ERR [SYS/TEMP]"), reply
        await client.close()
        assert spool.read_bytes() == before
        assert not [p for p in spool.parent.rglob("*rewrite*")]
        client = await _session(port, "alice")
        assert b"first body" in (await client.multi("RETR 1"))[1][2]
        assert (await client.cmd("DELE 1")).startswith(b"+OK")
        disk.free()
        assert (await client.cmd("QUIT")).startswith(b"+OK")
        await client.close()
    assert spool.read_bytes() == before[before.index(b"From", 1):]


async def test_a_full_disk_costs_a_maildir_only_its_caches(
    disk: Disk, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Messages without sizes in their names are measured at login; with the disk full
    the size and listing caches cannot be written, so every login measures again and
    gets the right sizes; QUIT's unlink and rename need no room and are applied."""
    env = MailEnv(tmp_path)
    root = _maildir(disk.path / "alice", sizes=False)
    _users(env, alice=f"maildir:{root}")
    disk.fill()
    caplog.set_level(logging.WARNING)
    wire = [wire_size(t) for t in MESSAGES]
    async with running_server(env.config()) as (port, _ctx):
        for _ in range(2):
            client = await _session(port, "alice")
            status, lines = await client.multi("LIST")
            assert status.startswith(b"+OK"), status
            assert [int(line.split()[1]) for line in lines] == wire
            await client.cmd("QUIT")
            await client.close()
        assert "not written" in caplog.text
        client = await _session(port, "alice")
        assert b"second body" in b"".join((await client.multi("RETR 2"))[1])
        assert (await client.cmd("DELE 1")).startswith(b"+OK")
        assert (await client.cmd("QUIT")).startswith(b"+OK")
        await client.close()
    left = sorted(p.read_bytes() for sub in ("new", "cur") for p in (root / sub).iterdir())
    assert left == sorted(MESSAGES[1:])


def test_lmtp_and_deliver_on_a_full_disk_answer_452_and_75(disk: Disk, tmp_path: Path
                                                           ) -> None:
    """LMTP to a Maildir and to an mbox on a full disk: 452 4.3.1 for each recipient,
    no file left in tmp/ or new/, the spool unchanged; `popbox deliver` exits 75. With
    room again the same delivery is stored."""
    env = MailEnv(tmp_path)
    root = _maildir(disk.path / "alice", sizes=True)
    spool = disk.path / "spool" / "bob"
    before = _mbox(spool)
    _users(env, alice=f"maildir:{root}", bob=f"mbox:{spool}")
    config = env.config_file(lmtp={"listen": ["127.0.0.1:0"]})
    disk.fill()
    message = b"Subject: new\r\n\r\n" + b"y" * 20_000 + b"\r\n"
    process = LmtpProcess(config)
    try:
        replies = asyncio.run(_lmtp(process.port, message, "alice", "bob"))
    finally:
        process.stop()
    assert replies == [(452, "4.3.1 <alice> Insufficient system storage"),
                       (452, "4.3.1 <bob> Insufficient system storage")]
    assert len(list((root / "new").iterdir())) == 3 and not list((root / "tmp").iterdir())
    assert spool.read_bytes() == before
    deliver = [sys.executable, "-m", "popbox", "deliver", "--config", str(config)]
    for user in ("alice", "bob"):
        result = subprocess.run([*deliver, user], input=message, capture_output=True,
                                timeout=60, check=False)
        assert result.returncode == 75, result.stderr
    assert spool.read_bytes() == before
    disk.free()
    for user in ("alice", "bob"):
        subprocess.run([*deliver, user], input=message, timeout=60, check=True)
    assert len(list((root / "new").iterdir())) == 4
    assert spool.read_bytes().startswith(before) and len(spool.read_bytes()) > len(before)


@pytest.mark.parametrize("kind", ["maildir", "maildir-small", "mbox"])
async def test_fetch_to_a_full_disk_stops_with_74_and_records_nothing(
    kind: str, disk: Disk, tmp_path: Path,
) -> None:
    """`popbox fetch` into a Maildir or an mbox on a full disk: exit 74, nothing deleted on
    the server, nothing recorded (the state file is elsewhere), no file left in tmp/;
    with room again the next run delivers each message exactly once and then deletes
    them. Small messages fail only at the flush of their last buffered octets."""
    env = MailEnv(tmp_path)
    messages = [m[:40] + b"\n" for m in MESSAGES] if kind == "maildir-small" else MESSAGES
    kind = kind.partition("-")[0]
    source = _maildir(tmp_path / "server" / "alice", sizes=True, messages=messages)
    _users(env, alice=f"maildir:{source}")
    dest = disk.path / ("dest" if kind == "maildir" else "dest.mbox")
    if kind == "maildir":
        _maildir(dest, sizes=True)  # three messages of its own, which must survive
        for path in (dest / "new").iterdir():
            path.rename(dest / "cur" / (path.name + ":2,S"))
        mine = maildir_files(dest)
    else:
        mine_bytes = _mbox(dest)
    state = tmp_path / "state"
    disk.fill()
    async with running_server(env.config()) as (port, _ctx):
        argv = fetch_argv(port, "--tls", "none", f"--{kind}", str(dest), state=state)
        result = await run_fetch(argv)
        assert result.status == 74, result
        assert len(list((source / "new").iterdir())) == 3
        if kind == "maildir":
            assert maildir_files(dest) == mine
            assert not list((dest / "tmp").iterdir())
        else:
            assert dest.read_bytes() == mine_bytes
        disk.free()
        result = await run_fetch(argv)
        assert result.status == 0, result
        assert not list((source / "new").iterdir()) and not list((source / "cur").iterdir())
    if kind == "maildir":
        fetched = [v for k, v in maildir_files(dest).items() if k not in mine]
    else:
        fetched = [body for _, body in read_mboxrd(dest.read_bytes())][3:]
    assert len(fetched) == 3, fetched
    for text in messages:
        body = text.split(b"\n\n")[1].partition(b"\n")[0]
        assert sum(body in m for m in fetched) == 1, (body, fetched)
