"""The per-maildir size cache: ``popbox-sizes`` in the maildir root.

POP3 sizes are CRLF sizes (RFC 1939 §11 and popbox.proto.wire); a file written with LF
line ends must be read once to know its size. Names with ``,W=`` carry it (Dovecot);
for the others the size is read once and remembered here, so that a later login lists a
large maildrop without opening any message file (the reason Courier keeps its
``courierpop3dsizelist`` and Dovecot its index).

Entries are keyed by the message's base name and its physical size (from ``,S=`` or
stat(2)); a file that changed length misses and is measured again. The cache is only a
hint: a file that is missing, truncated, foreign or corrupt is ignored and rebuilt, never
trusted and never fatal. It is replaced atomically (write a temporary file in the maildir
root, fsync, rename over) and only when its content changed. The maildrop lock is held
while it is written, so there is one writer at a time, and temporary files it finds are
orphans of a writer that died: they are removed.

Format (little-endian)::

    magic  b"popbox-sizes\\n"            13 bytes
    header version u16, count u32, body length u64, BLAKE2b-128 digest of the body
    body   count x (name length u16, physical u64, wire u64, name bytes)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import struct

CACHE_NAME = "popbox-sizes"
MAGIC = b"popbox-sizes\n"
VERSION = 1
_HEADER = struct.Struct("<HIQ16s")
_ENTRY = struct.Struct("<HQQ")
_MAX_BYTES = 1 << 30  # anything larger is not ours

log = logging.getLogger(__name__)

SizeKey = tuple[str, int]  # (base, physical size)


def _digest(body: bytes | memoryview) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


def encode(sizes: dict[SizeKey, int]) -> bytes:
    parts: list[bytes] = []
    for (base, physical), wire in sorted(sizes.items()):
        raw = os.fsencode(base)
        parts.append(_ENTRY.pack(len(raw), physical, wire))
        parts.append(raw)
    body = b"".join(parts)
    return MAGIC + _HEADER.pack(VERSION, len(sizes), len(body), _digest(body)) + body


def decode(data: bytes) -> dict[SizeKey, int] | None:
    """The cache's entries, or None when `data` is not an intact cache of this version."""
    start = len(MAGIC) + _HEADER.size
    if len(data) < start or not data.startswith(MAGIC):
        return None
    version, count, body_len, digest = _HEADER.unpack_from(data, len(MAGIC))
    body = memoryview(data)[start:]
    if version != VERSION or body_len != len(body) or _digest(body) != digest:
        return None
    sizes: dict[SizeKey, int] = {}
    pos = 0
    try:
        for _ in range(count):
            name_len, physical, wire = _ENTRY.unpack_from(body, pos)
            pos += _ENTRY.size
            if pos + name_len > len(body):
                return None
            sizes[(os.fsdecode(bytes(body[pos : pos + name_len])), physical)] = wire
            pos += name_len
    except struct.error:
        return None
    return sizes if pos == len(body) else None


def load(root: str) -> dict[SizeKey, int]:
    """The cached sizes of the maildir at `root`; empty if there is no usable cache."""
    path = os.path.join(root, CACHE_NAME)
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warning("size cache %s unreadable, ignored: %s", path, exc)
        return {}
    sizes = decode(data) if len(data) <= _MAX_BYTES else None
    if sizes is None:
        log.warning("size cache %s is corrupt or foreign; rebuilding it", path)
        return {}
    return sizes


def save(root: str, sizes: dict[SizeKey, int]) -> None:
    """Replace the cache atomically. Failure only costs speed next time: logged, not raised."""
    path = os.path.join(root, CACHE_NAME)
    tmp = os.path.join(root, f"{CACHE_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    _remove_orphans(root)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(encode(sizes))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
    except OSError as exc:
        log.warning("size cache %s not written: %s", path, exc)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _remove_orphans(root: str) -> None:
    """Temporary files left by a writer that died; the lock holder is the only writer."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        if name.startswith(CACHE_NAME + ".") and name.endswith(".tmp"):
            _unlink_quietly(os.path.join(root, name))
