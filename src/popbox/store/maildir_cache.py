"""The per-maildir size cache: ``popbox-sizes`` in the maildir root.

POP3 sizes are CRLF sizes (RFC 1939 §11 and popbox.proto.wire); a file written with LF
line ends must be read once to know its size. Names with ``,W=`` carry it (Dovecot) and
are never cached; for the others the size is read once and remembered here, so that a
later listing of a large maildrop opens no message file (the reason Courier keeps its
``courierpop3dsizelist`` and Dovecot its index). The whole-listing cache
(popbox.store.maildir_listing) makes most logins skip even this; this cache serves the
listings that have to be made again because a directory changed.

Keyed by the message's base name alone, with no stat(2) per message: a Maildir message
file is never rewritten, only renamed (flags, ``new/`` -> ``cur/``), and its unique part
is never reused for another message (cr.yp.to/proto/maildir.html), so the base names the
same content for the message's whole life. Each entry also keeps the physical size the
file had when it was measured; a name whose ``,S=`` disagrees with it misses and is
measured again (no cost: the name is already parsed). Files that share a base (a copy
restored from a backup next to the original) are told apart by inode number: their key
is ``<base>/<inode hex>`` (``/`` never occurs in a file name, so no base collides).
Consequence, by design: a file without ``,S=`` whose content is rewritten in place under
the same name keeps its cached size; nothing that follows the Maildir protocol does that.

The cache is only a hint about sizes: a file that is missing, truncated, foreign or
corrupt is ignored and rebuilt, never trusted and never fatal. It is replaced atomically
(popbox.fsutil.write_atomic: a temporary file in the maildir root renamed over it), not
fsynced (a torn file fails its digest), and only when it gained or changed entries,
or holds more sizes of messages gone than of messages there (and over
popbox.store.maildir_scan.STALE_SIZES): a deletion alone does not rewrite it. The
maildrop lock is held while it is written, so there is one writer at a time, and
temporary files it finds are orphans of a writer that died: they are removed.

Format (little-endian), version 2::

    magic  b"popbox-sizes\\n"            13 bytes
    header version u16, count u32, body length u64, BLAKE2b-128 digest of the body
    body   count x physical u64, count x wire u64, then the count keys, encoded with
           os.fsencode and separated by NUL bytes (one split decodes them all)

Version 1 (keyed by base and physical size; body: count x (name length u16, physical
u64, wire u64, name bytes)) is still read, so that no maildir has to be measured again
after an upgrade, and is replaced by version 2 at its first use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import sys
from array import array

from popbox.fsutil import read_regular, unlink_quietly, write_atomic

CACHE_NAME = "popbox-sizes"
MAGIC = b"popbox-sizes\n"
VERSION = 2
_HEADER = struct.Struct("<HIQ16s")
_V1_ENTRY = struct.Struct("<HQQ")
_MAX_BYTES = 1 << 30  # anything larger is not ours
_SWAP = sys.byteorder != "little"

log = logging.getLogger(__name__)

Sizes = dict[str, tuple[int, int]]  # key (base, or base/inode hex) -> (physical, wire)


def _digest(body: bytes | memoryview) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


def _packed(values: list[int]) -> bytes:
    packed = array("Q", values)
    if _SWAP:  # pragma: no cover - big-endian hosts
        packed.byteswap()
    return packed.tobytes()


def _unpacked(raw: bytes | memoryview) -> list[int]:
    values = array("Q")
    values.frombytes(raw)
    if _SWAP:  # pragma: no cover - big-endian hosts
        values.byteswap()
    return values.tolist()


def encode(sizes: Sizes) -> bytes:
    keys = sorted(sizes)
    values = [sizes[key] for key in keys]
    body = b"".join(
        (
            _packed([physical for physical, _ in values]),
            _packed([wire for _, wire in values]),
            os.fsencode("\0".join(keys)),
        )
    )
    return MAGIC + _HEADER.pack(VERSION, len(keys), len(body), _digest(body)) + body


def decode(data: bytes) -> Sizes | None:
    """The cache's entries, or None when `data` is not an intact cache of this version
    (or of version 1)."""
    return _decode(data)[0]


def _decode(data: bytes) -> tuple[Sizes | None, int]:
    start = len(MAGIC) + _HEADER.size
    if len(data) < start or not data.startswith(MAGIC):
        return None, 0
    version, count, body_len, digest = _HEADER.unpack_from(data, len(MAGIC))
    body = memoryview(data)[start:]
    if version not in (1, VERSION) or body_len != len(body) or _digest(body) != digest:
        return None, version
    if version == 1:
        return _decode_v1(body, count), version
    return _decode_v2(body, count), version


def _decode_v1(body: memoryview, count: int) -> Sizes | None:
    sizes: Sizes = {}
    pos = 0
    try:
        for _ in range(count):
            name_len, physical, wire = _V1_ENTRY.unpack_from(body, pos)
            pos += _V1_ENTRY.size
            if pos + name_len > len(body):
                return None
            sizes[os.fsdecode(bytes(body[pos : pos + name_len]))] = (physical, wire)
            pos += name_len
    except struct.error:
        return None
    return sizes if pos == len(body) else None


def _decode_v2(body: memoryview, count: int) -> Sizes | None:
    keys_at = 16 * count
    if keys_at > len(body) or (count == 0 and len(body) != 0):
        return None
    if count == 0:
        return {}
    keys = os.fsdecode(bytes(body[keys_at:])).split("\0")
    if len(keys) != count:
        return None
    physical = _unpacked(body[: 8 * count])
    wire = _unpacked(body[8 * count : keys_at])
    sizes = dict(zip(keys, zip(physical, wire, strict=True), strict=True))
    return sizes if len(sizes) == count else None  # a key twice: not written by us


def load(root: str) -> tuple[Sizes, bool]:
    """The cached sizes of the maildir at `root` (empty if there is no usable cache), and
    whether the file is current (of this version: else it should be saved again)."""
    path = os.path.join(root, CACHE_NAME)
    try:
        data = read_regular(path, _MAX_BYTES + 1)  # never through a planted symlink
    except FileNotFoundError:
        return {}, True
    except OSError as exc:
        log.warning("size cache %s unreadable, ignored: %s", path, exc)
        return {}, True
    sizes, version = _decode(data) if len(data) <= _MAX_BYTES else (None, 0)
    if sizes is None:
        log.warning("size cache %s is corrupt or foreign; rebuilding it", path)
        return {}, True
    return sizes, version == VERSION


def save(root: str, sizes: Sizes) -> None:
    """Replace the cache atomically. Failure only costs speed next time: logged, not raised."""
    path = os.path.join(root, CACHE_NAME)
    remove_orphans(root, CACHE_NAME)
    try:
        # No fsync: after a crash a torn or empty file fails its digest and is rebuilt,
        # and an older intact one is still true (a base name's content never changes).
        write_atomic(path, encode(sizes), fsync=False)
    except OSError as exc:
        log.warning("size cache %s not written: %s", path, exc)


def remove_orphans(root: str, cache_name: str) -> None:
    """Temporary files of `cache_name` left by a writer that died; the lock holder is the
    only writer, so every one found is an orphan."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        if name.startswith(cache_name + ".") and name.endswith(".tmp"):
            unlink_quietly(os.path.join(root, name))
