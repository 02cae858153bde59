"""MboxStore: maildrops kept as mbox spools (RFC 4155), e.g. ``/var/mail/alice``.

Location = the path of the spool (``mail_location = "mbox:/var/mail/{local}"``; the
``mbox:`` prefix is taken off by popbox.store.routing). The spool is shared with programs
that know nothing of popbox: the MTA appends to it at any time (Postfix `local`, procmail,
``popbox deliver``) and mail readers (mutt) may rewrite it. The pieces:

* Two kinds of lock. The *session* lock (popbox.store.lock: an OFD lock on
  ``<name>.lock`` in the index folder) is held for the whole session: RFC 1939 §4's
  exclusive-access lock, ``[IN-USE]`` at once. The *spool* locks
  (popbox.store.mbox_lock: dotlock, then fcntl, as procmail takes them; Postfix and mutt
  take the same two) are held only while the index is brought up to date at open, and during
  the commit, so the MTA can deliver during a session.
* open: take the session lock; under the spool locks, finish an interrupted rewrite
  (popbox.store.mbox_rewrite), bring the index up to date (popbox.store.mbox_index: only
  the appended tail is read when the spool is as the index left it), save the index.
  The snapshot is the index's listing; mail appended later shows up next session.
* read: the message's key is checked at its offset (another program may have rewritten
  the spool), then its content is streamed in chunks read in a worker thread, with the
  ``>From`` quoting undone (`store.mbox_format`). Only the spool locks exclude writers,
  and no writer but a rewriting mail reader changes octets before the end.
* commit (after QUIT): under the spool locks, index again (delivered mail is kept), find
  the session's messages by UIDL (the ones no longer there count as missing), record the
  retrieved ones as seen in the index (the spool is not rewritten for that: no
  ``Status:`` header is added), and remove the deleted ones by a journaled in-place
  rewrite (why in place, and how it survives a kill -9: popbox.store.mbox_rewrite).
* deliver: under the spool locks, append a From line (the Return-Path sender), the
  message quoted as the configured format writes it, and an empty line; fsync.

The index folder is ``.popbox`` beside the spool (``/var/mail/.popbox/alice.uidlist``)
unless `index_dir` names one (a leading ``~`` is the home of the process that uses it:
each user's, in a per-uid mail process); it needs write access to the spool's folder,
which the dotlock needs anyway (popbox.store.privgroup: a privileged group for the
dotlock only). It is made mode 1770 (its group is the spool folder's, ``mail`` on
Debian), and popbox trusts only index and journal files its own user owns, created with
``O_EXCL``. A missing spool is an empty maildrop.

Error mapping: access denied, a spool that is not a regular file, a folder that cannot
be written -> Failure.PERMANENT; a spool lock busy beyond the timeout -> Failure.IN_USE
at open (Failure.TEMPORARY for commit and delivery); no space or quota (ENOSPC, EDQUOT) ->
Failure.FULL, with the spool as it was; other OSError -> Failure.TEMPORARY.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import stat
import time
from collections.abc import Iterator, Sequence, Set
from typing import TYPE_CHECKING

from popbox.proto.types import Index, Uidl
from popbox.store import last_login, mbox_index, mbox_rewrite
from popbox.store.base import (
    FULL_ERRNOS,
    GONE,
    CommitReport,
    Failure,
    Gone,
    Maildrop,
    MailStore,
    Snapshot,
    StoreError,
)
from popbox.store.last_login import LastLogin
from popbox.store.lock import FileLock
from popbox.store.mbox_format import MboxFormat, Unquoter, envelope_sender, from_line, quote
from popbox.store.mbox_index import Entry
from popbox.store.mbox_index import Index as SpoolIndex
from popbox.store.mbox_lock import LockMethod, LockTimeout, SpoolLocks
from popbox.store.privgroup import privileged

CHUNK_SIZE = 256 * 1024
INDEX_FOLDER = ".popbox"
_PERMANENT_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ELOOP}
)

log = logging.getLogger(__name__)


def _failure(exc: OSError) -> Failure:
    if exc.errno in FULL_ERRNOS:
        return Failure.FULL
    return Failure.PERMANENT if exc.errno in _PERMANENT_ERRNOS else Failure.TEMPORARY


class _Paths:
    """The spool and the files popbox keeps for it."""

    def __init__(self, spool: str, index_dir: str | None) -> None:
        self.spool = os.path.abspath(spool)
        folder, name = os.path.split(self.spool)
        if index_dir is None:
            self.folder = os.path.join(folder, INDEX_FOLDER)
        else:  # one folder for spools of many folders: names must not collide
            self.folder = os.path.expanduser(index_dir)  # "~": the home of the process
            name += "-" + hashlib.sha256(self.spool.encode()).hexdigest()[:12]
        base = os.path.join(self.folder, name)
        self.lock = base + ".lock"
        self.index = base + ".uidlist"
        self.journal = base + ".rewrite"
        self.last_login = base + ".last-login"

    def ensure_folder(self) -> None:
        if os.path.isdir(self.folder):
            return
        shared = self.folder.endswith(INDEX_FOLDER)
        try:
            os.mkdir(self.folder, 0o700)
        except FileExistsError:
            return
        if shared:
            # Beside /var/mail/user: writable by the spool folder's group (mail, inherited
            # from its setgid bit) and sticky, so each user removes only their own files.
            os.chmod(self.folder, 0o1770)  # noqa: S103 - shared with group mail, as /var/mail


class MboxStore:
    """Maildrops kept as mbox spools. `fmt`: "mboxrd" (default) or "mboxo", for reading
    and delivering. `locks`: the spool locks, in order. `lock_timeout`: seconds to wait
    for them. `dotlock_stale`: seconds without change after which a dotlock is broken.
    `index_dir`: where the index files go (default: ``.popbox`` beside the spool).
    `mark_seen`: record retrieved messages as seen in the index."""

    def __init__(
        self,
        *,
        fmt: MboxFormat = "mboxrd",
        locks: Sequence[LockMethod] = ("dotlock", "fcntl"),
        lock_timeout: float = 30.0,
        dotlock_stale: float = 300.0,
        index_dir: str | None = None,
        mark_seen: bool = True,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        if fmt not in ("mboxrd", "mboxo"):
            raise ValueError(f"unknown mbox format {fmt!r}")
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.fmt: MboxFormat = fmt
        self.locks = tuple(locks)
        self.lock_timeout = lock_timeout
        self.dotlock_stale = dotlock_stale
        self.index_dir = index_dir
        self.mark_seen = mark_seen
        self.chunk_size = chunk_size

    # -- the spool under its locks ---------------------------------------------------

    @contextlib.contextmanager
    def locked(self, paths: _Paths, *, create: bool) -> Iterator[int | None]:
        """The spool's descriptor with its locks held (None: no spool and not `create`),
        an interrupted rewrite finished. OSError and LockTimeout propagate."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(paths.spool, flags)
        except FileNotFoundError:
            if not create:
                yield None
                return
            with privileged():  # a new file in the spool's folder, as the dotlock
                fd = os.open(paths.spool, flags | os.O_CREAT, 0o600)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EISDIR, "not a regular file", paths.spool)
            locks = SpoolLocks(paths.spool, fd, self.locks, timeout=self.lock_timeout,
                               stale_after=self.dotlock_stale)
            locks.acquire()
            try:
                self._recover(fd, paths)
                yield fd
            finally:
                locks.release()
        finally:
            os.close(fd)

    def _recover(self, fd: int, paths: _Paths) -> None:
        mbox_rewrite.discard_torn(paths.journal)
        if not os.path.lexists(paths.journal):
            return
        log.warning("mbox %s: finishing an interrupted rewrite", paths.spool)
        try:
            mbox_rewrite.redo(fd, paths.journal)
        except mbox_rewrite.JournalError as exc:
            aside = f"{paths.journal}.orphaned-{time.time_ns()}"
            log.error("mbox %s: %s; kept as %s", paths.spool, exc, aside)
            os.rename(paths.journal, aside)
            return
        mbox_rewrite.finish(paths.journal)

    def _refresh(self, fd: int, paths: _Paths) -> SpoolIndex:
        old = mbox_index.load(paths.index)
        index, changed = mbox_index.refresh(fd, old, self.fmt)
        if changed:
            self._save(paths, index)
        return index

    def _save(self, paths: _Paths, index: SpoolIndex) -> None:
        try:
            mbox_index.save(paths.index, index)
        except OSError as exc:  # only the next login's speed depends on it
            log.warning("mbox %s: index not saved: %s", paths.spool, exc)

    # -- MailStore ------------------------------------------------------------------

    async def open(self, location: str) -> MboxDrop | Failure:
        return await asyncio.to_thread(self._open, location)

    def _open(self, location: str) -> MboxDrop | Failure:
        paths = _Paths(location, self.index_dir)
        try:
            paths.ensure_folder()
            session = FileLock.try_acquire(paths.lock)
        except OSError as exc:
            log.warning("mbox %s unusable: %s", paths.spool, exc)
            return _failure(exc)
        if session is None:
            return Failure.IN_USE
        try:
            with self.locked(paths, create=False) as fd:
                entries = [] if fd is None else self._refresh(fd, paths).entries
        except LockTimeout as exc:
            session.release()
            log.warning("mbox %s: %s", paths.spool, exc)
            return Failure.IN_USE
        except OSError as exc:
            session.release()
            log.warning("mbox %s not indexed: %s", paths.spool, exc)
            return _failure(exc)
        except BaseException:
            session.release()
            raise
        return MboxDrop(self, paths, session, entries)

    async def aclose(self) -> None:
        """Nothing to release: each maildrop's locks go with its session."""

    async def record_login(self, location: str, login: LastLogin) -> Failure | None:
        paths = _Paths(location, self.index_dir)

        def write() -> None:
            paths.ensure_folder()
            last_login.write_file(paths.last_login, login)

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            log.warning("mbox %s: last login not recorded: %s", paths.spool, exc)
            return _failure(exc)
        return None

    async def last_login(self, location: str) -> LastLogin | Failure | None:
        paths = _Paths(location, self.index_dir)
        try:
            return await asyncio.to_thread(last_login.read_file, paths.last_login)
        except OSError as exc:
            log.warning("mbox %s: last login not read: %s", paths.spool, exc)
            return _failure(exc)

    async def deliver(self, location: str, message: bytes) -> Failure | None:
        return await asyncio.to_thread(self._deliver, location, message)

    def _deliver(self, location: str, message: bytes) -> Failure | None:
        paths = _Paths(location, self.index_dir)
        headers = message.replace(b"\r\n", b"\n").partition(b"\n\n")[0]
        data = from_line(envelope_sender(headers)) + quote(message, self.fmt)
        data += b"\n" if data.endswith(b"\n") else b"\n\n"
        try:
            paths.ensure_folder()
            with self.locked(paths, create=True) as fd:
                assert fd is not None
                size = os.fstat(fd).st_size
                end = os.pread(fd, 2, max(0, size - 2)) if size else b"\n\n"
                before = b"" if end.endswith(b"\n\n") or end == b"\n" else (
                    b"\n" if end.endswith(b"\n") else b"\n\n")
                try:
                    mbox_rewrite.write_all(fd, before + data, size)
                    os.fsync(fd)
                except BaseException:
                    os.ftruncate(fd, size)  # nothing half-delivered stays
                    raise
        except LockTimeout as exc:
            log.warning("delivery to %s deferred: %s", paths.spool, exc)
            return Failure.TEMPORARY
        except OSError as exc:
            log.warning("delivery to %s failed: %s", paths.spool, exc)
            return _failure(exc)
        return None


class _SpoolReader:
    """One message of the spool in chunks, unquoted (popbox.store.base.Reader). The first
    chunk was read when the message was opened."""

    __slots__ = ("_end", "_fd", "_first", "_pos", "_step", "_unquote", "done")

    def __init__(self, fd: int, entry: Entry, first: bytes, step: int,
                 unquote: Unquoter) -> None:
        self._fd = fd
        self._pos = entry.body
        self._end = entry.cend
        self._first: bytes | None = first
        self._step = step
        self._unquote = unquote
        self.done = False

    async def next(self) -> bytes:
        out = b""
        while not out and self._pos < self._end:
            chunk, self._first = self._first, None
            if chunk is None:
                chunk = await asyncio.to_thread(
                    _pread, self._fd, min(self._step, self._end - self._pos), self._pos)
            if not chunk:
                raise StoreError(Failure.TEMPORARY)  # the spool was cut short
            self._pos += len(chunk)
            out = self._unquote.feed(chunk)
        if self._pos >= self._end and not self.done:
            out += self._unquote.finish()
            self.done = True
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.done = True


class MboxDrop:
    """One session's view of an mbox spool (popbox.store.base.Maildrop)."""

    def __init__(self, store: MboxStore, paths: _Paths, session: FileLock,
                 entries: list[Entry]) -> None:
        self._store = store
        self._paths = paths
        self._session = session
        self._entries = entries
        self._messages = Snapshot(tuple(Uidl(e.uidl) for e in entries),
                                  tuple(e.size for e in entries))
        self._committing = False

    @property
    def messages(self) -> Snapshot:
        return self._messages

    # -- reading ----------------------------------------------------------------------

    def _open_message(self, entry: Entry, size: int) -> tuple[int, bytes] | Gone:
        """The spool opened, the message's key checked, and its first chunk read: one
        trip to a worker thread for most messages."""
        try:
            fd = os.open(self._paths.spool,
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return GONE
        except OSError as exc:
            raise StoreError(Failure.TEMPORARY) from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode) or mbox_index.key_at(fd, entry) != entry.key:
                os.close(fd)
                return GONE
            return fd, os.pread(fd, size, entry.body)
        except OSError as exc:
            os.close(fd)
            raise StoreError(Failure.TEMPORARY) from exc
        except BaseException:
            os.close(fd)
            raise

    async def open_message(self, index: Index) -> _SpoolReader | Gone:
        entry = self._entries[index]
        first = min(self._store.chunk_size, entry.cend - entry.body)
        opened = await asyncio.to_thread(self._open_message, entry, first)
        if isinstance(opened, Gone):
            return opened
        fd, chunk = opened
        return _SpoolReader(fd, entry, chunk, self._store.chunk_size, Unquoter(self._store.fmt))

    # -- the UPDATE state -------------------------------------------------------------

    async def commit(self, delete: Set[Index], seen: Set[Index]) -> CommitReport | Failure:
        if self._committing or not self._session.held:
            raise RuntimeError("maildrop already committed or released")
        count = len(self._entries)
        if any(not 0 <= i < count for i in (*delete, *seen)):
            raise IndexError("message index out of range")
        self._committing = True
        doomed = {self._entries[i].uidl for i in delete}
        flag = {self._entries[i].uidl for i in seen} - doomed if self._store.mark_seen else set()
        if not doomed and not flag:
            self._session.release()
            return CommitReport(deleted=0, missing=0, flagged=0)
        return await asyncio.to_thread(self._commit, doomed, flag)

    def _commit(self, doomed: set[str], flag: set[str]) -> CommitReport | Failure:
        store, paths = self._store, self._paths
        try:
            with store.locked(paths, create=False) as fd:
                if fd is None:
                    return CommitReport(deleted=0, missing=len(doomed | flag), flagged=0)
                return self._apply(fd, doomed, flag)
        except LockTimeout as exc:
            log.warning("mbox %s: commit not done: %s", paths.spool, exc)
            return Failure.TEMPORARY
        except OSError as exc:
            log.warning("mbox %s: commit failed: %s", paths.spool, exc)
            return Failure.FULL if exc.errno in FULL_ERRNOS else Failure.TEMPORARY
        finally:
            self._session.release()

    def _apply(self, fd: int, doomed: set[str], flag: set[str]) -> CommitReport:
        store, paths = self._store, self._paths
        index = store._refresh(fd, paths)
        present = {e.uidl for e in index.entries}
        flagged = mbox_index.mark(index.entries, flag & present)
        gone = [e for e in index.entries if e.uidl in doomed]
        report = CommitReport(deleted=len(gone), missing=len((doomed | flag) - present),
                              flagged=flagged)
        if not gone:
            store._save(paths, index)
            return report
        o = gone[0].start
        keep: list[tuple[int, int]] = []
        pos = o
        for entry in gone:
            if entry.start > pos:
                keep.append((pos, entry.start))
            pos = entry.end
        if index.size > pos:
            keep.append((pos, index.size))
        size = mbox_rewrite.rewrite(fd, paths.journal, keep, o)
        shift = 0
        kept: list[Entry] = []
        for entry in index.entries:
            if entry.uidl in doomed:
                shift += entry.end - entry.start
                continue
            if shift:
                entry.start -= shift
                entry.body -= shift
                entry.cend -= shift
                entry.end -= shift
            kept.append(entry)
        store._save(paths, SpoolIndex(index.ino, size, kept))
        mbox_rewrite.finish(paths.journal)
        return report

    async def release(self) -> None:
        if not self._committing:
            self._session.release()


def _pread(fd: int, size: int, offset: int) -> bytes:
    try:
        return os.pread(fd, size, offset)
    except OSError as exc:
        raise StoreError(Failure.TEMPORARY) from exc


if TYPE_CHECKING:  # mypy proves the classes implement the contract

    def _conforms(store: MboxStore, drop: MboxDrop) -> tuple[MailStore, Maildrop]:
        return store, drop
