"""Files popbox writes and reads that someone else might have planted.

Writing: `write_atomic` is the one way popbox replaces a file (the users file, the fetch
state file, a delivered Maildir message, the maildir caches). The data goes to a new
temporary file in the same directory (or a given staging directory on the same file
system: Maildir's ``tmp/``), created with ``O_EXCL`` so that it can be no one else's file
and no symlink; it is renamed over the target, which rename(2) makes atomic: a reader sees
the old file or the new one, never a mix. With ``fsync=True`` the file's data is flushed
before the rename and the directory after it, so after a power cut the new file is there
whole (the rename is only durable once its directory is flushed: fsync(2), "Calling fsync()
does not necessarily ensure that the entry in the directory containing the file has also
reached disk"). With ``fsync=False`` the rename is still atomic for running readers, but
after a crash the file may be empty or torn; callers that choose it say why that is safe.
A failure at any point leaves the old file as it was and removes the temporary one.

`overwrite` rewrites a file in place instead, for a cache that only the maildrop lock's
holder reads and that checks its own digest: no new inode and no rename per write (a new
file each time costs ext4 an inode allocation). It writes only into a regular file with
one link that this process owns (anything else, a planted hard link included, is left
alone, and the caller replaces it with `write_atomic`). A reader may see it half written
after a crash, never while the lock is held.

Reading: `open_regular` and `read_regular` open with ``O_NOFOLLOW`` (a symlink in the last
component fails with ELOOP) and ``O_NONBLOCK`` (opening a FIFO does not wait for a writer),
then fstat the descriptor: anything but a regular file raises `NotRegularFile`. Checking the
descriptor rather than the path leaves no window between the check and the use.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat

__all__ = [
    "NotRegularFile",
    "fsync_dir",
    "open_regular",
    "overwrite",
    "read_regular",
    "unlink_quietly",
    "write_atomic",
]

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class NotRegularFile(OSError):
    """The path names a FIFO, socket, device or directory where a regular file belongs."""

    def __init__(self, path: str | os.PathLike[str], mode: int) -> None:
        super().__init__(errno.EINVAL, f"not a regular file ({_kind(mode)})", os.fspath(path))


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISLNK, "symlink"),
    ):
        if test(mode):
            return name
    return "unknown type"


def open_regular(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> int:
    """A read-only descriptor of the regular file at `path`, never through a final symlink
    (OSError ELOOP) and never blocking on a FIFO; anything but a regular file raises
    NotRegularFile. The caller closes the descriptor."""
    fd = os.open(path, _READ_FLAGS, dir_fd=dir_fd)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike[str], limit: int | None = None) -> bytes:
    """The regular file at `path` (rules of `open_regular`), or its first `limit` octets:
    open, fstat, one read for a file that does not grow meanwhile, close."""
    fd = open_regular(path)
    try:
        if limit is not None:
            want = min(os.fstat(fd).st_size + 1, limit)
            data = os.read(fd, want)
            if len(data) == want and want < limit:  # it grew meanwhile: read the rest
                data += os.read(fd, limit - want)
            return data
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory, making the renames and creations in it durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: str | os.PathLike[str]) -> None:
    """Remove a file if it is there; any failure is ignored (for clean-up paths)."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def overwrite(path: str | os.PathLike[str], data: bytes) -> bool:
    """Write `data` over the file at `path` in place (see the module's notes): False, with
    nothing written, where that file is missing or is not a regular file of one link
    owned by this process. OSError from the write itself propagates."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO, errno.EACCES, errno.EISDIR):
            return False
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
            return False
        written = os.pwrite(fd, data, 0)
        if written != len(data):
            raise OSError(errno.EIO, "short write", os.fspath(path))
        os.ftruncate(fd, len(data))
        return True
    finally:
        os.close(fd)


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    fsync: bool = True,
    mode: int = 0o600,
    owner: tuple[int, int] | None = None,
    staging: str | os.PathLike[str] | None = None,
) -> None:
    """Replace the file at `path` with `data`, atomically (see the module's notes).

    `fsync`: flush the data before the rename and the directory after it. `mode`: the new
    file's permission bits. `owner`: (uid, gid) to give it, where this process may (a
    process that may not give files away keeps them its own). `staging`: the directory for
    the temporary file (default: the target's), on the same file system. OSError
    propagates; then the old file is unchanged and no temporary file is left."""
    target = os.fspath(path)
    directory, base = os.path.split(os.path.abspath(target))
    temp = os.path.join(
        os.fspath(staging) if staging is not None else directory,
        f"{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp",
    )
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:  # owns fd from here: closed on every path
            if mode != 0o600:
                os.fchmod(fd, mode)
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(fd, *owner)
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(fd)
        os.replace(temp, target)
    except BaseException:
        unlink_quietly(temp)
        raise
    if fsync:
        fsync_dir(directory)
