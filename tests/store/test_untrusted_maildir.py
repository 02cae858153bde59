"""Maildirs that hold what is not a message: only regular files are served.

cr.yp.to/proto/maildir.html: the messages are the files in cur/ and new/. A symlink there
(to another user's mail, to /etc/passwd), a FIFO (open(2) waits for a writer, fifo(7)),
a socket, a directory named like a message, an empty file (no header at all, RFC 5322
§3.6): left out and logged, and the real messages
served (RFC 1939 §5: STAT/LIST count only them). A file popbox may not read (mode 000)
costs only itself. A maildir whose cur/ is a symlink is refused unless
`store.follow_symlinks` is set."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import Client, MailEnv, ServerProcess, running_server
from popbox.store.base import Failure
from popbox.store.maildir import MaildirStore

SECRET = b"Subject: bob's private mail\n\nbob only\n"
MINE = [b"Subject: one\n\nfirst\n", b"Subject: two\n\nsecond\n"]


def plant(env: MailEnv) -> list[str]:
    """Alice's real messages, and next to them everything that is not one; the names of
    the planted entries."""
    bob_file = env.put("bob", SECRET)
    for message in MINE:
        env.put("alice", message)
    new = env.maildir("alice") / "new"
    planted = {
        "1600000001.M1P1.evil": lambda p: p.symlink_to(bob_file),
        "1600000002.M2P2.evil": lambda p: p.symlink_to("/etc/passwd"),
        "1600000003.M3P3.evil": lambda p: os.mkfifo(p),
        "1600000004.M4P4.evil": lambda p: p.mkdir(),
        "1600000005.M5P5.evil": lambda p: p.symlink_to(env.maildir("bob") / "new"),
        "1600000007.M7P7.evil": lambda p: p.symlink_to("/etc/shadow"),
        "1600000008.M8P8.empty": lambda p: p.write_bytes(b""),
        "1600000009.M9P9.empty,S=0,W=0": lambda p: p.write_bytes(b""),
    }
    for name, make in planted.items():
        make(new / name)
    return [*planted, "1600000006.M6P6.sock"]


def bind_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    return sock


async def retrieve_all(client: Client) -> list[bytes]:
    status, lines = await client.multi("LIST")
    assert status.startswith(b"+OK"), status
    bodies = []
    for line in lines:
        number = line.split()[0].decode()
        reply = await client.cmd(f"RETR {number}")
        assert reply.startswith(b"+OK"), reply
        bodies.append(await client.body())
    return bodies


def crlf(message: bytes) -> bytes:
    return message.replace(b"\n", b"\r\n")


async def test_only_regular_files_are_served(
    env: MailEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """Symlinks (to another user's message, to /etc/passwd and /etc/shadow, to a
    directory), a FIFO, a directory, a socket and empty files (measured, or named with
    W=0) in new/ are not messages: the login
    answers at once, STAT counts the two real messages, RETR gives exactly them, each
    planted entry is logged once, and a second login logs nothing again."""
    env.add_user("bob")
    planted = plant(env)
    with bind_socket(env.maildir("alice") / "new" / planted[-1]):
        caplog.set_level(logging.WARNING, logger="popbox")
        async with running_server(env.config()) as (port, _):
            client = await Client.connect(port)
            reply = await asyncio.wait_for(client.login(), 10)  # a FIFO must not hold it
            assert reply.startswith(b"+OK"), reply
            assert (await client.cmd("STAT")).startswith(b"+OK 2 ")
            assert await retrieve_all(client) == [crlf(m) for m in MINE]
            assert (await client.cmd("QUIT")).startswith(b"+OK")
            await client.close()
            logged = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
            assert sorted(name for name in planted if any(name in m for m in logged)) == sorted(
                planted
            )
            assert len(logged) == len(planted)
            again = await Client.connect(port)
            assert (await again.login()).startswith(b"+OK")
            assert (await again.cmd("STAT")).startswith(b"+OK 2 ")
            assert (await again.cmd("QUIT")).startswith(b"+OK")
            await again.close()
            still = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
            assert len(still) == len(planted)
    assert env.maildir("bob").joinpath("new").exists()
    assert [p.read_bytes() for p in (env.maildir("bob") / "new").iterdir()] == [SECRET]


async def test_a_file_swapped_for_a_symlink_after_the_listing_is_not_read(
    env: MailEnv,
) -> None:
    """The listing saw a regular file; by RETR it is a link to /etc/passwd. The open does
    not follow it: that RETR fails alone and the session goes on."""
    env.put("alice", MINE[0])
    victim = env.put("alice", MINE[1])
    async with running_server(env.config()) as (port, _):
        client = await Client.connect(port)
        assert (await client.login()).startswith(b"+OK")
        victim.unlink()
        victim.symlink_to("/etc/passwd")
        reply = await client.cmd("RETR 2")
        assert reply.startswith(b"-ERR"), reply
        assert b"root:" not in reply
        assert (await client.cmd("RETR 1")).startswith(b"+OK")
        assert await client.body() == crlf(MINE[0])
        assert (await client.cmd("QUIT")).startswith(b"+OK")
        await client.close()


@pytest.mark.parametrize("which", ["cur", "root"])
async def test_a_symlinked_maildir_is_refused_unless_allowed(
    env: MailEnv, tmp_path: Path, which: str
) -> None:
    """cur/ (or the maildir itself) is a symlink: -ERR [SYS/PERM] at login, nothing read;
    with store.follow_symlinks = true it is served."""
    env.put("alice", MINE[0], folder="cur")
    maildir = env.maildir("alice")
    elsewhere = tmp_path / "elsewhere"
    if which == "cur":
        shutil.move(maildir / "cur", elsewhere)
        (maildir / "cur").symlink_to(elsewhere)
    else:
        shutil.move(maildir, elsewhere)
        maildir.symlink_to(elsewhere)
    async with running_server(env.config()) as (port, _):
        client = await Client.connect(port)
        reply = await client.login()
        assert reply.startswith(b"-ERR [SYS/PERM]"), reply
        await client.close()
    async with running_server(env.config(store={"follow_symlinks": True})) as (port, _):
        client = await Client.connect(port)
        assert (await client.login()).startswith(b"+OK")
        assert await retrieve_all(client) == [crlf(MINE[0])]
        assert (await client.cmd("QUIT")).startswith(b"+OK")
        await client.close()


async def test_delivery_into_a_symlinked_new_is_refused(env: MailEnv, tmp_path: Path) -> None:
    """LMTP/deliver write nothing through a symlinked new/ (Failure.PERMANENT)."""
    maildir = env.maildir("alice")
    shutil.move(maildir / "new", tmp_path / "elsewhere")
    (maildir / "new").symlink_to(tmp_path / "elsewhere")
    assert await MaildirStore().deliver(str(maildir), b"Subject: x\n\ny\n") is Failure.PERMANENT
    assert os.listdir(tmp_path / "elsewhere") == []
    assert await MaildirStore(follow_symlinks=True).deliver(str(maildir), b"S: x\n\ny\n") is None
    assert len(os.listdir(tmp_path / "elsewhere")) == 1


# --- a message popbox may not read ------------------------------------------------------


@pytest.fixture
def mail_user() -> Iterator[pwd.struct_passwd]:
    """A system user made for this test (useradd) and removed after it: root reads any
    file whatever its mode, so an unreadable message needs a server that is not root."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd")
    name = f"pbt{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=True, capture_output=True)


def test_an_unreadable_message_costs_only_itself(mail_user: pwd.struct_passwd) -> None:
    """A mode-000 message, the server running as the mail's owner (server.user): the login
    succeeds, the other messages are listed and retrieved, the bad file is logged, and
    QUIT works."""
    root = Path(tempfile.mkdtemp(prefix="popbox-perm-", dir="/tmp"))
    try:
        env = MailEnv(root)
        env.add_user("alice")
        # ,W= absent: the size must be measured, which is where an unreadable file used
        # to fail the whole listing.
        for message in MINE:
            env.put("alice", message)
        bad_content = b"Subject: locked\n\nunreadable\n"
        bad = env.put("alice", bad_content)
        for path in [root, *root.rglob("*")]:
            os.chown(path, mail_user.pw_uid, mail_user.pw_gid, follow_symlinks=False)
        bad.chmod(0)
        config = env.config_file(server={"user": mail_user.pw_name, "allow_root": False})
        server = ServerProcess(config)
        try:
            asyncio.run(_session_without_the_bad_file(server.port))
            assert server.wait_log(bad.name)
        finally:
            log = server.stop()
        assert "cannot be read" in log, log
        assert sorted(env.messages("alice")) == sorted([*MINE, bad_content])  # nothing lost
    finally:
        shutil.rmtree(root)


async def _session_without_the_bad_file(port: int) -> None:
    client = await Client.connect(port)
    reply = await client.login()
    assert reply.startswith(b"+OK"), reply
    assert (await client.cmd("STAT")).startswith(b"+OK 2 ")
    assert await retrieve_all(client) == [crlf(m) for m in MINE]
    assert (await client.cmd("QUIT")).startswith(b"+OK")
    await client.close()
