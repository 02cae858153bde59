"""MaildirStore: popbox's default store, a Maildir (cr.yp.to/proto/maildir.html).

Location = the path of a maildir (``cur/``, ``new/``, ``tmp/``), as Postfix, Dovecot,
Courier and qmail write them. The pieces:

* open: create a missing maildir (mode 0700, as Dovecot does on first login), take the
  maildrop lock (popbox.store.lock: ``popbox.lock`` in the maildir, OFD lock, answers at
  once, dies with its holder), then take the snapshot (popbox.store.maildir_scan: order,
  sizes without reading files, UIDLs from file names or imported from Dovecot/Courier;
  a maildir unchanged since its last listing is served from the listing cache,
  popbox.store.maildir_listing, without reading its directories). A small maildir
  (``cur/`` and ``new/`` together at most INLINE_DIR_OCTETS) is opened on the event
  loop, as a small message is read there; a larger one, or one with a message whose size
  must be read from its file, in a worker thread.
* read: the file is opened on the event loop with ``O_NOFOLLOW | O_NONBLOCK`` and checked
  with fstat(2) to be a regular file (popbox.fsutil.open_regular): no symlink is followed
  and no FIFO can hold the open. A message that cannot be opened (EACCES, EIO, not a
  regular file) is logged and its RETR/TOP fails alone; the session goes on. If the file
  was renamed by another agent since the snapshot (new->cur, flag changes), it is found
  again by its base in a worker thread, since that lists ``cur/`` and ``new/``. The bytes
  are read on the loop when the page cache holds them (`_FileReader`), else in a thread.
  A small message (a RETR the session reads whole) is opened, checked, read and closed
  in one compiled call (`read_whole`, popbox.store.maildir_measure.read_small): one
  read(2), no reader object, no second read to see the end of the file.
* symlinks: the maildir and its ``cur/``, ``new/`` and ``tmp/`` must be real directories,
  unless `follow_symlinks` is set; message files that are symlinks are never listed
  (popbox.store.maildir_scan).
* commit (after QUIT only): unlink the deleted files; rename the retrieved ones into
  ``cur/`` with the ``S`` flag (when `mark_seen`), never over another file; all of them
  in one batch (popbox.store.maildir_apply: one compiled call, renameat2 with
  RENAME_NOREPLACE); files that vanished meanwhile are looked for once, then counted as
  missing; each directory a deletion changed is fsync'ed once, before the reply to QUIT
  (renames that only flag messages seen are atomic and not fsync'ed); then
  the lock is released - by the worker thread, so a cancelled commit still finishes
  before anyone else can open the maildrop.
  A message read from ``cur/`` under a name with the ``S`` flag is remembered as seen
  when it is opened, so it costs the commit nothing: a session that retrieved only such
  messages and deleted none (a client that leaves mail on the server, at every poll)
  commits with no system call but the lock's close and no trip to a thread.
* retrieval times (popbox.store.maildir_times): the commit appends the first
  retrieval time of each retrieved message to ``popbox.retrieved`` and drops those of
  deleted ones (by appending a line each; the file is rewritten when such lines
  outnumber the rest); `times()` gives them with the file's mtime as the delivery time,
  for `popbox expire`. The time comes from the store's `clock`.
* soft delete (`deleted="trash"`, popbox.store.maildir_trash): the commit moves the
  deleted files into ``.Trash/cur/`` instead of unlinking them; `purge` and `undelete`
  (under the maildrop lock) empty it after a while or put messages back.
* deliver: the Maildir protocol: write a new file in ``tmp/``, fsync, rename into
  ``new/``, fsync ``new/`` (popbox.fsutil.write_atomic). The name is Dovecot's
  ``<sec>.M<usec>P<pid>Q<n>.<host>`` plus ``,S=<file size>,W=<CRLF size>`` so that no
  reader ever has to open it to list it.

Error mapping: the path is a file, or access is denied -> Failure.PERMANENT; no space or
quota (ENOSPC, EDQUOT) -> Failure.FULL; other OSError -> Failure.TEMPORARY; lock held
elsewhere -> Failure.IN_USE.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Sequence, Set
from functools import partial
from typing import TYPE_CHECKING, Literal

from popbox.fsutil import NotRegularFile, fsync_dir, open_regular, write_atomic
from popbox.proto.types import Index
from popbox.proto.wire import wire_size
from popbox.store import last_login, maildir_apply, maildir_times, maildir_trash
from popbox.store.base import (
    FULL_ERRNOS,
    GONE,
    CommitReport,
    Dated,
    Failure,
    Gone,
    Maildrop,
    MailStore,
    Reader,
    Snapshot,
    StoreError,
    Times,
    Trash,
    WholeSource,
)
from popbox.store.last_login import LastLogin
from popbox.store.lock import FileLock
from popbox.store.maildir_import import UidlImport
from popbox.store.maildir_listing import Listing
from popbox.store.maildir_measure import read_small
from popbox.store.maildir_names import base_of, has_flag, unique_name, with_flag
from popbox.store.maildir_scan import (
    Entry,
    EntryTable,
    MustMeasure,
    find_files,
    pick,
    take,
)

LOCK_NAME = "popbox.lock"
CHUNK_SIZE = 256 * 1024
INLINE_READ = 64 * 1024  # messages up to this wire size are read on the event loop
# A larger message's first read: what a client that never reads keeps queued. The
# chunks after it, read once the client has taken this one, are full size.
FIRST_READ = 64 * 1024
_MESSAGE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_S_IFMT, _S_IFREG = 0o170000, stat.S_IFREG  # the file type bits of st_mode, a regular file
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclasses.dataclass(slots=True)
class _Tally:
    """What a commit did so far."""

    deleted: int = 0
    missing: int = 0
    flagged: int = 0
    failed: bool = False  # a deletion failed (not a missing file): the commit reports it
    # the subdirs a deletion changed, to fsync (the renames that only mark messages seen
    # are not: see MaildirDrop._apply)
    changed: set[str] = dataclasses.field(default_factory=set)


class _FileReader:
    """Reads a message file in chunks, on the event loop when that cannot block.

    Measured: a hop to a worker thread and back costs about 0.1 ms of CPU, more than
    reading 1 MB from the page cache. So a small file is read on the loop as it is; a
    larger one is read on the loop with RWF_NOWAIT (only what the page cache holds), and
    a chunk that would wait for the disk is read in a thread. A larger file's first read
    is FIRST_READ octets, so that a client that does not read holds little.
    """

    __slots__ = ("_chunk", "_fd", "_offset", "_small", "done")

    def __init__(self, fd: int, chunk: int, *, small: bool) -> None:
        self._fd = fd
        self._chunk = chunk
        self._small = small
        self._offset = 0
        self.done = False

    async def next(self) -> bytes:
        """The next chunk; b"" (and `done`) at the end of the file."""
        if self._small and self._offset == 0:
            try:  # (inline: a call less per RETR)
                data = os.read(self._fd, self._chunk)
            except OSError as exc:
                raise StoreError(Failure.TEMPORARY) from exc
            self.done = len(data) < self._chunk  # a regular file's read is short only at EOF
        else:
            size = min(self._chunk, FIRST_READ) if self._offset == 0 else self._chunk
            cached = _read_cached(self._fd, size, self._offset)
            if cached is None:
                data = await asyncio.to_thread(_read, os.pread, self._fd, size, self._offset)
            else:
                data = cached
            self.done = not data
        self._offset += len(data)
        return data

    def close(self) -> None:
        os.close(self._fd)


def _read_cached(fd: int, size: int, offset: int) -> bytes | None:
    """Up to `size` octets at `offset` if the page cache holds them, else None."""
    buf = bytearray(size)
    try:
        n = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno != errno.EOPNOTSUPP:  # a file system without RWF_NOWAIT
            raise StoreError(Failure.TEMPORARY) from exc
        return None
    return bytes(memoryview(buf)[:n])


def _read(read: Callable[..., bytes], *args: int) -> bytes:
    try:
        return read(*args)
    except OSError as exc:
        raise StoreError(Failure.TEMPORARY) from exc
_PERMANENT_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.ELOOP}
)

log = logging.getLogger(__name__)


INLINE_DIR_OCTETS = 16 * 1024  # cur/ and new/ together: a few hundred names at most


def _small(root: str) -> bool:
    """Whether the maildir's ``cur/`` and ``new/`` are small directories (two stat calls;
    a directory's size grows with the names it has held). False if either is missing."""
    try:
        size = os.stat(os.path.join(root, "cur")).st_size
        return size + os.stat(os.path.join(root, "new")).st_size <= INLINE_DIR_OCTETS
    except OSError:
        return False


def _failure(exc: OSError) -> Failure:
    if exc.errno in FULL_ERRNOS:
        return Failure.FULL
    return Failure.PERMANENT if exc.errno in _PERMANENT_ERRNOS else Failure.TEMPORARY


def ensure_maildir(root: str) -> None:
    """Create the maildir and its subdirectories (0700) where missing. OSError propagates;
    a path that exists and is not a directory raises NotADirectoryError."""
    if os.path.lexists(root) and not os.path.isdir(root):
        raise NotADirectoryError(errno.ENOTDIR, "not a maildir", root)
    if not os.path.isdir(root):
        os.makedirs(root, mode=0o700, exist_ok=True)
    for sub in ("cur", "new", "tmp"):
        path = os.path.join(root, sub)
        if not os.path.isdir(path):
            os.makedirs(path, mode=0o700, exist_ok=True)


class MaildirStore:
    """Maildrops kept as Maildirs.

    `mark_seen`: at commit, messages retrieved (RETR) and not deleted move to ``cur/``
    with the ``S`` flag, as Dovecot and Courier do. `uidl_import`: "dovecot" or
    "courier" to list the UIDLs that server gave out (migration), None (default) for
    popbox's own. `hostname`: used in delivered file names (default: this host).
    `follow_symlinks`: accept a maildir (or its cur/, new/, tmp/) that is a symlink.
    `clock`: seconds since the epoch, for the retrieval times commits record.
    `deleted`: "remove" unlinks deleted messages at commit, "trash" moves them to
    ``.Trash``.
    """

    def __init__(
        self,
        *,
        mark_seen: bool = True,
        uidl_import: UidlImport | None = None,
        chunk_size: int = CHUNK_SIZE,
        hostname: str | None = None,
        follow_symlinks: bool = False,
        clock: Callable[[], float] = time.time,
        deleted: Literal["remove", "trash"] = "remove",
    ) -> None:
        if uidl_import not in (None, "dovecot", "courier"):
            raise ValueError(f"unknown uidl_import {uidl_import!r}")
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.mark_seen = mark_seen
        self.uidl_import: UidlImport | None = uidl_import
        self.chunk_size = chunk_size
        self.hostname = hostname or socket.gethostname()
        self.follow_symlinks = follow_symlinks
        self.clock = clock
        self.deleted = deleted

    def _refuse_symlinks(self, root: str) -> None:
        """OSError(ELOOP) if the maildir or one of its directories is a symlink (and that is
        not allowed); missing ones are fine (they are created as real directories)."""
        if self.follow_symlinks:
            return
        for path in (root, *(os.path.join(root, sub) for sub in ("cur", "new", "tmp"))):
            if os.path.islink(path):
                raise OSError(errno.ELOOP, "a symlink (store.follow_symlinks is off)", path)

    async def open(self, location: str) -> MaildirDrop | Failure:
        """A small maildir (`_small`) is opened on the event loop, unless a message file
        must be read for its size: then, as a larger one is, in a thread (the lock taken
        on the loop kept). A hop to a thread costs a small maildir's login more than the
        listing itself: the thread and the loop take the GIL in turns at every system
        call."""
        lock = None
        if _small(location):
            opened = self._open(location, measure=False)
            if not isinstance(opened, FileLock):
                return opened
            lock = opened
        done = await asyncio.to_thread(self._open, location, lock=lock)
        assert not isinstance(done, FileLock)  # (measured: never the lock)
        return done

    def _open(
        self, root: str, *, measure: bool = True, lock: FileLock | None = None,
    ) -> MaildirDrop | Failure | FileLock:
        """The maildrop, or the failure; without `measure`, the lock held (`lock`, for the
        next call) where a message's size must be measured."""
        if lock is None:
            try:
                self._refuse_symlinks(root)
                if not os.path.isdir(os.path.join(root, "tmp")):  # one stat for a maildir
                    ensure_maildir(root)
                lock = FileLock.try_acquire(os.path.join(root, LOCK_NAME))
            except OSError as exc:
                log.warning("maildir %s unusable: %s", root, exc)
                return _failure(exc)
            if lock is None:
                return Failure.IN_USE
        try:
            try:
                listing = take(root, self.uidl_import, self.chunk_size, measure=measure)
            except FileNotFoundError:  # cur/ or new/ is missing
                ensure_maildir(root)
                listing = take(root, self.uidl_import, self.chunk_size, measure=measure)
        except MustMeasure:
            return lock
        except OSError as exc:
            lock.release()
            log.warning("maildir %s not listed: %s", root, exc)
            return _failure(exc)
        except BaseException:
            lock.release()
            raise
        try:
            return MaildirDrop(root, lock, listing, mark_seen=self.mark_seen,
                               chunk=self.chunk_size, clock=self.clock,
                               trash=self.deleted == "trash")
        except BaseException:
            lock.release()
            raise

    async def aclose(self) -> None:
        """Nothing to release: each maildrop's lock goes with its session."""

    async def record_login(self, location: str, login: LastLogin) -> Failure | None:
        return await asyncio.to_thread(self._record_login, location, login)

    def _record_login(self, root: str, login: LastLogin) -> Failure | None:
        try:
            self._refuse_symlinks(root)
            last_login.write_file(os.path.join(root, last_login.RECORD_NAME), login)
        except OSError as exc:
            log.warning("maildir %s: last login not recorded: %s", root, exc)
            return _failure(exc)
        return None

    async def last_login(self, location: str) -> LastLogin | Failure | None:
        return await asyncio.to_thread(self._last_login, location)

    def _last_login(self, root: str) -> LastLogin | Failure | None:
        try:
            self._refuse_symlinks(root)
            return last_login.read_file(os.path.join(root, last_login.RECORD_NAME))
        except OSError as exc:
            log.warning("maildir %s: last login not read: %s", root, exc)
            return _failure(exc)

    async def purge(self, location: str, before: float) -> int | Failure:
        return await asyncio.to_thread(
            self._in_trash, location, lambda root: maildir_trash.purge(root, before))

    async def undelete(self, location: str, since: float | None) -> int | Failure:
        return await asyncio.to_thread(
            self._in_trash, location, lambda root: maildir_trash.restore(root, since))

    def _in_trash(self, root: str, op: Callable[[str], int]) -> int | Failure:
        """`op(root)` under the maildrop lock, as a session's commit runs; 0 without a
        trash folder (a maildir never made or never trashed into is left as it is)."""
        if not os.path.isdir(maildir_trash.folder(root)):
            return 0
        try:
            lock = FileLock.try_acquire(os.path.join(root, LOCK_NAME))
        except OSError as exc:
            return _failure(exc)
        if lock is None:
            return Failure.IN_USE
        try:
            return op(root)
        except OSError as exc:
            log.warning("maildir %s: trash: %s", root, exc)
            return _failure(exc)
        finally:
            lock.release()

    async def deliver(self, location: str, message: bytes) -> Failure | None:
        return await asyncio.to_thread(self._deliver, location, message)

    def _deliver(self, root: str, message: bytes) -> Failure | None:
        try:
            self._refuse_symlinks(root)
            ensure_maildir(root)
            unique = unique_name(time.time_ns(), self.hostname)
            name = f"{unique},S={len(message)},W={wire_size(message)}"
            # Accepted mail must survive a power cut (RFC 5321 §6.1): the file is flushed
            # before it appears in new/, and new/ after it.
            write_atomic(
                os.path.join(root, "new", name), message, staging=os.path.join(root, "tmp")
            )
        except OSError as exc:
            log.warning("delivery to %s failed: %s", root, exc)
            return _failure(exc)
        return None


def _in_range(indexes: Set[int], count: int) -> bool:
    return not indexes or (min(indexes) >= 0 and max(indexes) < count)


class MaildirDrop:
    """One session's locked view of a maildir (popbox.store.base.Maildrop)."""

    def __init__(
        self, root: str, lock: FileLock, listing: Listing, *, mark_seen: bool, chunk: int,
        clock: Callable[[], float] = time.time, trash: bool = False,
    ) -> None:
        self._root = root
        self._trash = trash
        self._lock = lock
        self._entries = EntryTable(listing)  # Entry objects made on first use
        self._messages = Snapshot(listing.uidls, listing.sizes)
        self._mark_seen = mark_seen
        self._chunk = chunk
        self._committing = False
        # Indexes opened from cur/ under a name with the S flag: nothing to flag at commit.
        self._seen: set[Index] = set()
        self._clock = clock

    @property
    def messages(self) -> Snapshot:
        return self._messages

    async def times(self) -> Sequence[Times]:
        return await asyncio.to_thread(self._times)

    def _times(self) -> list[Times]:
        try:
            record = maildir_times.read(self._root)
        except OSError as exc:
            raise StoreError(Failure.TEMPORARY) from exc
        times: list[Times] = []
        for index in range(len(self._entries)):
            entry = self._entries[index]
            try:
                st = os.stat(entry.path(self._root))
            except FileNotFoundError:
                if not self._relocate(entry):
                    times.append(Times(self._clock(), None))  # gone: nothing to expire
                    continue
                st = os.stat(entry.path(self._root))
            except OSError as exc:
                raise StoreError(Failure.TEMPORARY) from exc
            retrieved = record.get(entry.base)
            if retrieved is None and entry.sub == "cur" and has_flag(entry.name, "S"):
                retrieved = st.st_ctime  # seen before popbox kept the record
            times.append(Times(st.st_mtime, retrieved))
        return times

    # -- reading -------------------------------------------------------------------

    def _relocate(self, entry: Entry) -> bool:
        try:
            return self._pick(entry, find_files(self._root, {entry.base}))
        except OSError as exc:
            raise StoreError(Failure.TEMPORARY) from exc

    def _open_file(self, index: Index) -> int | None:
        """The message's file where the snapshot saw it (on the loop: one open, one
        fstat); None if it is not there any more."""
        sub, name = self._entries.where(index)
        path = f"{self._root}/{sub}/{name}"  # (os.path.join: ten calls in Python)
        # popbox.fsutil.open_regular's rule, written out: this runs once per RETR/TOP.
        try:
            fd = os.open(path, _MESSAGE_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._unreadable(path, exc) from exc
        mode = os.fstat(fd).st_mode
        if mode & _S_IFMT != _S_IFREG:
            os.close(fd)
            raise self._unreadable(path, NotRegularFile(path, mode))
        if self._mark_seen and sub == "cur" and has_flag(name, "S"):
            self._seen.add(index)
        return fd

    def _open_moved(self, index: Index) -> int | Gone:
        """Find the renamed file again and open it (in a worker thread: it lists cur/ and
        new/). GONE if it was removed."""
        entry = self._entries[index]
        for _ in range(2):
            if not self._relocate(entry):
                break
            path = entry.path(self._root)
            try:
                return open_regular(path)
            except FileNotFoundError:
                continue  # renamed again meanwhile
            except OSError as exc:
                raise self._unreadable(path, exc) from exc
        return GONE

    def _unreadable(self, path: str, exc: OSError) -> StoreError:
        log.warning("maildir %s: message %s cannot be read: %s", self._root, path, exc)
        return StoreError(Failure.PERMANENT if isinstance(exc, NotRegularFile) else _failure(exc))

    def read_whole(self, index: Index, size: int) -> bytes | None:
        """A small message read whole on the loop (base.WholeSource), by the rules of
        `_open_file`, in one call (maildir_measure.read_small: open, fstat, one read of
        at most `size` + 1 octets, close); None when the file is not where the snapshot
        saw it (`open_message` looks for it in a thread)."""
        sub, name = self._entries.where(index)
        path = f"{self._root}/{sub}/{name}"
        try:
            data = read_small(path, size + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._unreadable(path, exc) from exc
        if data.__class__ is int:
            assert isinstance(data, int)
            raise self._unreadable(path, NotRegularFile(path, data))
        assert isinstance(data, bytes)
        if self._mark_seen and sub == "cur" and has_flag(name, "S"):
            self._seen.add(index)
        return data

    async def open_message(self, index: Index) -> _FileReader | Gone:
        fd = self._open_file(index)
        if fd is None:
            moved = await asyncio.to_thread(self._open_moved, index)
            if isinstance(moved, Gone):
                return moved
            fd = moved
        return _FileReader(fd, self._chunk, small=self._messages.sizes[index] <= INLINE_READ)

    # -- the UPDATE state ----------------------------------------------------------

    async def commit(self, delete: Set[Index], seen: Set[Index]) -> CommitReport | Failure:
        if self._committing or not self._lock.held:
            raise RuntimeError("maildrop already committed or released")
        count = len(self._entries)
        if not (_in_range(delete, count) and _in_range(seen, count)):
            raise IndexError("message index out of range")
        self._committing = True
        retrieved = frozenset(seen) - frozenset(delete)
        to_flag = retrieved if self._mark_seen else frozenset()
        already = len(to_flag & self._seen)
        if already:  # opened from cur/ with the S flag: flagged, and their time recorded
            to_flag -= self._seen
            retrieved -= self._seen
        if not delete and not to_flag and not retrieved:  # nothing to change: no thread
            self._lock.release()
            return CommitReport(deleted=0, missing=0, flagged=already)
        report = await asyncio.to_thread(
            self._commit, frozenset(delete), to_flag, retrieved, self._clock())
        if isinstance(report, Failure) or not already:
            return report
        return dataclasses.replace(report, flagged=report.flagged + already)

    def _commit(
        self, delete: frozenset[int], to_flag: frozenset[int], retrieved: frozenset[int],
        now: float,
    ) -> CommitReport | Failure:
        try:
            first = []  # retrieved for the first time (the already seen were recorded before)
            for i in retrieved:
                sub, name = self._entries.where(i)
                if not (sub == "cur" and has_flag(name, "S")):
                    first.append(base_of(name))
            deleted = {base_of(self._entries.where(i)[1]) for i in delete}
            report = self._apply(delete, to_flag, now)
            try:
                maildir_times.append(self._root, first, now)
                maildir_times.forget(self._root, deleted)
            except OSError as exc:  # only ever keeps the mail longer
                log.warning("maildir %s: retrieval record not written: %s", self._root, exc)
            return report
        except OSError as exc:  # the directories could not be opened or searched
            log.warning("maildir %s: commit failed: %s", self._root, exc)
            return Failure.TEMPORARY
        finally:
            self._lock.release()

    def _apply(
        self, delete: frozenset[int], to_flag: frozenset[int], now: float
    ) -> CommitReport | Failure:
        """Unlink (or trash) `delete`, flag `to_flag` seen; then fsync, once, each
        directory a deletion changed, so that a deletion the QUIT's +OK reports stays done
        after a crash. The renames that only flag messages seen are not fsynced (as
        Dovecot does not): a rename is atomic, so after a crash the file is under its old
        name or its new one, never lost, and at worst a message shows as unseen again.
        The common operations (unlink; rename into cur/ with S) go in one batch
        (popbox.store.maildir_apply); the rest, and files renamed by another agent since
        the snapshot (found again once), one by one."""
        tally = _Tally()
        trash_cur = maildir_trash.prepare(self._root) if self._trash and delete else None
        trashed: list[str] = []
        ops: list[maildir_apply.Op] = []
        batched: list[int] = []
        slow: list[int] = []
        for i in sorted(delete | to_flag):
            sub, name = self._entries.where(i)
            in_cur = sub == "cur"
            if i in delete:
                if trash_cur is None:
                    ops.append((in_cur, name, None))
                    batched.append(i)
                else:
                    slow.append(i)
            elif in_cur and has_flag(name, "S"):
                slow.append(i)  # seen already: only make sure it is still there
            else:
                target = with_flag(name, "S")
                if target is not None:  # else info of another kind: not ours to change
                    ops.append((in_cur, name, target))
                    batched.append(i)
        new_fd = os.open(os.path.join(self._root, "new"), _DIR_FLAGS)
        try:
            cur_fd = os.open(os.path.join(self._root, "cur"), _DIR_FLAGS)
            try:
                retry = self._batch(new_fd, cur_fd, ops, batched, tally)
                retry += self._each(slow, delete, trash_cur, trashed, tally)
                if retry:  # look once for the files renamed since the snapshot
                    found = find_files(self._root, {self._entries[i].base for i in retry})
                    again = [i for i in retry if self._pick(self._entries[i], found)]
                    tally.missing += len(retry) - len(again)
                    tally.missing += len(self._each(again, delete, trash_cur, trashed, tally))
                for sub, fd in (("new", new_fd), ("cur", cur_fd)):
                    if sub in tally.changed:
                        self._fsync(sub, partial(os.fsync, fd))
            finally:
                os.close(cur_fd)
        finally:
            os.close(new_fd)
        if trash_cur is not None:
            trash = os.path.join(maildir_trash.FOLDER, "cur")
            self._fsync(trash, lambda: fsync_dir(os.path.join(self._root, trash)))
            try:
                maildir_times.append(maildir_trash.folder(self._root), trashed, now,
                                     maildir_times.TRASHED)
            except OSError as exc:  # unrecorded: kept in the trash until removed by hand
                log.warning("maildir %s: trash record not written: %s", self._root, exc)
        if tally.failed:
            return Failure.TEMPORARY
        return CommitReport(deleted=tally.deleted, missing=tally.missing, flagged=tally.flagged)

    def _fsync(self, sub: str, sync: Callable[[], None]) -> None:
        try:
            sync()
        except OSError as exc:
            log.warning("maildir %s: fsync of %s failed: %s", self._root, sub, exc)

    def _batch(self, new_fd: int, cur_fd: int, ops: list[maildir_apply.Op],
               indexes: list[int], tally: _Tally) -> list[int]:
        """Carry out `ops` (for the messages `indexes`) in one batch; returns the indexes
        whose file was not where the snapshot saw it."""
        retry: list[int] = []
        codes = maildir_apply.apply(new_fd, cur_fd, ops)
        for i, (in_cur, name, target), code in zip(indexes, ops, codes, strict=True):
            sub = "cur" if in_cur else "new"
            if code == 0:
                if target is None:
                    tally.deleted += 1
                    tally.changed.add(sub)
                else:
                    tally.flagged += 1
            elif code == errno.ENOENT:
                retry.append(i)
            elif code != errno.EEXIST or target is None:  # EEXIST: never replace a file
                log.warning("maildir %s: %s failed: %s", self._root, name, os.strerror(code))
                tally.failed = tally.failed or target is None
        return retry

    def _each(self, indexes: list[int], delete: frozenset[int], trash_cur: str | None,
              trashed: list[str], tally: _Tally) -> list[int]:
        """The operations one by one; returns the indexes whose file was not there."""
        retry: list[int] = []
        for i in indexes:
            sub, name = self._entries.where(i)
            path = f"{self._root}/{sub}/{name}"
            try:
                if i in delete:
                    if trash_cur is None:
                        os.unlink(path)
                    else:
                        maildir_trash.move(path, trash_cur, name)
                        trashed.append(self._entries[i].base)
                    tally.deleted += 1
                    tally.changed.add(sub)
                elif sub == "cur" and has_flag(name, "S"):
                    # Seen already: only make sure it is still there. access(2) costs
                    # a third of a stat (no stat_result).
                    if not os.access(path, os.F_OK):
                        raise FileNotFoundError(errno.ENOENT, "vanished", name)
                    tally.flagged += 1
                elif self._flag_seen(self._entries[i]):
                    tally.flagged += 1
            except FileNotFoundError:
                retry.append(i)
            except OSError as exc:
                log.warning("maildir %s: %s failed: %s", self._root, name, exc)
                tally.failed = tally.failed or i in delete
        return retry

    def _pick(self, entry: Entry, found: dict[str, list[tuple[str, str]]]) -> bool:
        return pick(self._root, entry, found.get(entry.base, []))

    def _flag_seen(self, entry: Entry) -> bool:
        """Move the file to cur/ with the S flag added (other flags and fields kept);
        False when it is not ours to rename (info of another kind, or the target exists)."""
        new_name = with_flag(entry.name, "S")
        if new_name is None:  # info of another kind than "2,": not ours to change
            return False
        target = os.path.join(self._root, "cur", new_name)
        if os.path.lexists(target):  # never replace another file
            return False
        os.rename(entry.path(self._root), target)
        entry.sub, entry.name = "cur", new_name
        return True

    async def release(self) -> None:
        if not self._committing:
            self._lock.release()


if TYPE_CHECKING:  # mypy proves the classes implement the contract

    def _conforms(
        store: MaildirStore, drop: MaildirDrop, reader: _FileReader
    ) -> tuple[MailStore, Maildrop, Reader, Dated, Trash, WholeSource]:
        return store, drop, reader, drop, store, drop
