"""Removing messages from an mbox spool, crash-safely, in place.

Why in place: ``/var/mail/user`` must keep its inode, owner, group and mode. An fcntl or
flock lock is taken on an *open* file: a writer (Postfix `local`, procmail) that opened
the spool and waits for that lock would, after a replace by rename, append to the
unlinked old inode (lost mail) - only the dotlock, taken before the open, would keep it
out, and the lock methods are configurable. A new file would also need ``chown`` (root)
to keep its owner. Dovecot and mutt rewrite in place too. Doing it in
place safely needs a redo journal, so the journal is the "new spool": only the part of it
that changes.

Let o be the start of the first deleted message and S the spool's size (under the locks).
The new spool is the old one up to o, then the kept octets of [o, S) (length L <= S - o).

1. Write the journal ``<name>.rewrite.tmp`` beside the index file: a header (the spool's
   inode, o, S, L, and a fingerprint of the old octets [o+L, S), the *stale tail* that
   step 3 cuts off: its length and the SHA-256 of its first 64 KB), then the L octets.
   fsync it, rename it to ``<name>.rewrite``, fsync the folder. A crash before the
   rename leaves the spool untouched (the .tmp is removed).
2. Write the L octets at o, fsync the spool.
3. Truncate the spool to o+L, fsync. Then the caller saves the new index and removes the
   journal.

After a crash anywhere in 2-3 the spool may be half rewritten (data is never *lost*: the
journal has every kept octet). The next open, commit or delivery, under the spool's locks,
finds the journal and redoes 2-3; redoing is idempotent. Mail may have been appended
meanwhile (a killed process leaves its dotlock, which other programs break when stale):
if the spool is at least S long and [o+L, S) still has the stale tail's fingerprint, step
3 had not happened and the new mail is [S, end); otherwise it had, and the new mail is
[o+L, end). The journal is then first extended with that mail (a new journal, written and
renamed as in 1), so the redo keeps it. Cost: the journal needs free space for L octets
(a client that deletes everything it fetched makes L the size of the mail that arrived
since; deleting one old message of a big spool makes L nearly the spool's size).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence

COPY_CHUNK = 1 << 20
STALE_SAMPLE = 64 * 1024  # octets of the stale tail that its fingerprint covers
_MAGIC = b"popbox-mbox-rewrite 1"


class JournalError(Exception):
    """The journal does not belong to this spool (it was replaced): nothing was done."""


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy(src: int, start: int, end: int) -> Iterator[bytes]:
    pos = start
    while pos < end:
        chunk = os.pread(src, min(COPY_CHUNK, end - pos), pos)
        if not chunk:
            raise OSError(f"spool shorter than expected at {pos}")
        pos += len(chunk)
        yield chunk


def _hash_range(fd: int, start: int, end: int) -> str:
    digest = hashlib.sha256()
    for chunk in _copy(fd, start, end):
        digest.update(chunk)
    return digest.hexdigest()


def _stale_hash(fd: int, start: int, end: int) -> str:
    """The stale tail's fingerprint: its length and the hash of its first octets (it
    starts where the kept octets end, so new mail written there after a truncation
    begins with a From line of its own, and differs within those octets)."""
    return f"{end - start}-{_hash_range(fd, start, min(end, start + STALE_SAMPLE))}"


def write_all(fd: int, data: bytes, offset: int | None = None) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[n:]
        if offset is not None:
            offset += n


def _write_journal(path: str, spool: int, ino: int, o: int, s: int,
                   pieces: Sequence[tuple[int, int]], extra: Iterator[bytes] | None = None,
                   extra_len: int = 0) -> None:
    """Step 1: the journal for keeping `pieces` (ranges of the spool) of [o, s), then
    `extra`, atomically in place at `path`."""
    length = sum(b - a for a, b in pieces) + extra_len
    stale = _stale_hash(spool, min(o + length, s), s)
    header = b"%s %d %d %d %d %s\n" % (_MAGIC, ino, o, s, length, stale.encode())
    tmp = path + ".tmp"
    discard_torn(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, header)
        for a, b in pieces:
            for chunk in _copy(spool, a, b):
                write_all(fd, chunk)
        for chunk in extra or ():
            write_all(fd, chunk)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


def _read_header(journal: int) -> tuple[int, int, int, int, str, int]:
    line = os.pread(journal, 256, 0).split(b"\n", 1)[0]
    magic, ino, o, s, length, stale = line.rsplit(b" ", 5)
    if magic != _MAGIC:
        raise ValueError("not a rewrite journal")
    return int(ino), int(o), int(s), int(length), stale.decode(), len(line) + 1


def rewrite(spool: int, journal: str, keep: Sequence[tuple[int, int]], o: int) -> int:
    """Keep only the `keep` ranges of [o, end of spool); returns the new size. The
    caller holds the spool's locks and removes the journal after saving its index."""
    st = os.fstat(spool)
    _write_journal(journal, spool, st.st_ino, o, st.st_size, keep)
    return redo(spool, journal)


def redo(spool: int, journal: str) -> int:
    """Steps 2-3 from the journal at `journal` (also after a crash); returns the spool's
    new size. JournalError: the journal is not this spool's; OSError propagates."""
    jfd = os.open(journal, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            ino, o, s, length, stale, skip = _read_header(jfd)
        except ValueError as exc:
            raise JournalError(f"{journal}: unreadable header") from exc
        st = os.fstat(spool)
        jst = os.fstat(jfd)
        if jst.st_uid != os.geteuid():
            raise JournalError(f"{journal}: not written by this user")
        if st.st_ino != ino or jst.st_size != skip + length:
            raise JournalError(f"{journal}: written for another spool, or torn")
        end = st.st_size
        if end >= s and _stale_hash(spool, o + length, s) == stale:
            appended = (s, end)  # not truncated yet
        else:
            appended = (o + length, max(end, o + length))
        if appended[1] > appended[0]:
            new = appended[1] - appended[0]
            _write_journal(journal, spool, ino, o, max(end, o + length), [],
                           _chain(_copy(jfd, skip, skip + length),
                                  _copy(spool, appended[0], appended[1])), length + new)
            old, jfd = jfd, -1
            os.close(old)
            jfd = os.open(journal, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            ino, o, s, length, stale, skip = _read_header(jfd)
        pos = o
        for chunk in _copy(jfd, skip, skip + length):
            write_all(spool, chunk, pos)
            pos += len(chunk)
        os.fsync(spool)
        os.ftruncate(spool, o + length)
        os.fsync(spool)
        return o + length
    finally:
        if jfd >= 0:
            os.close(jfd)


def _chain(*parts: Iterator[bytes]) -> Iterator[bytes]:
    for part in parts:
        yield from part


def finish(journal: str) -> None:
    """Remove the journal once the index describes the new spool."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(journal)
    _fsync_dir(os.path.dirname(journal) or ".")


def discard_torn(journal: str) -> None:
    """Remove a journal that was never completed (a crash in step 1)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(journal + ".tmp")
