"""Real system accounts for the tests that need them (as root): made with useradd, each
with a home and a ~/Maildir (mode 0700, owned by the account), removed with userdel;
and the processes a popbox process started, as /proc shows them."""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CAN_MAKE_ACCOUNTS = os.geteuid() == 0 and shutil.which("useradd") is not None

_SERIAL = itertools.count()


@dataclass
class Account:
    name: str
    uid: int
    gid: int
    home: Path

    @property
    def maildir(self) -> Path:
        return self.home / "Maildir"


def _useradd(name: str, home: Path) -> Account:
    subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell",
                    "/usr/sbin/nologin", "--user-group", name], check=True, timeout=30)
    entry = pwd.getpwnam(name)
    md = home / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    for path in (home, md, md / "cur", md / "new", md / "tmp"):
        os.chown(path, entry.pw_uid, entry.pw_gid)
        path.chmod(0o700)
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, home)


@contextlib.contextmanager
def system_accounts(base: Path, count: int) -> Iterator[list[Account]]:
    """`count` new accounts with homes under `base` (made reachable: 0755), removed after
    (also while a process of theirs is still on its way out)."""
    base.chmod(0o755)
    tag = f"{os.getpid() % 100000}{next(_SERIAL)}"
    made: list[str] = []
    try:
        accounts = []
        for n in range(count):
            name = f"pbx{tag}{chr(ord('a') + n)}"
            made.append(name)
            accounts.append(_useradd(name, base / name))
        yield accounts
    finally:
        for name in made:
            subprocess.run(["userdel", "-f", name], check=False, timeout=30,
                           capture_output=True)


@contextlib.contextmanager
def interpreter_reachable() -> Iterator[None]:
    """Let other users run this Python and import this popbox while it lasts: every
    directory above the virtual environment and the package that others may not enter
    (a checkout made in `mktemp -d`, mode 0700) gets o+x, and its mode back after."""
    import popbox
    changed: list[tuple[Path, int]] = []
    try:
        for top in (Path(sys.prefix), Path(popbox.__file__).parent):
            for path in (top, *top.parents):
                mode = path.stat().st_mode
                if not mode & 0o001 and all(p != path for p, _ in changed):
                    changed.append((path, mode))
                    path.chmod(mode | 0o001)
        yield
    finally:
        for path, mode in reversed(changed):
            path.chmod(mode & 0o7777)


def children(pid: int) -> list[int]:
    """The pids whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                if int(f.read().rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry))
    return found


def proc_status(pid: int) -> dict[str, list[str]]:
    """/proc/PID/status as fields (Uid, Gid, Groups, ...) of words."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return fields


def mail_processes(server: int) -> dict[int, int]:
    """The processes under `server` (workers, their hosts, the hosts' mail processes)
    that run as neither root nor nobody: pid -> real uid."""
    found, todo = {}, children(server)
    nobody = pwd.getpwnam("nobody").pw_uid
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError):
            uid = int(proc_status(pid)["Uid"][0])
            if uid not in (0, nobody):
                found[pid] = uid
            todo += children(pid)
    return found


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait (on a pidfd, not a sleep) until `pid` has exited; False if it has not."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)
