"""Locking an mbox spool the way the other programs that touch it do.

On Debian, Postfix `local` (``mailbox_delivery_lock = fcntl, dotlock``), procmail and
mutt all lock ``/var/mail/user`` with a *dotlock* (the file ``/var/mail/user.lock``) and
an ``fcntl`` lock on the spool itself; some programs use ``flock`` instead. A writer that
honours either lock excludes popbox while it holds it, so popbox takes every configured
lock, in the configured order (default: dotlock, then fcntl, as procmail and Dovecot's
``mbox_write_locks``), and gives them up in reverse order. Debian's policy (§11.6) asks
for fcntl first, "or alternatively [the] two locking methods in a non blocking way": popbox
takes each lock without blocking, and when one is busy gives up those it holds before
it tries again, so no order of the other programs can deadlock with it.

* dotlock: ``<spool>.lock`` holding ``<pid>\\n`` (liblockfile's format), made by
  writing a uniquely named file and link(2)ing it to the lock name (atomic, also on
  NFS). A dotlock outlives a killed holder, so one is *stale*, and removed, when its
  content names a process of this host that no longer exists (liblockfile's rule), or
  when neither it nor the spool has changed for `stale_after` seconds (Dovecot's
  ``mbox_dotlock_change_timeout``; liblockfile and Postfix also give up on a lock some
  minutes old). Creating it needs write access to the spool's folder (``/var/mail`` is
  group ``mail``, mode 2775, on Debian): EACCES is an error, never a silent skip. A mail
  process with a privileged group (popbox.store.privgroup) takes it on for the creation
  and the removal only.
* fcntl: an open-file-description lock (``F_OFD_SETLK``, Linux >= 3.15), a write lock over
  the whole file. OFD locks conflict with the classic POSIX locks other programs take, and
  unlike those they are not dropped when some other descriptor of the file is closed.
* flock: ``flock(LOCK_EX)``.

Rounds are retried with growing pauses until `timeout` (dotlocks can only be polled; the
others are polled so that one deadline covers all). This runs in a worker thread, never
on the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
import time
from collections.abc import Sequence
from typing import Literal

from popbox.store.privgroup import privileged

LockMethod = Literal["dotlock", "fcntl", "flock"]
METHODS: tuple[LockMethod, ...] = ("dotlock", "fcntl", "flock")
_BUSY = frozenset({errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK})
_FIRST_PAUSE = 0.01
_MAX_PAUSE = 0.5


class LockTimeout(Exception):
    """Another program held one of the spool's locks for longer than the timeout."""


def dotlock_path(spool: str) -> str:
    return spool + ".lock"


def _ofd_lock(fd: int, kind: int) -> None:
    # struct flock {short l_type; short l_whence; off_t l_start; off_t l_len; pid_t l_pid}:
    # l_len 0 = to the end of the file; l_pid must be 0 for OFD locks.
    arg = struct.pack("hhqqi", kind, os.SEEK_SET, 0, 0, 0).ljust(64, b"\0")
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, arg)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dotlock_is_stale(lock: str, spool: str, stale_after: float) -> os.stat_result | None:
    """The lock's stat if it may be removed, else None."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:  # a symlink or worse: not a lock file of anyone's, never removed
        return None
    try:
        st = os.fstat(fd)
        content = os.read(fd, 32) if stat.S_ISREG(st.st_mode) else b""
    finally:
        os.close(fd)
    text = content.split(b"\0")[0].strip()
    if text.isdigit() and 0 < int(text) < 2**31 and not _pid_alive(int(text)):
        return st
    now = time.time()
    try:
        spool_changed = os.stat(spool).st_mtime
    except FileNotFoundError:
        spool_changed = 0.0
    if now - st.st_mtime > stale_after and now - spool_changed > stale_after:
        return st
    return None


class Dotlock:
    """A held ``<spool>.lock``."""

    __slots__ = ("_ino", "path")

    def __init__(self, path: str, ino: int) -> None:
        self.path = path
        self._ino = ino

    @classmethod
    def try_acquire(cls, spool: str, stale_after: float) -> Dotlock | None:
        """Create the lock holding our pid, or None when another holds it (a stale one
        is removed first, for the next try). The lock is written under a unique name and
        link(2)ed into place, as liblockfile and procmail do, so it never exists without
        its pid (a holder killed at any moment leaves a lock that can be judged)."""
        with privileged():
            return cls._try_acquire(spool, stale_after)

    @classmethod
    def _try_acquire(cls, spool: str, stale_after: float) -> Dotlock | None:
        path = dotlock_path(spool)
        tmp = f"{path}.popbox.{os.getpid()}.{time.monotonic_ns()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        try:
            try:
                os.write(fd, f"{os.getpid()}\n".encode())
                ino = os.fstat(fd).st_ino
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                st = _dotlock_is_stale(path, spool, stale_after)
                if st is not None:
                    with contextlib.suppress(FileNotFoundError):
                        now = os.stat(path, follow_symlinks=False)
                        if (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns):
                            os.unlink(path)
                return None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return cls(path, ino)

    def release(self) -> None:
        """Remove the lock file if it is still ours."""
        with contextlib.suppress(FileNotFoundError), privileged():
            if os.stat(self.path, follow_symlinks=False).st_ino == self._ino:
                os.unlink(self.path)


class SpoolLocks:
    """The spool's locks, held: `acquire` takes them all or none."""

    def __init__(self, spool: str, fd: int, methods: Sequence[LockMethod], *,
                 timeout: float, stale_after: float) -> None:
        self.spool = spool
        self.fd = fd
        self._methods = tuple(methods)
        self._timeout = timeout
        self._stale_after = stale_after
        self._dotlock: Dotlock | None = None
        self._held: list[LockMethod] = []

    def acquire(self) -> None:
        """Take every lock in order; LockTimeout (holding none) if they cannot all be had
        before the timeout. When one is busy, the ones already taken are given up before
        the pause and the round starts again, so that a program taking the same locks in
        another order (Debian's policy says fcntl first) can never deadlock with popbox.
        OSError other than "busy" propagates, also holding none."""
        deadline = time.monotonic() + self._timeout
        pause = _FIRST_PAUSE
        try:
            while True:
                for method in self._methods:
                    if not self._try(method):
                        break
                    self._held.append(method)
                else:
                    return
                self.release()
                if time.monotonic() + pause > deadline:
                    raise LockTimeout(f"{self.spool}: {method} lock busy")
                time.sleep(pause)  # a dotlock cannot be waited for: it is polled
                pause = min(pause * 2, _MAX_PAUSE)
        except BaseException:
            self.release()
            raise

    def _try(self, method: LockMethod) -> bool:
        if method == "dotlock":
            self._dotlock = Dotlock.try_acquire(self.spool, self._stale_after)
            return self._dotlock is not None
        try:
            if method == "fcntl":
                _ofd_lock(self.fd, fcntl.F_WRLCK)
            else:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _BUSY:
                return False
            raise
        return True

    def release(self) -> None:
        """Give up the locks held, in reverse order. Idempotent."""
        while self._held:
            method = self._held.pop()
            with contextlib.suppress(OSError):
                if method == "dotlock" and self._dotlock is not None:
                    self._dotlock.release()
                    self._dotlock = None
                elif method == "fcntl":
                    _ofd_lock(self.fd, fcntl.F_UNLCK)
                elif method == "flock":
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
