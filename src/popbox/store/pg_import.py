"""Copying a Maildir into the postgres store, keeping its UIDLs (`popbox import`).

Clients that "leave mail on the server" remember UIDLs; if they changed with the move
every client would download everything again. So the listing is popbox's own Maildir
listing (popbox.store.maildir_scan.snapshot, with the same `uidl_import` the Maildir
store would use): the imported UIDLs are exactly those popbox's Maildir store serves,
including UIDLs taken over from Dovecot or Courier. The listing order is kept (rows are
inserted oldest first), and so are the seen flag (`S`) and the delivery time (from the
file name, else the file's mtime).

Idempotent and resumable: the mailbox's UIDLs are read first and those messages are not
read again; each message is one insert that does nothing when (mailbox, UIDL) is already
there (a unique constraint), so a run that stopped halfway, or one run twice, never
duplicates a message. The maildir's popbox lock is held while it is copied, so a popbox
still serving it cannot delete messages halfway (a maildir in use is reported busy and
left for the next run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from popbox.store.base import Failure
from popbox.store.lock import FileLock
from popbox.store.maildir import LOCK_NAME
from popbox.store.maildir_import import UidlImport
from popbox.store.maildir_names import has_flag
from popbox.store.maildir_scan import SUBDIRS, Entry, find_files, pick, snapshot
from popbox.store.postgres import PostgresStore

_CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class Source:
    user: str
    maildir: str
    mailbox: str  # the location in the postgres store


@dataclass(slots=True)
class Counts:
    imported: int = 0
    skipped: int = 0  # already in the mailbox
    missing: int = 0  # removed from the maildir while importing
    failed: int = 0  # the database refused or was unreachable: run again
    busy: bool = False  # the maildir was locked by a POP3 session: run again

    def add(self, other: Counts) -> None:
        self.imported += other.imported
        self.skipped += other.skipped
        self.missing += other.missing
        self.failed += other.failed
        self.busy = self.busy or other.busy


def count_files(maildir: str) -> int:
    """How many messages a maildir holds, roughly (for a progress bar)."""
    total = 0
    for sub in SUBDIRS:
        with contextlib.suppress(OSError):
            total += sum(1 for name in os.listdir(os.path.join(maildir, sub))
                         if not name.startswith("."))
    return total


def _read(root: str, entry: Entry) -> bytes | None:
    for _ in range(2):
        try:
            with open(entry.path(root), "rb") as f:
                return f.read()
        except FileNotFoundError:  # renamed since the listing (new -> cur, flags)?
            if not pick(root, entry, find_files(root, {entry.base}).get(entry.base, [])):
                return None
    return None


def _delivered_at(root: str, entry: Entry) -> datetime | None:
    seconds = entry.key[0]
    if not seconds:
        try:
            seconds = int(os.stat(entry.path(root)).st_mtime)
        except OSError:
            return None
    return datetime.fromtimestamp(seconds, UTC)


async def import_maildir(
    store: PostgresStore, source: Source, uidl_import: UidlImport | None,
    progress: Callable[[int], None] = lambda n: None,
) -> Counts:
    """Copy one maildir; `progress(n)` is called as messages are done. OSError (an
    unreadable maildir) and DB_ERRORS (reading the existing UIDLs) propagate."""
    counts = Counts()
    root = source.maildir
    if not await asyncio.to_thread(os.path.isdir, os.path.join(root, "cur")):
        return counts
    lock = await asyncio.to_thread(FileLock.try_acquire, os.path.join(root, LOCK_NAME))
    if lock is None:
        counts.busy = True
        return counts
    try:
        entries = await asyncio.to_thread(snapshot, root, uidl_import, _CHUNK)
        have = await store.uidls(source.mailbox)
        for entry in entries:
            if entry.uidl in have:
                counts.skipped += 1
                progress(1)
                continue
            data = await asyncio.to_thread(_read, root, entry)
            if data is None:
                counts.missing += 1
                progress(1)
                continue
            result = await store.store(
                source.mailbox, data, uidl=entry.uidl, seen=has_flag(entry.name, "S"),
                delivered_at=_delivered_at(root, entry),
            )
            if isinstance(result, Failure):
                counts.failed += 1
            elif result:
                counts.imported += 1
            else:
                counts.skipped += 1
            progress(1)
    finally:
        lock.release()
    return counts

