"""An exclusive, non-blocking lock on a file, owned by one open file description.

The maildrop lock must (a) answer at once when it is taken, (b) exclude a second session
in the same process as well as in other processes and on other hosts, and (c) die with
its holder, so it can never go stale. A lock *file* with an OFD lock does all three:
open file description locks (``F_OFD_SETLK``, Linux >= 3.15, fcntl(2)) belong to the
``open()`` that made them, not to the process, so two opens in one process conflict;
the kernel drops them when the last descriptor closes, including when the process dies;
and on NFS they travel to the server as ordinary byte-range locks. Where OFD locks are
missing, ``flock(2)`` gives (a)-(c) on local file systems.

The lock file itself stays; only the lock on it matters, so its mere existence means
nothing (no stale-lock cleanup, unlike dotlocks).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import weakref

_BUSY = frozenset({errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK})


def _lock(fd: int) -> None:
    if hasattr(fcntl, "F_OFD_SETLK"):
        # struct flock {short l_type; short l_whence; off_t l_start; off_t l_len; pid_t l_pid}
        # l_len 0 = to the end of the file; l_pid must be 0 for OFD locks. Padded generously:
        # fcntl(2) reads only sizeof(struct flock) bytes.
        arg = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0).ljust(64, b"\0")
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, arg)
    else:  # pragma: no cover - non-Linux
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


class FileLock:
    """A held lock. `release()` is idempotent; a lock that is garbage-collected unreleased
    is released then (the descriptor is closed)."""

    __slots__ = ("__weakref__", "_close", "path")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._close = weakref.finalize(self, os.close, fd)

    @classmethod
    def try_acquire(cls, path: str) -> FileLock | None:
        """Take the lock, or return None at once when someone else holds it.

        OSError from creating or opening the lock file propagates to the caller.
        """
        # O_NOFOLLOW: a symlink planted as the lock file cannot make popbox create or
        # open a file elsewhere.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            _lock(fd)
        except OSError as exc:
            os.close(fd)
            if exc.errno in _BUSY:
                return None
            raise
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._close.alive

    def release(self) -> None:
        self._close()
