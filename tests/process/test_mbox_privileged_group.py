"""mbox spools in a /var/mail-style folder (root:mail, mode 2775; each spool USER:mail
0660, as Debian has them) for two real system accounts, each read and written by a mail
process of their own uid (popbox.mailproc). The dotlock USER.lock is created in the
folder, which only group mail may write: with `store.mail_privileged_group = "mail"` the
mail process keeps that gid as its saved set-group-ID and uses it only around the
dotlock (popbox.store.privgroup), as Dovecot's mail_privileged_group.

RFC 1939 §4 (the maildrop is opened, and locked, at the end of AUTHORIZATION), §6 (QUIT
removes the deleted messages); RFC 2449 §8.1.2 [IN-USE] when another program holds the
spool's lock; RFC 3206 §4 [SYS/PERM]; sysexits.h EX_TEMPFAIL (75), EX_CANTCREAT (73) for
`popbox deliver`.
"""

from __future__ import annotations

import ast
import grp
import os
import pwd
import shutil
import smtplib
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from accounts import CAN_MAKE_ACCOUNTS, Account, mail_processes, proc_status, system_accounts
from helpers import Client, server_process
from pg import LmtpProcess

pytestmark = pytest.mark.skipif(not CAN_MAKE_ACCOUNTS,
                                reason="needs root and useradd to make system accounts")

MAIL_GID = grp.getgrnam("mail").gr_gid if CAN_MAKE_ACCOUNTS else 0


@dataclass
class Site:
    base: Path
    spools: Path  # like /var/mail
    users: dict[str, Account]  # login -> account

    def spool(self, login: str) -> Path:
        return self.spools / login

    def config(self, privileged: bool = True) -> Path:
        path = self.base / "popbox.toml"
        group = 'mail_privileged_group = "mail"\n' if privileged else ""
        path.write_text(
            '[server]\nlisten = ["127.0.0.1:0"]\nuser = "nobody"\n'
            '[limits]\nshutdown_grace = 1\npenalty_exempt = ["127.0.0.0/8"]\n'
            f'[auth]\npasswd_file = "{self.base / "users"}"\n'
            f'mail_location = "mbox:{self.spools}/{{local}}"\nmail_process_idle = 60\n'
            '[lmtp]\nlisten = ["127.0.0.1:0"]\n'
            '[store]\nmbox_index_dir = "~/.popbox-mbox"\nmbox_lock_timeout = 0.3\n'
            + group)
        return path

    def deliver(self, config: Path, login: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "popbox", "deliver", "--config", str(config),
             "-f", "sender@example.org", login],
            input=f"Subject: delivered\n\nfor {login} again\n".encode(),
            capture_output=True, timeout=60, check=False)


@pytest.fixture
def site() -> Iterator[Site]:
    base = Path(tempfile.mkdtemp(prefix="popbox-varmail-"))
    try:
        with system_accounts(base, 2) as (alice, bob):
            spools = base / "mail"
            spools.mkdir()
            os.chown(spools, 0, MAIL_GID)
            spools.chmod(0o2775)
            lines = []
            for login, who in (("alice", alice), ("bob", bob)):
                spool = spools / login
                spool.write_bytes(b"From sender@example.org Thu Jan  1 00:00:00 2026\n"
                                  + f"Subject: first\n\nfor {login}\n\n".encode())
                os.chown(spool, who.uid, MAIL_GID)
                spool.chmod(0o660)
                lines.append(f"{login}:{{PLAIN}}secret:{who.uid}:{who.gid}::{who.home}::\n")
            users = base / "users"
            users.write_text("".join(lines))
            users.chmod(0o644)
            yield Site(base, spools, {"alice": alice, "bob": bob})
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _opens_as(status: dict[str, list[str]], path: Path) -> str:
    """Open `path` for reading in a new process with the real, effective and saved uids
    and gids and the groups that /proc showed for a mail process: "ok" or the error."""
    uids = ", ".join(status["Uid"][:3])
    gids = ", ".join(status["Gid"][:3])
    groups = ", ".join(status["Groups"])
    script = (
        "import os\n"
        f"os.setgroups([{groups}])\nos.setresgid({gids})\nos.setresuid({uids})\n"
        "try:\n"
        f"    os.close(os.open({str(path)!r}, os.O_RDONLY))\n"
        "    print('ok')\n"
        "except OSError as exc:\n"
        "    print(exc.strerror)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30, check=True)
    return done.stdout.strip()


def _no_lock_left(site: Site) -> None:
    left = [p.name for p in site.spools.iterdir() if ".lock" in p.name]
    assert left == [], left


async def test_each_user_works_through_their_own_mail_process(site: Site) -> None:
    """For Alice and then Bob: `popbox deliver` as root appends to the spool through
    that user's mail process (the spool keeps its inode, owner, group and mode 0660);
    a POP3 session lists both messages, DELE 1 and QUIT remove the first; the dotlock
    is taken (a planted one of a live process makes the login [IN-USE] and the
    delivery 75) and never left behind. While the session is open /proc shows the mail
    process with the user's uid four times and the user's gid as real, effective and
    filesystem gid in every thread, mail's gid as the saved one only and not among its
    groups; a process with exactly that identity can open the user's own spool and not
    the other user's."""
    config = site.config()
    with server_process(config) as server:
        for login, who in site.users.items():
            other = site.spool("bob" if login == "alice" else "alice")
            spool = site.spool(login)
            before = os.stat(spool)
            result = site.deliver(config, login)
            assert result.returncode == 0, result.stderr
            after = os.stat(spool)
            assert (after.st_ino, after.st_uid, after.st_gid) == (
                before.st_ino, who.uid, MAIL_GID)
            assert stat.S_IMODE(after.st_mode) == 0o660
            assert spool.read_bytes().endswith(f"for {login} again\n\n".encode())
            _no_lock_left(site)

            client = await Client.connect(server.port)
            reply = await client.login(login)
            assert reply.startswith(b"+OK"), (reply, server.read_log())
            assert (await client.cmd("STAT")).startswith(b"+OK 2 ")
            mine = [p for p, uid in mail_processes(server.proc.pid).items() if uid == who.uid]
            assert len(mine) == 1, mine
            status = proc_status(mine[0])
            assert status["Uid"] == [str(who.uid)] * 4, status["Uid"]
            g = str(who.gid)
            for task in os.listdir(f"/proc/{mine[0]}/task"):
                with open(f"/proc/{mine[0]}/task/{task}/status") as f:
                    gids = next(line.split()[1:] for line in f if line.startswith("Gid:"))
                assert gids == [g, g, str(MAIL_GID), g], (task, gids)
            assert str(MAIL_GID) not in status["Groups"], status["Groups"]
            assert _opens_as(status, spool) == "ok"
            assert _opens_as(status, other) == "Permission denied"
            assert (await client.cmd("DELE 1")).startswith(b"+OK")
            assert (await client.cmd("QUIT")).startswith(b"+OK")
            await client.close()
            text = spool.read_bytes()
            assert f"for {login}\n".encode() not in text and b"again" in text, text
            _no_lock_left(site)

            planted = site.spools / f"{login}.lock"
            planted.write_text(f"{os.getpid()}\n")  # a live holder: never stale
            try:
                client = await Client.connect(server.port)
                reply = await client.login(login)
                assert reply.startswith(b"-ERR [IN-USE]"), reply
                await client.close()
                assert site.deliver(config, login).returncode == 75
            finally:
                planted.unlink()
            assert spool.read_bytes() == text, "written while another held the dotlock"
            _no_lock_left(site)
    log = server.final_log
    assert "Traceback" not in log, log


def test_lmtp_appends_to_each_spool_through_that_users_mail_process(site: Site) -> None:
    """One LMTP transaction (RFC 2033 §4.2: a reply per recipient) to Alice and Bob:
    both 250, each spool gets the message appended by a mail process of that user's
    uid with mail's gid as its saved gid only, keeps owner, group and mode, and no
    dotlock is left."""
    config = site.config()
    process = LmtpProcess(config)
    try:
        client = smtplib.LMTP("127.0.0.1", process.port)
        refused = client.sendmail("s@example.org", ["alice", "bob"],
                                  b"Subject: via lmtp\r\n\r\nover LMTP\r\n")
        client.quit()
        assert refused == {}
        mail = mail_processes(process.proc.pid)
        assert sorted(mail.values()) == sorted(a.uid for a in site.users.values()), mail
        for pid in mail:
            gid = proc_status(pid)["Gid"]
            assert gid[2] == str(MAIL_GID) and gid[0] == gid[1] == gid[3] != gid[2], gid
    finally:
        log = process.stop()
    assert "Traceback" not in log, log
    for login, who in site.users.items():
        st = os.stat(site.spool(login))
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (who.uid, MAIL_GID, 0o660)
        assert site.spool(login).read_bytes().endswith(b"over LMTP\n\n")
    _no_lock_left(site)


async def test_without_the_privileged_group_the_dotlock_is_refused(site: Site) -> None:
    """Without store.mail_privileged_group the mail process has the user's gid alone
    (saved gid too), cannot create the dotlock in the folder, and says so: the login
    gets -ERR [SYS/PERM], `popbox deliver` exits 73; the spool is untouched."""
    config = site.config(privileged=False)
    spool = site.spool("alice")
    text = spool.read_bytes()
    with server_process(config) as server:
        client = await Client.connect(server.port)
        reply = await client.login("alice")
        assert reply.startswith(b"-ERR [SYS/PERM]"), reply
        (pid,) = mail_processes(server.proc.pid)
        assert proc_status(pid)["Gid"] == [str(site.users["alice"].gid)] * 4
        await client.close()
        result = site.deliver(config, "alice")
        assert result.returncode == 73, result.stderr
        assert b"Permission denied" in result.stderr, result.stderr
    assert spool.read_bytes() == text
    _no_lock_left(site)
    assert "Permission denied" in server.final_log, server.final_log


def test_the_privileged_gid_is_taken_on_by_the_calling_thread_only() -> None:
    """In a process that became nobody with mail's gid as its saved set-group-ID only
    (popbox.mailowner.become), `privileged()` makes mail's gid the effective gid of the
    thread that asked, while another thread of the process keeps nobody's group (it
    could not open a file with mail's rights meanwhile), and gives it back after."""
    script = (
        "import os, pwd, threading\n"
        "from popbox.mailowner import Owner, become\n"
        "from popbox.store.privgroup import privileged\n"
        "nobody = pwd.getpwnam('nobody')\n"
        f"become(Owner(nobody.pw_uid, nobody.pw_gid), {MAIL_GID})\n"
        "asked, seen = threading.Event(), []\n"
        "def other():\n"
        "    asked.wait()\n"
        "    seen.append(os.getresgid())\n"
        "t = threading.Thread(target=other)\n"
        "t.start()\n"
        "with privileged():\n"
        "    inside = os.getresgid()\n"
        "    asked.set()\n"
        "    t.join()\n"
        "print((inside, seen[0], os.getresgid()))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    inside, other, after = ast.literal_eval(done.stdout)
    nobody = pwd.getpwnam("nobody").pw_gid
    assert inside == (nobody, MAIL_GID, MAIL_GID)
    assert other == (nobody, nobody, MAIL_GID)
    assert after == (nobody, nobody, MAIL_GID)
