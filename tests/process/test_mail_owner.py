"""Mail access as the mail's owner (popbox.mailproc): two real system accounts made
with useradd, each with a ~/Maildir of their own (mode 0700); the front runs as nobody and
each user's mail is read by a process with that user's uid, gid and groups.

RFC 1939 §4 (the AUTHORIZATION state ends with the maildrop opened for that user) and §8
(a server should refuse access it cannot grant safely); RFC 3206 §4 for [SYS/PERM].
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from accounts import (
    CAN_MAKE_ACCOUNTS,
    Account,
    mail_processes,
    proc_status,
    system_accounts,
    wait_exit,
)
from helpers import Client, MailEnv, running_server, server_process
from pg import add_user
from popbox.backends import file_store
from popbox.config import from_dict
from popbox.mailowner import Owner, Refused, check_owner
from popbox.mailproc import MailHost

pytest_plugins = ["pg"]

pytestmark = pytest.mark.skipif(not CAN_MAKE_ACCOUNTS,
                                reason="needs root and useradd to make system accounts")


@dataclass
class Site:
    base: Path
    alice: Account
    bob: Account
    users: Path

    def put(self, who: Account, base: str, text: bytes) -> Path:
        """A message named with its sizes (so listing it needs no stat(2))."""
        path = who.maildir / "new" / _named(base, text)
        path.write_bytes(text)
        os.chown(path, who.uid, who.gid)
        path.chmod(0o600)
        return path

    def config(self, workers: int = 1, **auth: object) -> Path:
        path = self.base / "popbox.toml"
        settings = {"passwd_file": str(self.users), "mail_location": "~/Maildir",
                    "mail_process_idle": 0.2, **auth}
        path.write_text(
            f'[server]\nlisten = ["127.0.0.1:0"]\nuser = "nobody"\nworkers = {workers}\n'
            "[limits]\nshutdown_grace = 1\npenalty_exempt = [\"127.0.0.0/8\"]\n"
            "[auth]\n" + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in
                                 settings.items()))
        return path


def _named(base: str, text: bytes) -> str:
    wire = len(text) + text.count(b"\n")
    return f"{base},S={len(text)},W={wire}"


@pytest.fixture
def site() -> Iterator[Site]:
    base = Path(tempfile.mkdtemp(prefix="popbox-owners-"))
    try:
        with system_accounts(base, 2) as (alice, bob):
            users = base / "users"
            users.write_text(
                f"alice:{{PLAIN}}secret:{alice.uid}:{alice.gid}::{alice.home}::\n"
                f"bob:{{PLAIN}}secret:{bob.uid}:{bob.gid}::{bob.home}::\n"
                f"rootish:{{PLAIN}}secret:0:0::{alice.home}::\n"
                f"daemonish:{{PLAIN}}secret:1:1::{alice.home}::\n"
                f"lowgid:{{PLAIN}}secret:{alice.uid}:5::{alice.home}::\n"
            )
            nobody = pwd.getpwnam("nobody")
            os.chown(users, nobody.pw_uid, nobody.pw_gid)
            users.chmod(0o600)
            yield Site(base, alice, bob, users)
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def _all_messages(client: Client) -> list[bytes]:
    status, lines = await client.multi("LIST")
    assert status.startswith(b"+OK"), status
    bodies = []
    for line in lines:
        reply = await client.cmd(f"RETR {line.split()[0].decode()}")
        if reply.startswith(b"+OK"):
            bodies.append(await client.body())
        else:
            assert reply.startswith(b"-ERR"), reply
    return bodies


@pytest.mark.parametrize("workers", [1, 2])
async def test_each_user_reads_only_their_own_mail_as_their_own_uid(site: Site, workers: int
                                                                    ) -> None:
    """Alice gets Alice's message and Bob Bob's, each read by a process whose real,
    effective, saved and filesystem uids (and gids) are that user's, with that account's
    groups; the front itself is nobody (with one process and with two workers). An idle
    mail process exits."""
    site.put(site.alice, "1700000001.M1P1.host", b"Subject: a\n\nfor alice\n")
    site.put(site.bob, "1700000002.M1P1.host", b"Subject: b\n\nfor bob\n")
    with server_process(site.config(workers=workers)) as server:
        if workers == 1:
            assert int(proc_status(server.proc.pid)["Uid"][1]) == pwd.getpwnam("nobody").pw_uid
        for who, text in ((site.alice, b"for alice"), (site.bob, b"for bob")):
            client = await Client.connect(server.port)
            login = "alice" if who is site.alice else "bob"
            assert (await client.login(login)).startswith(b"+OK")
            mail = mail_processes(server.proc.pid)
            mine = [pid for pid, uid in mail.items() if uid == who.uid]
            assert len(mine) == 1, mail
            status = proc_status(mine[0])
            assert status["Uid"] == [str(who.uid)] * 4
            assert status["Gid"] == [str(who.gid)] * 4
            expected_groups = sorted(os.getgrouplist(who.name, who.gid))
            assert sorted(map(int, status["Groups"])) == expected_groups
            bodies = await _all_messages(client)
            assert len(bodies) == 1 and text in bodies[0], bodies
            assert (await client.cmd("QUIT")).startswith(b"+OK")
            await client.close()
            assert wait_exit(mine[0], 10), "an idle mail process stays"
        assert set(mail_processes(server.proc.pid).values()) <= {site.alice.uid, site.bob.uid}
    log = server.final_log
    assert "Traceback" not in log, log


async def test_planted_links_to_another_users_mail_are_refused_by_the_kernel(
    site: Site,
) -> None:
    """A hard link in Alice's new/ to Bob's message (made by root: fs.protected_hardlinks
    stops Alice making it herself) is a regular file in Alice's own directory, so no file
    type check can tell it from a message: Alice's session gets her own message and never
    Bob's bytes, because the kernel refuses her process; the session and QUIT go on. A
    symbolic link to the same file, opened as Alice with a plain open(2) that follows it
    (the store's own checks out of the way), is refused by the kernel too."""
    site.put(site.alice, "1700000001.M1P1.host", b"Subject: a\n\nfor alice\n")
    secret = site.put(site.bob, "1700000002.M1P1.host", b"Subject: b\n\nBOB SECRET\n")
    size = secret.name.partition(",")[2]
    hardlink = site.alice.maildir / "new" / f"1700000004.M1P1.host,{size}"
    os.link(secret, hardlink)
    with server_process(site.config()) as server:
        client = await Client.connect(server.port)
        reply = await client.login("alice")
        assert reply.startswith(b"+OK Logged in. 2 messages"), (reply, server.read_log())
        bodies = await _all_messages(client)
        assert len(bodies) == 1 and b"for alice" in bodies[0], bodies
        assert (await client.cmd("QUIT")).startswith(b"+OK")
        await client.close()
    assert "message not sent user=alice msg=2" in server.final_log, server.final_log
    symlink = site.alice.maildir / "new" / f"1700000003.M1P1.host,{size}"
    symlink.symlink_to(secret)
    assert secret.read_bytes() == b"Subject: b\n\nBOB SECRET\n"
    script = (
        "import os, sys\n"
        "from popbox.mailowner import Owner, become\n"
        f"become(Owner({site.alice.uid}, {site.alice.gid}))\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        os.close(os.open(path, os.O_RDONLY))\n"
        "    except PermissionError:\n"
        "        print('refused', path)\n"
        "    else:\n"
        "        print('OPENED', path)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(symlink), str(hardlink)],
                            capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.split("\n")[:2] == [f"refused {symlink}", f"refused {hardlink}"]


async def test_uid_zero_and_system_accounts_are_refused(site: Site) -> None:
    """Dovecot's first_valid_uid/first_valid_gid: uid 0, uid 1 and gid 5 (below the
    configured 10) never get their mail read, with [SYS/PERM] and a log line; no mail
    process is started for them."""
    with server_process(site.config(first_valid_gid=10)) as server:
        for user in ("rootish", "daemonish", "lowgid"):
            client = await Client.connect(server.port)
            reply = await client.login(user)
            assert reply.startswith(b"-ERR [SYS/PERM]"), (user, reply)
            await client.close()
        assert mail_processes(server.proc.pid) == {}
    assert server.final_log.count("mail access refused") == 3, server.final_log


async def test_last_login_is_written_by_the_users_mail_process(site: Site) -> None:
    """`server.last_login`: Alice's record is written in her Maildir by her mail process
    (so it is hers, mode 0600), and `popbox last`, started as root, reads it as her."""
    config = site.config()
    config.write_text(config.read_text().replace("workers = 1\n",
                                                 "workers = 1\nlast_login = true\n"))
    with server_process(config) as server:
        client = await Client.connect(server.port)
        assert (await client.login("alice")).startswith(b"+OK")
        assert (await client.cmd("QUIT")).startswith(b"+OK")
        await client.close()
        record = site.alice.maildir / "popbox-last-login"
        deadline = time.monotonic() + 10
        while not record.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    info = record.lstat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (
        site.alice.uid, site.alice.gid, 0o600)
    assert record.read_text().endswith(" 127.0.0.1\n")
    result = subprocess.run([sys.executable, "-m", "popbox", "last", "alice", "--config",
                             str(config)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("alice: 20") and result.stdout.endswith(
        " UTC from 127.0.0.1\n")


def test_the_host_itself_refuses_root_and_system_accounts(site: Site) -> None:
    """The privileged side checks too, whatever the front asks: uid 0, gid 0 and uids
    below first_valid_uid get no mail process; a valid owner gets one."""
    assert check_owner(Owner(0, 1000), 500, 1) is Refused.SYSTEM_ACCOUNT
    assert check_owner(Owner(1000, 0), 500, 1) is Refused.SYSTEM_ACCOUNT
    assert check_owner(Owner(499, 1000), 500, 1) is Refused.SYSTEM_ACCOUNT
    assert check_owner(Owner(500, 1), 500, 1) is None
    config = from_dict({"auth": {"first_valid_uid": 500}})
    host = MailHost.start(config, lambda: file_store(config))
    try:
        assert host.spawn(Owner(0, 0)) is None
        assert host.spawn(Owner(1, 1)) is None
        sock = host.spawn(Owner(site.alice.uid, site.alice.gid))
        assert sock is not None
        sock.close()  # the mail process sees the end and exits
    finally:
        host.close()
        os.waitpid(host.pid, 0)


async def test_without_root_another_uid_is_refused_not_read(tmp_path: Path) -> None:
    """A server with no mail host (not started as root) never reads a user's mail with
    its own identity when the userdb names another uid: the login answers [SYS/PERM]."""
    env = MailEnv(tmp_path)
    env.add_user("alice")
    env.users.write_text("alice:{PLAIN}secret:4242:4242::::\n")
    env.put("alice", b"Subject: x\n\nbody\n")
    async with running_server(env.config()) as (port, _ctx):
        client = await Client.connect(port)
        assert (await client.login()).startswith(b"-ERR [SYS/PERM]")
        await client.close()


async def test_a_dead_mail_process_costs_its_sessions_only_a_temporary_error(site: Site
                                                                              ) -> None:
    """Two sessions of one uid share its mail process, and the maildrop lock still works
    between them ([IN-USE]). Killed in the middle of a session, the mail process takes
    nothing with it: that session's RETR and QUIT answer [SYS/TEMP] and delete nothing,
    and the next login starts a new mail process that serves the mail."""
    site.put(site.alice, "1700000001.M1P1.host", b"Subject: a\n\nfor alice\n")
    with server_process(site.config()) as server:
        client = await Client.connect(server.port)
        assert (await client.login("alice")).startswith(b"+OK")
        second = await Client.connect(server.port)
        assert (await second.login("alice")).startswith(b"-ERR [IN-USE]")
        await second.close()
        (pid,) = mail_processes(server.proc.pid)
        assert (await client.cmd("DELE 1")).startswith(b"+OK")
        os.kill(pid, signal.SIGKILL)
        assert wait_exit(pid, 10)
        assert (await client.cmd("RSET")).startswith(b"+OK")  # the session's own state
        assert (await client.cmd("RETR 1")).startswith(b"-ERR [SYS/TEMP]")
        assert (await client.cmd("DELE 1")).startswith(b"+OK")
        assert (await client.cmd("QUIT")).startswith(b"-ERR [SYS/TEMP]")
        await client.close()
        client = await Client.connect(server.port)
        assert (await client.login("alice")).startswith(b"+OK Logged in. 1 messages")
        status, lines = await client.multi("RETR 1")
        assert status.startswith(b"+OK") and b"for alice" in lines
        assert (await client.cmd("QUIT")).startswith(b"+OK")
        await client.close()
    assert "Traceback" not in server.final_log, server.final_log


async def test_the_postgresql_userdb_uid_and_gid_columns_name_the_owner(
    site: Site, pg_dsn: str,
) -> None:
    """A user of the PostgreSQL userdb whose `uid`, `gid` and `home` columns are Alice's
    account's has that mail read by a process with Alice's uid."""
    await add_user(pg_dsn, "carol", uid=site.alice.uid, gid=site.alice.gid,
                   home=str(site.alice.home))
    site.put(site.alice, "1700000001.M1P1.host", b"Subject: a\n\nfor carol\n")
    config = site.config()
    config.write_text(config.read_text().replace(
        "[auth]\n", '[auth]\nbackend = "postgres"\n') + f'[postgres]\ndsn = "{pg_dsn}"\n')
    with server_process(config) as server:
        client = await Client.connect(server.port)
        assert (await client.login("carol")).startswith(b"+OK Logged in. 1 messages")
        assert list(mail_processes(server.proc.pid).values()) == [site.alice.uid]
        status, lines = await client.multi("RETR 1")
        assert status.startswith(b"+OK") and b"for carol" in lines
        assert (await client.cmd("QUIT")).startswith(b"+OK")
        await client.close()
