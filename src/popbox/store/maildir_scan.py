"""Taking a maildir's snapshot, and finding a message's file again later.

The listing (cr.yp.to/proto/maildir.html): every regular file in ``cur/`` and ``new/``
whose name does not start with a dot is a message; ``tmp/``, subdirectories (Maildir++
folders ``.Foo`` live in the root anyway) and popbox's own files in the root are not.
Symlinks, FIFOs, sockets, devices and directories in ``cur/`` and ``new/`` are left out
and logged once per file: a link could point at another user's mail or at /etc/shadow,
and opening a FIFO waits for a writer. The file type comes from readdir(2)'s d_type
(``DirEntry.is_file(follow_symlinks=False)``), so telling them apart costs no stat(2)
per file. A file whose size must be measured and that cannot be read (mode 000, EIO) is
left out of that session and logged; the rest of the maildrop is served. An empty file
(0 octets, by ``,W=`` or measured) is no message: left out and logged too. ``cur/`` is
read before ``new/``: an agent moving a message new->cur while we list can then make us
miss it for one session, never list it twice. readdir(2) gives no guarantee while a
directory changes, so a base seen twice is stat'ed and one file seen under two names (a
rename during the listing) is kept once.

Sizes: ``,W=`` in the name, else the size cache (popbox.store.maildir_cache), keyed by
base - no stat(2) per message: Maildir files are never rewritten and a base is never
reused - else the file is read once, streaming: all such files of a directory in one
batch (popbox.store.maildir_measure: compiled, in parallel threads for a large batch).

Order: by delivery time, then microseconds, then base (popbox.store.maildir_names), so
message numbers are oldest first and do not change when flags do.

UIDLs: imported from the previous server when configured (popbox.store.maildir_import),
else the base. Files sharing a base (copies) keep unique, stable UIDLs: the one with the
lowest inode number keeps the plain UIDL, the others get ``-<inode hex>`` appended (or a
hash when that would be too long); inode numbers survive renames, so flag changes and
new->cur moves never change them.

The session's snapshot (`take`): a maildir whose directories have not changed since its
last listing is served from the listing cache (popbox.store.maildir_listing) without
reading a directory; one whose directories hold the same names as that listing (only
their timestamps changed, or the listing was too recent to be trusted) costs one readdir
per directory; otherwise it is listed as above. The result is a `Listing` (parallel
lists); the `Entry` of a message, which `read` and `commit` work on, is made from it the
first time it is asked for (`EntryTable`), so an open builds no per-message object but
the session's MessageInfo. `snapshot` (the list of entries, for ``popbox import``) always
lists.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from itertools import compress
from operator import attrgetter

from popbox.fsutil import open_regular
from popbox.proto.types import Uidl, is_valid_uidl
from popbox.store import maildir_cache, maildir_listing
from popbox.store.maildir_import import UidlImport, load_imported_uidls
from popbox.store.maildir_listing import Listing
from popbox.store.maildir_measure import measure_fd, sizes
from popbox.store.maildir_names import base_of, hashed_uidl, name_fields, uidl_for_base

SUBDIRS = ("cur", "new")
_NO_UIDL = Uidl("")  # until _assign_uidls
_ORDER = attrgetter("key")
_CUR_MASK = bytes.maketrans(b"cn", b"\x01\x00")  # sub bytes -> 1 where cur/
_NEW_MASK = bytes.maketrans(b"cn", b"\x00\x01")
_C = ord("c")  # Listing.subs: b"c" for cur/
_REPORTED_MAX = 10_000  # paths remembered as already logged (then forgotten, and logged again)

log = logging.getLogger(__name__)
_reported: set[str] = set()


def report_once(path: str, why: str) -> None:
    """Log that the file at `path` is left out, once per file (per process)."""
    if path in _reported:
        return
    if len(_reported) >= _REPORTED_MAX:
        _reported.clear()
    _reported.add(path)
    log.warning("maildir file %s left out: %s", path, why)


@dataclass(slots=True)
class Entry:
    """One message of a snapshot and where its file was last seen."""

    sub: str  # "cur" or "new"
    name: str
    base: str
    size: int  # the wire size; while listing: ,W= or -1
    physical: int | None  # ,S=
    key: tuple[int, int, str, str]  # listing order
    uidl: Uidl = _NO_UIDL
    ino: int | None = None  # known when several files share the base

    def path(self, root: str) -> str:
        return os.path.join(root, self.sub, self.name)


def measure(path: str, chunk_size: int) -> int:
    """The wire size of a file, read once in chunks."""
    return _measure(path, chunk_size)[1]


def _measure(path: str, chunk_size: int) -> tuple[int, int]:
    """(physical size, wire size) of a file, read once in chunks."""
    fd = open_regular(path)
    try:
        return measure_fd(fd, chunk_size)
    finally:
        os.close(fd)


Scanned = list[tuple[str, list[str]]]  # (subdir, message file names), cur/ first


def _scan(root: str) -> Scanned:
    scanned: Scanned = []
    for sub in SUBDIRS:
        with os.scandir(os.path.join(root, sub)) as it:
            entries = [d for d in it if not d.name.startswith(".")]
        names = [d.name for d in entries if d.is_file(follow_symlinks=False)]
        if len(names) != len(entries):
            for d in entries:
                if not d.is_file(follow_symlinks=False):
                    report_once(d.path, _kind(d))
        scanned.append((sub, names))
    return scanned


def _kind(d: os.DirEntry[str]) -> str:
    if d.is_symlink():
        return "a symlink"
    if d.is_dir(follow_symlinks=False):
        return "a directory"
    return "not a regular file (FIFO, socket or device)"


def _entries(scanned: Scanned) -> list[Entry]:
    found: list[Entry] = []
    add = found.append
    fields = name_fields
    for sub, names in scanned:
        for name in names:
            base, physical, wire, seconds, usec = fields(name)
            size = -1 if wire is None else wire
            add(Entry(sub, name, base, size, physical, (seconds, usec, base, name)))
    return found


def _inode(root: str, e: Entry) -> int | None:
    if e.ino is None:
        try:
            e.ino = os.stat(e.path(root)).st_ino
        except FileNotFoundError:
            return None
    return e.ino


def _drop_double_listings(root: str, found: list[Entry]) -> list[Entry]:
    """Stats the files of every base seen more than once (their `ino` is then set)."""
    if len({e.base for e in found}) == len(found):
        return found
    by_base: dict[str, list[Entry]] = {}
    for e in found:
        by_base.setdefault(e.base, []).append(e)
    gone: set[int] = set()
    for group in by_base.values():
        if len(group) < 2:
            continue
        seen_inodes: set[int] = set()
        for e in group:
            ino = _inode(root, e)
            if ino is None or ino in seen_inodes:
                gone.add(id(e))
            else:
                seen_inodes.add(ino)
    return [e for e in found if id(e) not in gone]


STALE_SIZES = 64  # sizes of messages gone that the size cache keeps before it is rewritten


class MustMeasure(Exception):
    """A listing made with ``measure=False`` needs a message file read for its size."""


def _sizes(root: str, found: list[Entry], chunk_size: int, measure: bool = True) -> list[Entry]:
    """Fill in the sizes not given by ,W= (popbox.store.maildir_cache: keyed by base, or
    by base and inode for the files that share a base - those already have `ino` set).
    The files the cache does not know are measured in one batch per subdirectory
    (popbox.store.maildir_measure); one the batch could not measure is tried again alone,
    to tell a file that is gone (skipped: next session) from one that cannot be read
    (logged and left out)."""
    cached, current = maildir_cache.load(root)
    fresh: maildir_cache.Sizes = {}
    unknown: dict[str, list[tuple[str, Entry]]] = {sub: [] for sub in SUBDIRS}
    for e in found:
        if e.size < 0:
            key = e.base if e.ino is None else f"{e.base}/{e.ino:x}"
            hit = cached.get(key)
            if hit is None or (e.physical is not None and hit[0] != e.physical):
                unknown[e.sub].append((key, e))
                continue
            fresh[key] = hit
            e.size = hit[1]
    if not measure and any(unknown.values()):
        raise MustMeasure
    left_out: set[int] = set()
    for sub, todo in unknown.items():
        names = [e.name for _, e in todo]
        for (key, e), hit in zip(todo, sizes(os.path.join(root, sub), names, chunk_size),
                                 strict=True):
            if hit is None:
                try:
                    hit = _measure(e.path(root), chunk_size)
                except FileNotFoundError:  # renamed or removed meanwhile: next session
                    left_out.add(id(e))
                    continue
                except OSError as exc:  # unreadable (EACCES, EIO), or no longer regular
                    report_once(e.path(root), f"cannot be read: {exc.strerror or exc}")
                    left_out.add(id(e))
                    continue
            fresh[key] = hit
            e.size = hit[1]
    # Sizes of messages gone are kept a while (harmless: a base is never used again), so
    # that a commit's deletions cost the next listing no rewrite of the cache.
    # (Unless an entry is new or changed, every one of `fresh` is in `cached`: the rest
    # of `cached` is the stale ones.)
    if (not current or any(cached.get(key) != hit for key, hit in fresh.items())
            or len(cached) - len(fresh) > max(STALE_SIZES, len(fresh))):
        maildir_cache.save(root, fresh)
    return [e for e in found if id(e) not in left_out] if left_out else found


def _assign_uidls(root: str, found: list[Entry], kind: UidlImport | None) -> None:
    imported = load_imported_uidls(root, kind)
    for e in found:
        e.uidl = imported.get(e.base) or uidl_for_base(e.base)
    if len({e.uidl for e in found}) == len(found):
        return
    groups: dict[Uidl, list[Entry]] = {}
    for e in found:
        groups.setdefault(e.uidl, []).append(e)
    used = set(groups)
    for candidate, members in groups.items():
        if len(members) < 2:
            continue
        members.sort(key=lambda e: (_inode(root, e) or 0, e.name))
        for e in members[1:]:
            ino = e.ino or 0
            alt = Uidl(f"{candidate}-{ino:x}")
            while not is_valid_uidl(alt) or alt in used:
                alt = hashed_uidl(f"{alt}/{ino}")
            used.add(alt)
            e.uidl = alt


def _without_empty(root: str, found: list[Entry]) -> list[Entry]:
    """An empty file is no message (RFC 5322 §3.6: a message has at least its Date and
    From fields) but the remains of a failed delivery or a planted file: left out and
    logged. A name whose ``,W=`` claims another size is caught at RETR (its size no
    longer matches)."""
    for e in found:
        if e.size == 0:
            report_once(e.path(root), "empty file (0 octets): not a message")
    return [e for e in found if e.size]


def _finish(
    root: str, found: list[Entry], uidl_import: UidlImport | None, chunk_size: int,
    measure: bool = True,
) -> list[Entry]:
    found = _drop_double_listings(root, found)
    found = _sizes(root, found, chunk_size, measure)
    if any(e.size == 0 for e in found):
        found = _without_empty(root, found)
    found.sort(key=_ORDER)
    _assign_uidls(root, found, uidl_import)
    return found


def snapshot(root: str, uidl_import: UidlImport | None, chunk_size: int) -> list[Entry]:
    """List the maildir at `root` (whose cur/ and new/ exist). OSError propagates."""
    return _finish(root, _entries(_scan(root)), uidl_import, chunk_size)


def _as_listing(found: list[Entry]) -> Listing:
    return Listing(
        bytes([99 if e.sub == "cur" else 110 for e in found]),  # b"c", b"n"
        [e.name for e in found],
        [e.size for e in found],
        [e.uidl for e in found],
        {i: e.ino for i, e in enumerate(found) if e.ino is not None},
    )


def _same_names(listing: Listing, scanned: Scanned) -> bool:
    """Whether `scanned` holds exactly the listing's files, each in the same subdir."""
    if sum(len(names) for _, names in scanned) != len(listing):
        return False
    for sub, names in scanned:
        mask = listing.subs.translate(_CUR_MASK if sub == "cur" else _NEW_MASK)
        if set(names) != set(compress(listing.names, mask)):
            return False
    return True


def take(
    root: str, uidl_import: UidlImport | None, chunk_size: int, *, measure: bool = True
) -> Listing:
    """The maildir's snapshot, from the listing cache when the maildir has not changed
    (popbox.store.maildir_listing), else listed. The maildrop lock must be held; cur/
    and new/ must exist. OSError propagates.

    Three ways, cheapest first: (1) the stored listing's state is the current one and it
    is trusted (the 2 s rule): reused, no directory is read; (2) the directories hold
    exactly the stored listing's names (and the imported-UIDL file is unchanged, under the
    same 2 s rule): one readdir per directory, the stored sizes, UIDLs and order are
    reused; (3) the full snapshot. After (2) and (3) the listing is stored with the state
    read before the directories were (so a change during the listing is seen next time).
    Without `measure`, a snapshot that would have to read a message file for its size
    raises `MustMeasure` instead, having written nothing.
    """
    state = maildir_listing.watch(root, uidl_import)
    stored = maildir_listing.load(root)
    if stored is None:
        scanned = _scan(root)
    else:
        old_state, old = stored
        if old_state.trusted and old_state.same_state(state):
            return old
        scanned = _scan(root)
        if (
            old_state.mode == state.mode
            and old_state.stats[8:] == state.stats[8:]  # the imported-UIDL file...
            and old_state.source_trusted  # ...as it was then, for sure
            and _same_names(old, scanned)
        ):
            if state.trusted or not old_state.same_state(state):
                maildir_listing.save(root, state, old)
            return old
    listing = _as_listing(_finish(root, _entries(scanned), uidl_import, chunk_size, measure))
    maildir_listing.save(root, state, listing)
    return listing


class EntryTable:
    """A snapshot's entries by index (``len`` and ``[index]``), each made from the
    listing when first asked for and kept, so that renames recorded on it (read, commit)
    stick. A session that reads few messages of a large maildrop makes few entries."""

    __slots__ = ("_listing", "_made")

    def __init__(self, listing: Listing) -> None:
        self._listing = listing
        self._made: dict[int, Entry] = {}

    def __len__(self) -> int:
        return len(self._listing)

    def where(self, index: int) -> tuple[str, str]:
        """(subdirectory, file name) where message `index` was last seen, without making
        its entry (a RETR needs no more: parsing the name cost as much as reading 10 KB)."""
        entry = self._made.get(index)
        if entry is not None:
            return entry.sub, entry.name
        listing = self._listing
        return ("cur" if listing.subs[index] == _C else "new"), listing.names[index]

    def __getitem__(self, index: int) -> Entry:
        index = range(len(self._listing))[index]  # IndexError, negative indexes
        entry = self._made.get(index)
        if entry is None:
            listing = self._listing
            name = listing.names[index]
            base, physical, _, seconds, usec = name_fields(name)
            entry = Entry(
                listing.sub(index),
                name,
                base,
                listing.sizes[index],
                physical,
                (seconds, usec, base, name),
                listing.uidls[index],
                listing.inos.get(index),
            )
            self._made[index] = entry
        return entry


def find_files(root: str, bases: set[str]) -> dict[str, list[tuple[str, str]]]:
    """Where the files with these bases are now: base -> [(subdir, name)]."""
    out: dict[str, list[tuple[str, str]]] = {}
    for sub in SUBDIRS:
        try:
            names = os.listdir(os.path.join(root, sub))
        except FileNotFoundError:
            continue
        for name in names:
            if not name.startswith("."):
                base = base_of(name)
                if base in bases:
                    out.setdefault(base, []).append((sub, name))
    return out


def pick(root: str, entry: Entry, candidates: list[tuple[str, str]]) -> bool:
    """Point `entry` at its file among `candidates` (same base); False if it is gone.

    When several files shared the base at snapshot time, the inode number tells which one
    is ours; otherwise any file with the base is the message (Maildir names are unique).
    """
    for sub, name in sorted(candidates):
        if entry.ino is not None:
            try:
                if os.stat(os.path.join(root, sub, name)).st_ino != entry.ino:
                    continue
            except FileNotFoundError:
                continue
        entry.sub, entry.name = sub, name
        return True
    return False
