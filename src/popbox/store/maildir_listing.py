"""The whole-listing cache: ``popbox-listing`` in the maildir root.

A later login to an unchanged maildrop should cost about what Dovecot's index costs it:
no readdir(3) of 100,000 names, no parsing, no sorting. So popbox keeps the finished
snapshot - for each message, in listing order: its subdirectory, file name, wire size,
UIDL, and the inode number when the snapshot needed one (files sharing a base) - together
with the state of what it was derived from, and reuses it while that state is unchanged.
It is derived from nothing else: message files never change content (only their names),
sizes come from the names, the size cache or the files, and UIDLs from the names or from
the previous server's file (popbox.store.maildir_scan).

When it is reused: it was written by this version (VERSION changes whenever the listing
rules - order, sizes, UIDLs - change), for the same ``uidl_import`` setting, and the
``cur/`` and ``new/`` directories and the imported-UIDL file (``dovecot-uidlist`` or
``courierpop3dsizelist``, when ``uidl_import`` is set; else nothing) have now exactly the
inode number, size, st_mtime_ns and st_ctime_ns they had when the listing was taken.
Adding, removing or renaming a file changes its directory's mtime and ctime; ctime also
catches a directory whose mtime was put back (utime(2), ``rsync -a``), since no process
can set it.

The timestamp rule: the listing is only trusted when every recorded mtime was at least
TRUST_MARGIN_NS (2 s) older than the moment the listing was started (the clock is read
before the directories are stat'ed and read). A directory's timestamps have a granularity
(a kernel tick on ext4/xfs/tmpfs, 1 s on some file systems and NFS servers, 2 s on FAT),
so a change made just after the listing was taken can leave the mtime it had: a listing
taken in the same tick as the directory's last change could then miss a message forever.
Once the mtime is 2 s older than the start of the listing, any later change stamps a
newer mtime. Dovecot uses the same rule for its maildir sync (MAILDIR_SYNC_SECS, 1 s,
"the maximum clock drift between all computers accessing the maildir", in Dovecot's
maildir-sync.c); 2 s also covers FAT. ASSUMPTIONS: the file server's clock and this
host's agree to within that margin and do not step backwards; on NFS, a directory's
attributes cached by the client (``actimeo``) can hide a change from stat(2) for as long
as they are cached, exactly as for Dovecot. A listing that is not trusted is still
written: the next login then reads the directories (readdir only) and, when they hold
exactly the same names, reuses the stored sizes and UIDLs instead of deriving them again
(popbox.store.maildir_scan.take).

Robustness: the file is a cache. A missing, truncated, foreign or corrupt file, or one of
another version, is ignored and rebuilt, never trusted, never fatal. It is written
under the maildrop lock, so no one reads it meanwhile: over the old one in place (a
regular file of one link owned by popbox's process: popbox.fsutil.overwrite), or else
replaced atomically (temporary file in the maildir root, rename over, orphans of a
writer that died removed). It is not fsync'ed: after a crash it may be torn or empty,
and then fails its digest; an older intact one records an older state of the
directories and is not reused. Even a file with a valid digest is checked: every name is
a plain file name (no ``/``, not empty, not starting with a dot), so a listing written by
someone else can only point into ``cur/`` and ``new/``, and every UIDL is valid (RFC 1939
§7) and unique.

Format (little-endian), version 2; decoded with a few C-level calls whatever the count::

    magic   b"popbox-listing\\n"                                            15 bytes
    header  version u16, uidl_import u8 (0 none, 1 dovecot, 2 courier), pad u8,
            count u32, listed_at i64 (ns), 3 x (inode, size, mtime_ns, ctime_ns) i64 of
            cur/, new/ and the imported-UIDL file (zeros: none), inode count u32,
            names length u64, UIDLs length u64
    digest  SHA-256 of the header and the body, its first 16 bytes             16 bytes
    body    count x sub u8 (b"c" or b"n"), count x wire size i64,
            inode count x (message index u64), inode count x (inode u64),
            the names (os.fsencode) separated by NUL, the UIDLs (ASCII) separated by NUL
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import sys
import time
from array import array
from dataclasses import dataclass
from itertools import pairwise
from typing import cast

from popbox.fsutil import overwrite, read_regular, write_atomic
from popbox.proto.types import Uidl
from popbox.store.maildir_cache import remove_orphans
from popbox.store.maildir_import import COURIER_SIZELIST, DOVECOT_UIDLIST, UidlImport

LISTING_NAME = "popbox-listing"
MAGIC = b"popbox-listing\n"
VERSION = 2  # 1: the digest was BLAKE2b-128 (slower than SHA-256 where the CPU has SHA)
TRUST_MARGIN_NS = 2_000_000_000
_MODES: dict[UidlImport | None, int] = {None: 0, "dovecot": 1, "courier": 2}
_IMPORT_FILES = {1: DOVECOT_UIDLIST, 2: COURIER_SIZELIST}
_HEADER = struct.Struct("<HBxIq12qIQQ")
_DIGEST_SIZE = 16
_START = len(MAGIC) + _HEADER.size + _DIGEST_SIZE
_MAX_BYTES = 1 << 31  # anything larger is not ours
_SWAP = sys.byteorder != "little"
_UIDL_BYTES = bytes(range(0x21, 0x7F))  # RFC 1939 §7
_SUB_BYTES = b"cn"
MAX_UIDL = 70

log = logging.getLogger(__name__)


class Listing:
    """A finished snapshot as parallel lists, in listing order (index 0 = message 1).

    `names` may be given as one NUL-separated string: it is split when first needed
    (reading or committing a message), so an open that reads nothing builds no name.
    """

    __slots__ = ("_names", "inos", "sizes", "subs", "uidls")

    def __init__(
        self,
        subs: bytes,  # one byte per message: b"c" for cur/, b"n" for new/
        names: list[str] | str,
        sizes: list[int],  # wire sizes
        uidls: list[Uidl],
        inos: dict[int, int],  # message index -> inode number, where the snapshot knew it
    ) -> None:
        self.subs = subs
        self._names = names
        self.sizes = sizes
        self.uidls = uidls
        self.inos = inos

    def __len__(self) -> int:
        return len(self.subs)

    @property
    def names(self) -> list[str]:
        names = self._names
        if isinstance(names, str):
            names = self._names = names.split("\0") if self.subs else []
        return names

    def joined_names(self) -> str:
        names = self._names
        return names if isinstance(names, str) else "\0".join(names)

    def sub(self, index: int) -> str:
        return "cur" if self.subs[index] == _SUB_BYTES[0] else "new"


@dataclass(frozen=True, slots=True)
class Watch:
    """What a listing is derived from, as stat(2) saw it just before the listing."""

    mode: int  # uidl_import
    listed_at: int  # time.time_ns(), read before the stat calls
    stats: tuple[int, ...]  # (inode, size, mtime_ns, ctime_ns) x (cur/, new/, import file)

    @property
    def trusted(self) -> bool:
        """Every mtime at least TRUST_MARGIN_NS older than the start of the listing."""
        return all(self.listed_at - mtime >= TRUST_MARGIN_NS for mtime in self.stats[2::4])

    @property
    def source_trusted(self) -> bool:
        """The 2 s rule for the imported-UIDL file alone (which a readdir does not check)."""
        return self.listed_at - self.stats[10] >= TRUST_MARGIN_NS

    def same_state(self, other: Watch) -> bool:
        return self.mode == other.mode and self.stats == other.stats


def _stat(path: str, *, missing_ok: bool) -> tuple[int, int, int, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not missing_ok:
            raise
        return (0, 0, 0, 0)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def watch(root: str, uidl_import: UidlImport | None) -> Watch:
    """The state the listing about to be taken derives from. Call it before reading
    anything; OSError (other than a missing import file) propagates."""
    mode = _MODES[uidl_import]
    listed_at = time.time_ns()
    cur = _stat(os.path.join(root, "cur"), missing_ok=False)
    new = _stat(os.path.join(root, "new"), missing_ok=False)
    source = (0, 0, 0, 0)
    if mode:
        source = _stat(os.path.join(root, _IMPORT_FILES[mode]), missing_ok=True)
    return Watch(mode, listed_at, cur + new + source)


def _packed(typecode: str, values: list[int]) -> bytes:
    packed = array(typecode, values)
    if _SWAP:  # pragma: no cover - big-endian hosts
        packed.byteswap()
    return packed.tobytes()


def _unpacked(typecode: str, raw: memoryview) -> list[int]:
    values = array(typecode)
    values.frombytes(raw)
    if _SWAP:  # pragma: no cover - big-endian hosts
        values.byteswap()
    return values.tolist()


def encode(state: Watch, listing: Listing) -> bytes:
    count = len(listing)
    ino_at = sorted(listing.inos)
    names = os.fsencode(listing.joined_names())
    uidls = "\0".join(listing.uidls).encode("ascii")
    body = b"".join(
        (
            listing.subs,
            _packed("q", listing.sizes),
            _packed("Q", ino_at),
            _packed("Q", [listing.inos[i] for i in ino_at]),
            names,
            uidls,
        )
    )
    header = _HEADER.pack(
        VERSION,
        state.mode,
        count,
        state.listed_at,
        *state.stats,
        len(ino_at),
        len(names),
        len(uidls),
    )
    digest = hashlib.sha256(header)
    digest.update(body)
    return MAGIC + header + digest.digest()[:_DIGEST_SIZE] + body


def decode(data: bytes) -> tuple[Watch, Listing] | None:
    """The stored state and listing, or None unless `data` is an intact, sane listing of
    this version."""
    if len(data) < _START or not data.startswith(MAGIC):
        return None
    view = memoryview(data)
    header = view[len(MAGIC) : len(MAGIC) + _HEADER.size]
    version, mode, count, listed_at, *stats = _HEADER.unpack(header)
    n_inos, names_len, uidls_len = stats[12:]
    del stats[12:]
    at = [count, 8 * count, 8 * n_inos, 8 * n_inos, names_len, uidls_len]
    if version != VERSION or (mode != 0 and mode not in _IMPORT_FILES):
        return None
    if sum(at) != len(data) - _START:
        return None
    digest = hashlib.sha256(header)
    digest.update(view[_START:])
    if digest.digest()[:_DIGEST_SIZE] != view[_START - _DIGEST_SIZE : _START]:
        return None
    bounds = [_START]
    for length in at:
        bounds.append(bounds[-1] + length)
    subs, sizes_raw, ino_at_raw, inos_raw, names_raw, uidls_raw = (
        view[a:b] for a, b in pairwise(bounds)
    )
    listing = _listing(count, bytes(subs), sizes_raw, ino_at_raw, inos_raw, names_raw, uidls_raw)
    if listing is None:
        return None
    return Watch(mode, listed_at, tuple(stats)), listing


def _listing(
    count: int,
    subs: bytes,
    sizes_raw: memoryview,
    ino_at_raw: memoryview,
    inos_raw: memoryview,
    names_raw: memoryview,
    uidls_raw: memoryview,
) -> Listing | None:
    if count == 0:
        if names_raw or uidls_raw or ino_at_raw:
            return None
        return Listing(b"", [], [], [], {})
    if subs.translate(None, _SUB_BYTES):
        return None
    sizes = _unpacked("q", sizes_raw)
    if min(sizes) < 0:
        return None
    ino_at = _unpacked("Q", ino_at_raw)
    inos = dict(zip(ino_at, _unpacked("Q", inos_raw), strict=True))
    if len(inos) != len(ino_at) or (ino_at and max(ino_at) >= count):
        return None
    text = os.fsdecode(bytes(names_raw))  # split when needed (Listing.names)
    if text.count("\0") != count - 1 or "/" in text or "\0." in text or text[:1] == ".":
        return None
    if "\0\0" in text or text[:1] == "\0" or text[-1:] in ("\0", ""):  # an empty name
        return None
    uidl_bytes = bytes(uidls_raw)
    if uidl_bytes.translate(None, _UIDL_BYTES) != b"\0" * (count - 1):
        return None
    if b"\0\0" in uidl_bytes or uidl_bytes[:1] == b"\0" or uidl_bytes[-1:] in (b"\0", b""):
        return None  # an empty UIDL
    uidls = cast(list[Uidl], uidl_bytes.decode("ascii").split("\0"))
    if max(map(len, uidls)) > MAX_UIDL or len(set(uidls)) != count:
        return None
    return Listing(subs, text, sizes, uidls, inos)


def load(root: str) -> tuple[Watch, Listing] | None:
    """The maildir's stored listing and the state it derives from, if it has an intact
    one (a corrupt one is logged and ignored)."""
    path = os.path.join(root, LISTING_NAME)
    try:
        data = read_regular(path, _MAX_BYTES + 1)  # never through a planted symlink
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("listing cache %s unreadable, ignored: %s", path, exc)
        return None
    stored = decode(data) if len(data) <= _MAX_BYTES else None
    if stored is None:
        log.warning("listing cache %s is corrupt or foreign; rebuilding it", path)
    return stored


def save(root: str, state: Watch, listing: Listing) -> None:
    """Replace the stored listing: in place, else atomically (see the module's notes).
    Failure only costs speed: logged, not raised."""
    path = os.path.join(root, LISTING_NAME)
    try:
        # No fsync: a file torn by a crash fails its digest, and an older intact one names
        # older directory stamps, so it is not trusted (see the module's notes).
        data = encode(state, listing)
        if not overwrite(path, data):
            remove_orphans(root, LISTING_NAME)
            write_atomic(path, data, fsync=False)
    except (OSError, ValueError, OverflowError) as exc:  # OverflowError: a ,W= over 2**63
        log.warning("listing cache %s not written: %s", path, exc)
