"""Delivery as the mail's owner: `popbox lmtp` (over real LMTP, smtplib.LMTP) and
`popbox deliver`, started as root, write the mail of users whose userdb entry gives a uid
of their own by a mail process with that uid, gid and groups (popbox.mailproc),
never as root or as `server.user`. Two real system accounts made with useradd.

RFC 2033 §4.2 (one reply per recipient after DATA), RFC 5321 §6.1 (a 250 means stored),
RFC 3463 §3.4 (X.3.5: system not configured to accept the message: 451 4.3.5, kept by
the MTA), sysexits.h EX_TEMPFAIL (75) and EX_CANTCREAT (73) for `popbox deliver`. `popbox deliver`
started as root writes a virtual user's mail as `server.user`, never as root; run as the
recipient (an MDA run by Postfix local(8)) it writes that user's mail itself, and run as
anyone else it writes nothing for a user with a uid of their own.
"""

from __future__ import annotations

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

from accounts import (
    CAN_MAKE_ACCOUNTS,
    Account,
    interpreter_reachable,
    mail_processes,
    system_accounts,
    wait_exit,
)
from pg import LmtpProcess

pytestmark = pytest.mark.skipif(not CAN_MAKE_ACCOUNTS,
                                reason="needs root and useradd to make system accounts")

MESSAGE = b"Subject: owned\r\n\r\nfor the owner\r\n"


@dataclass
class Site:
    base: Path
    alice: Account
    bob: Account
    vmail: Path  # the Maildir of a virtual user (no uid): the front's own, nobody's

    def config(self, **store: object) -> Path:
        path = self.base / "popbox.toml"
        path.write_text(
            '[server]\nuser = "nobody"\n[limits]\nshutdown_grace = 1\n'
            '[lmtp]\nlisten = ["127.0.0.1:0"]\n'
            f'[auth]\npasswd_file = "{self.base / "users"}"\nmail_location = "~/Maildir"\n'
            "mail_process_idle = 60\n"
            "[store]\n" + "".join(f"{k} = {str(v).lower()}\n" for k, v in store.items()))
        return path

    def deliver(self, config: Path, user: str, as_user: Account | None = None
                ) -> subprocess.CompletedProcess[bytes]:
        """`popbox deliver` as root, or run as `as_user` (setpriv: uid, gid and that
        account's groups, as Postfix local(8) runs an MDA as the recipient)."""
        prefix = [] if as_user is None else [
            "setpriv", f"--reuid={as_user.uid}", f"--regid={as_user.gid}", "--init-groups"]
        return subprocess.run(
            [*prefix, sys.executable, "-m", "popbox", "deliver", "--config", str(config), user],
            input=MESSAGE.replace(b"\r\n", b"\n"), capture_output=True, timeout=60,
            check=False)  # an MDA gets the message with LF line ends


@pytest.fixture
def site() -> Iterator[Site]:
    base = Path(tempfile.mkdtemp(prefix="popbox-deliver-owner-"))
    try:
        with system_accounts(base, 2) as (alice, bob), interpreter_reachable():
            nobody = pwd.getpwnam("nobody")
            vmail = base / "vmail" / "Maildir"
            vmail.mkdir(parents=True)
            for path in (vmail.parent, vmail):
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
            users = base / "users"
            users.write_text(
                f"alice:{{PLAIN}}secret:{alice.uid}:{alice.gid}::{alice.home}::\n"
                f"bob:{{PLAIN}}secret:{bob.uid}:{bob.gid}::{bob.home}::\n"
                f"virtual:{{PLAIN}}secret::::{vmail.parent}::\n"
                f"rootish:{{PLAIN}}secret:0:0::{alice.home}::\n"
                f"daemonish:{{PLAIN}}secret:1:1::{alice.home}::\n"
                f"lowuid:{{PLAIN}}secret:{alice.uid}:{alice.gid}::{alice.home}::\n"
            )
            users.chmod(0o644)
            yield Site(base, alice, bob, vmail)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _delivered(maildir: Path) -> list[Path]:
    assert not list((maildir / "tmp").iterdir()), "a file is left in tmp/"
    return sorted((maildir / "new").iterdir())


def _assert_owned(path: Path, uid: int, gid: int) -> None:
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode)
    assert (st.st_uid, st.st_gid) == (uid, gid), (path, st.st_uid, st.st_gid)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)  # as Maildir files are
    assert path.read_bytes().endswith(b"Subject: owned\n\nfor the owner\n")


def test_lmtp_and_deliver_write_each_users_mail_as_that_user(site: Site) -> None:
    """One LMTP transaction to Alice, Bob and a virtual user: each recipient gets 250,
    Alice's file is owned by Alice's uid and gid and Bob's by Bob's, each written by a
    mail process of that uid (seen under the LMTP server while it runs, and gone after
    it stops); the virtual user's file is owned by the front's own user (nobody), not
    root. `popbox deliver` as root does the same for Alice and Bob."""
    nobody = pwd.getpwnam("nobody")
    config = site.config()
    process = LmtpProcess(config)
    try:
        client = smtplib.LMTP("127.0.0.1", process.port)
        refused = client.sendmail("s@example.org", ["alice", "bob", "virtual"], MESSAGE)
        client.quit()
        assert refused == {}
        mail = mail_processes(process.proc.pid)
        assert sorted(mail.values()) == sorted([site.alice.uid, site.bob.uid]), mail
    finally:
        log = process.stop()
    for pid in mail:
        assert wait_exit(pid, 10), "a mail process outlived popbox lmtp"
    assert "Traceback" not in log, log
    for who in (site.alice, site.bob):
        (path,) = _delivered(who.maildir)
        _assert_owned(path, who.uid, who.gid)
    (path,) = _delivered(site.vmail)
    _assert_owned(path, nobody.pw_uid, nobody.pw_gid)
    for who in (site.alice, site.bob):
        result = site.deliver(config, "alice" if who is site.alice else "bob")
        assert result.returncode == 0, result.stderr
        files = _delivered(who.maildir)
        assert len(files) == 2
        for path in files:
            _assert_owned(path, who.uid, who.gid)


@pytest.mark.parametrize("planted", ["tmp", "new"])
@pytest.mark.parametrize("follow", [False, True])
def test_a_planted_symlink_is_not_written_through(site: Site, planted: str, follow: bool
                                                  ) -> None:
    """Alice replaces her Maildir's tmp/ (or new/) with a symlink to a directory of
    root's. With store.follow_symlinks off popbox refuses the maildir; with it on the
    link is followed, but by Alice's mail process, which the kernel does not let write
    there. Either way root's directory stays empty, LMTP answers 550 5.2.0 (the MTA
    bounces it: nothing is lost silently) and `popbox deliver` exits 73; Bob, on the
    same connection, gets his mail."""
    target = site.base / "rootdir"
    target.mkdir(mode=0o755)
    link = site.alice.maildir / planted
    link.rmdir()
    link.symlink_to(target)
    os.lchown(link, site.alice.uid, site.alice.gid)
    config = site.config(follow_symlinks=follow)
    process = LmtpProcess(config)
    try:
        client = smtplib.LMTP("127.0.0.1", process.port)
        try:
            with pytest.raises(smtplib.SMTPDataError) as caught:
                client.sendmail("s@example.org", ["alice"], MESSAGE)
            assert client.sendmail("s@example.org", ["bob"], MESSAGE) == {}
        finally:
            client.quit()
    finally:
        log = process.stop()
    code, text = caught.value.smtp_code, caught.value.smtp_error
    assert code == 550 and text.startswith(b"5.2.0"), (code, text)
    why = "Permission denied" if follow else "a symlink (store.follow_symlinks is off)"
    assert why in log, log
    assert not list(target.iterdir()), "written through the planted link"
    assert len(_delivered(site.bob.maildir)) == 1
    assert "Traceback" not in log, log
    result = site.deliver(config, "alice")
    assert result.returncode == 73, result.stderr
    assert why in result.stderr.decode(), result.stderr
    assert not list(target.iterdir())
    remaining = site.alice.maildir / ("new" if planted == "tmp" else "tmp")
    assert not list(remaining.iterdir())


def test_system_accounts_are_refused_at_rcpt_and_lose_nothing(site: Site) -> None:
    """auth.first_valid_uid/first_valid_gid (and uid 0 always): rootish (uid 0),
    daemonish (uid 1) and lowuid (Alice's own uid, refused once first_valid_uid is above
    it) get 451 4.3.5 at RCPT, so the MTA keeps the message; Bob in the same transaction
    gets his mail, nothing is written to Alice's maildir (whose home they all name), no
    mail process starts for them, and `popbox deliver` exits 75 for each."""
    config = site.config()
    text = config.read_text().replace(
        "mail_process_idle = 60\n",
        f"mail_process_idle = 60\nfirst_valid_uid = {site.alice.uid + 1}\n")
    # Bob must stay valid: give him the higher uid of the two accounts.
    low, high = sorted((site.alice, site.bob), key=lambda a: a.uid)
    assert low is site.alice, "useradd gave the second account a lower uid"
    config.write_text(text)
    process = LmtpProcess(config)
    try:
        client = smtplib.LMTP("127.0.0.1", process.port)
        refused = client.sendmail("s@example.org",
                                  ["rootish", "daemonish", "lowuid", "bob"], MESSAGE)
        client.quit()
        assert sorted(mail_processes(process.proc.pid).values()) == [high.uid]
    finally:
        log = process.stop()
    assert set(refused) == {"rootish", "daemonish", "lowuid"}, refused
    for code, reply in refused.values():
        assert code == 451 and reply.startswith(b"4.3.5"), refused
    assert log.count("delivery refused") == 3, log
    assert _delivered(site.alice.maildir) == []
    assert len(_delivered(site.bob.maildir)) == 1
    for user in ("rootish", "daemonish", "lowuid"):
        result = site.deliver(config, user)
        assert result.returncode == 75, (user, result.stderr)
    assert _delivered(site.alice.maildir) == []


@pytest.mark.parametrize("follow", [False, True])
def test_deliver_as_root_writes_virtual_mail_as_server_user(site: Site, follow: bool
                                                            ) -> None:
    """`popbox deliver` started as root for the virtual user (no uid): the file belongs to
    server.user (nobody), as with `popbox lmtp`, not to root. Then the virtual maildir's
    tmp/ is replaced by a symlink to a directory of root's: refused with
    store.follow_symlinks off, and with it on followed as nobody, whom the kernel does
    not let write there; either way exit 73 and root's directory stays empty."""
    nobody = pwd.getpwnam("nobody")
    config = site.config(follow_symlinks=follow)
    result = site.deliver(config, "virtual")
    assert result.returncode == 0, result.stderr
    (path,) = _delivered(site.vmail)
    _assert_owned(path, nobody.pw_uid, nobody.pw_gid)
    target = site.base / "rootdir"
    target.mkdir(mode=0o755)
    link = site.vmail / "tmp"
    link.rmdir()
    link.symlink_to(target)
    os.lchown(link, nobody.pw_uid, nobody.pw_gid)
    result = site.deliver(config, "virtual")
    assert result.returncode == 73, result.stderr
    why = "Permission denied" if follow else "a symlink (store.follow_symlinks is off)"
    assert why in result.stderr.decode(), result.stderr
    assert not list(target.iterdir()), "root wrote through the planted link"
    assert len(list((site.vmail / "new").iterdir())) == 1


def test_deliver_as_root_without_server_user_refuses(site: Site) -> None:
    """Started as root with no server.user (and server.allow_root off), `popbox deliver`
    does not write as root: exit 75 (the MTA keeps the message), nothing written."""
    config = site.config()
    config.write_text(config.read_text().replace('[server]\nuser = "nobody"\n', ""))
    result = site.deliver(config, "virtual")
    assert result.returncode == 75, result.stderr
    assert "refusing to serve as root" in result.stderr.decode(), result.stderr
    assert not list(site.vmail.iterdir()), "something was written as root"


def test_deliver_run_by_the_recipient_and_by_another_user(site: Site) -> None:
    """`popbox deliver alice` run as Alice (not root) stores the message as Alice, with
    no mail host; run as Bob it exits 75 (EX_TEMPFAIL: Bob cannot take on Alice's uid,
    the MTA keeps the message) and writes nothing to Alice's maildir, and Bob's own
    delivery run as Bob works."""
    config = site.config()
    result = site.deliver(config, "alice", as_user=site.alice)
    assert result.returncode == 0, result.stderr
    (path,) = _delivered(site.alice.maildir)
    _assert_owned(path, site.alice.uid, site.alice.gid)
    result = site.deliver(config, "alice", as_user=site.bob)
    assert result.returncode == 75, result.stderr
    assert "delivery refused user=alice" in result.stderr.decode(), result.stderr
    assert _delivered(site.alice.maildir) == [path]
    result = site.deliver(config, "bob", as_user=site.bob)
    assert result.returncode == 0, result.stderr
    (path,) = _delivered(site.bob.maildir)
    _assert_owned(path, site.bob.uid, site.bob.gid)
