"""Taking a maildir's snapshot, and finding a message's file again later.

The listing (cr.yp.to/proto/maildir.html): every file in ``cur/`` and ``new/`` whose name
does not start with a dot is a message; ``tmp/``, subdirectories (Maildir++ folders
``.Foo`` live in the root anyway) and popbox's own files in the root are not. ``cur/`` is
read before ``new/``: an agent moving a message new->cur while we list can then make us
miss it for one session, never list it twice. readdir(2) gives no guarantee while a
directory changes, so a base seen twice is stat'ed and one file seen under two names (a
rename during the listing) is kept once.

Sizes: ``,W=`` in the name, else the size cache (popbox.store.maildir_cache) keyed by
base and physical size (``,S=``, else one stat(2)), else the file is read once, streaming.

Order: by delivery time, then microseconds, then base (popbox.store.maildir_names), so
message numbers are oldest first and do not change when flags do.

UIDLs: imported from the previous server when configured (popbox.store.maildir_import),
else the base. Files sharing a base (copies) keep unique, stable UIDLs: the one with the
lowest inode number keeps the plain UIDL, the others get ``-<inode hex>`` appended (or a
hash when that would be too long); inode numbers survive renames, so flag changes and
new->cur moves never change them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from popbox.proto.types import Uidl, is_valid_uidl
from popbox.proto.wire import SizeCounter
from popbox.store import maildir_cache
from popbox.store.maildir_import import UidlImport, load_imported_uidls
from popbox.store.maildir_names import base_of, hashed_uidl, parse_name, uidl_for_base

SUBDIRS = ("cur", "new")
_NO_UIDL = Uidl("")  # until _assign_uidls


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
    counter = SizeCounter()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            counter.feed(chunk)
    return counter.finish()


def _list(root: str) -> list[Entry]:
    found: list[Entry] = []
    add = found.append
    for sub in SUBDIRS:
        with os.scandir(os.path.join(root, sub)) as it:
            for dirent in it:
                name = dirent.name
                if name.startswith(".") or dirent.is_dir():
                    continue
                base, physical, wire, seconds, usec = parse_name(name)
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


def _sizes(root: str, found: list[Entry], chunk_size: int) -> list[Entry]:
    cached = maildir_cache.load(root)
    fresh: dict[maildir_cache.SizeKey, int] = {}
    kept: list[Entry] = []
    for e in found:
        if e.size < 0:
            try:
                physical = e.physical
                if physical is None:
                    physical = os.stat(e.path(root)).st_size
                key = (e.base, physical)
                size = cached.get(key)
                if size is None:
                    size = measure(e.path(root), chunk_size)
            except FileNotFoundError:  # renamed or removed meanwhile: next session
                continue
            fresh[key] = e.size = size
        kept.append(e)
    if fresh != cached:
        maildir_cache.save(root, fresh)
    return kept


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


def snapshot(root: str, uidl_import: UidlImport | None, chunk_size: int) -> list[Entry]:
    """List the maildir at `root` (whose cur/ and new/ exist). OSError propagates."""
    found = _drop_double_listings(root, _list(root))
    found = _sizes(root, found, chunk_size)
    found.sort(key=lambda e: e.key)
    _assign_uidls(root, found, uidl_import)
    return found


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
