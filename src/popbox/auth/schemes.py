"""Password schemes in Dovecot's `{SCHEME}data` syntax, so an existing Dovecot
passwd-file or SQL table verifies unchanged.

A stored value is `{NAME}data` or `{NAME.ENCODING}data` (ENCODING: B64/BASE64 or HEX,
for the digest and plaintext schemes); a value without a `{...}` prefix is read with the
configured default scheme, "CRYPT" unless told otherwise, which — like crypt(3) — tells
the algorithm from the hash itself (`$argon2id$`, `$2y$`, `$6$`, `$5$`, `$1$`, DES).

The hashing itself is done by well-kept libraries: argon2-cffi (ARGON2ID/ARGON2I, the
PHC string exactly as Dovecot writes it), bcrypt (BLF-CRYPT, written as `$2y$` like
Dovecot), libpass (the SHA-crypt/MD5-crypt/DES family) and hashlib/hmac (salted and
unsalted digests, SCRAM per RFC 5802 §3). The one exception is CRAM-MD5: Dovecot stores
the two MD5 states reached after hashing the HMAC pads (RFC 2104 §2, RFC 2195), and
hashlib does not expose an internal state, so the MD5 block function of RFC 1321 §3.4
is written out here for exactly that one block.

`verify` never raises: an unknown scheme, garbage data or a password the algorithm
refuses (NUL bytes, say) is simply False. Digests are compared with
`hmac.compare_digest`. `verify_async` runs `verify` on a small shared thread pool, so
CPU-heavy hashing never blocks the event loop and never takes more than a few cores.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import argon2
import bcrypt
from passlib.hash import des_crypt, md5_crypt, sha256_crypt, sha512_crypt

from popbox.auth.base import Secret
from popbox.proto import hmac_md5


@dataclass(frozen=True, slots=True)
class Cost:
    """Work factors used by `make`. The defaults are Dovecot's, or stronger."""

    argon2_time: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 1
    bcrypt_rounds: int = 12
    crypt_rounds: int | None = None  # SHA-crypt rounds; None: libpass's default
    scram_iterations: int = 4096  # RFC 7677 §4 minimum, Dovecot's default


DEFAULT_COST = Cost()
_BCRYPT_MAX = 72  # bcrypt reads only this many bytes of a password
_SCRAM_MAX_ITERATIONS = 10_000_000  # refuse absurd values in a stored hash


# --- stored value syntax ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Parsed:
    scheme: str  # upper case, without encoding suffix
    encoding: str | None  # "B64", "HEX" or None for the scheme's own default
    data: str


_ENCODINGS = {"B64": "B64", "BASE64": "B64", "HEX": "HEX"}
_SCHEME_NAME = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9]+)?")


def _split_name(name: str) -> tuple[str, str | None]:
    """`SHA512.HEX` → ("SHA512", "HEX"); raises ValueError for an unknown encoding."""
    scheme, dot, suffix = name.upper().partition(".")
    if not dot:
        return scheme, None
    if suffix not in _ENCODINGS:
        raise ValueError("unknown encoding")
    return scheme, _ENCODINGS[suffix]


def _parse(stored: str, default_scheme: str) -> _Parsed:
    if stored.startswith("{") and "}" in stored:
        name, data = stored[1:].split("}", 1)
    else:
        name, data = default_scheme, stored
    return _Parsed(*_split_name(name), data)


def _decode(data: str, encoding: str) -> bytes:
    if encoding == "HEX":
        return bytes.fromhex(data)
    return base64.b64decode(data, validate=True)


def _encode(raw: bytes, encoding: str) -> str:
    return raw.hex() if encoding == "HEX" else base64.b64encode(raw).decode("ascii")


def _utf8(data: str) -> bytes:
    return data.encode("utf-8", "surrogateescape")


# --- plaintext ---------------------------------------------------------------------------

_PLAIN = frozenset({"PLAIN", "CLEAR", "CLEARTEXT"})


def _plain_bytes(p: _Parsed) -> bytes:
    return _utf8(p.data) if p.encoding is None else _decode(p.data, p.encoding)


# --- digests: {SHA512}, {SSHA512}, ... ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Digest:
    algorithm: str
    salted: bool
    encoding: str  # default encoding of the scheme


_DIGESTS = {
    "SHA": _Digest("sha1", False, "B64"),
    "SHA1": _Digest("sha1", False, "B64"),
    "SSHA": _Digest("sha1", True, "B64"),
    "SHA256": _Digest("sha256", False, "B64"),
    "SSHA256": _Digest("sha256", True, "B64"),
    "SHA512": _Digest("sha512", False, "B64"),
    "SSHA512": _Digest("sha512", True, "B64"),
    "PLAIN-MD5": _Digest("md5", False, "HEX"),
    "LDAP-MD5": _Digest("md5", False, "B64"),
    "SMD5": _Digest("md5", True, "B64"),
}
_HEX = re.compile(r"[0-9a-fA-F]*")


def _digest_verify(d: _Digest, p: _Parsed, password: bytes) -> bool:
    size = hashlib.new(d.algorithm).digest_size
    encoding = p.encoding or d.encoding
    if p.encoding is None and not d.salted and len(p.data) == 2 * size and _HEX.fullmatch(p.data):
        encoding = "HEX"  # Dovecot accepts hex where base64 is the default
    raw = _decode(p.data, encoding)
    if len(raw) < size or (len(raw) > size and not d.salted):
        return False
    digest, salt = raw[:size], raw[size:]
    return hmac.compare_digest(hashlib.new(d.algorithm, password + salt).digest(), digest)


def _digest_make(d: _Digest, password: bytes, encoding: str | None) -> str:
    salt = os.urandom(8) if d.salted else b""
    return _encode(
        hashlib.new(d.algorithm, password + salt).digest() + salt, encoding or d.encoding
    )


# --- CRAM-MD5: Dovecot's HMAC-MD5 context -------------------------------------------------

# --- SCRAM (RFC 5802 §3) -----------------------------------------------------------------

_SCRAM = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}


def _scram_keys(
    algorithm: str, password: bytes, salt: bytes, iterations: int
) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac(algorithm, password, salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", algorithm)
    stored_key = hashlib.new(algorithm, client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", algorithm)
    return stored_key, server_key


def _scram_verify(algorithm: str, data: str, password: bytes) -> bool:
    iterations_text, salt_b64, stored_b64, server_b64 = data.split(",")
    iterations = int(iterations_text)
    if not 1 <= iterations <= _SCRAM_MAX_ITERATIONS:
        return False
    salt = _decode(salt_b64, "B64")
    stored_key, server_key = _scram_keys(algorithm, password, salt, iterations)
    return hmac.compare_digest(stored_key, _decode(stored_b64, "B64")) & hmac.compare_digest(
        server_key, _decode(server_b64, "B64")
    )


def _scram_make(algorithm: str, password: bytes, iterations: int) -> str:
    salt = os.urandom(16)
    stored_key, server_key = _scram_keys(algorithm, password, salt, iterations)
    parts = (str(iterations), *(_encode(x, "B64") for x in (salt, stored_key, server_key)))
    return ",".join(parts)


# --- the crypt family --------------------------------------------------------------------

_CRYPT = frozenset(
    {"CRYPT", "BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "MD5-CRYPT", "MD5", "DES-CRYPT"}
)
_ARGON2 = {"ARGON2ID": argon2.Type.ID, "ARGON2I": argon2.Type.I}
_DES = re.compile(r"[./0-9A-Za-z]{13}")


def _crypt_verify(data: str, password: bytes) -> bool:
    """Tell the algorithm from the hash itself, as crypt(3) does."""
    if data.startswith("$argon2"):
        return argon2.PasswordHasher().verify(data, password)
    if data[:4] in ("$2a$", "$2b$", "$2y$"):
        return bcrypt.checkpw(password[:_BCRYPT_MAX], data.encode("ascii"))
    for prefix, handler in (("$6$", sha512_crypt), ("$5$", sha256_crypt), ("$1$", md5_crypt)):
        if data.startswith(prefix):
            return bool(handler.verify(password, data))
    if _DES.fullmatch(data):
        return bool(des_crypt.verify(password, data))
    return False


def _crypt_make(scheme: str, password: bytes, cost: Cost) -> str:
    if scheme in _ARGON2:
        hasher = argon2.PasswordHasher(
            time_cost=cost.argon2_time,
            memory_cost=cost.argon2_memory_kib,
            parallelism=cost.argon2_parallelism,
            hash_len=32,
            salt_len=16,
            type=_ARGON2[scheme],
        )
        return hasher.hash(password)
    if scheme in ("BLF-CRYPT", "CRYPT"):
        if len(password) > _BCRYPT_MAX or b"\0" in password:
            raise ValueError("BLF-CRYPT takes at most 72 bytes and no NUL byte")
        made = bcrypt.hashpw(password, bcrypt.gensalt(cost.bcrypt_rounds)).decode("ascii")
        return "$2y$" + made[4:]  # $2b$ and $2y$ are the same algorithm; Dovecot writes $2y$
    if scheme in ("SHA512-CRYPT", "SHA256-CRYPT"):
        handler = sha512_crypt if scheme == "SHA512-CRYPT" else sha256_crypt
        if cost.crypt_rounds is not None:
            handler = handler.using(rounds=cost.crypt_rounds)
        return str(handler.hash(password))
    if scheme in ("MD5-CRYPT", "MD5"):
        return str(md5_crypt.hash(password))
    raise ValueError(f"cannot make {scheme} hashes")


# --- public API --------------------------------------------------------------------------

SCHEMES: tuple[str, ...] = (
    "ARGON2ID",
    "ARGON2I",
    "BLF-CRYPT",
    "CRYPT",
    "SHA512-CRYPT",
    "SHA256-CRYPT",
    "MD5-CRYPT",
    "MD5",
    "SSHA512",
    "SSHA256",
    "SSHA",
    "SMD5",
    "SHA512",
    "SHA256",
    "SHA1",
    "SHA",
    "PLAIN-MD5",
    "LDAP-MD5",
    "PLAIN",
    "CLEAR",
    "CLEARTEXT",
    "CRAM-MD5",
    "HMAC-MD5",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1",
)
"""The schemes `make` can write. `verify` also reads DES-CRYPT (never written: it uses
only the first 8 bytes of a password)."""


def _verify(p: _Parsed, password: bytes) -> bool:
    if p.scheme in _PLAIN:
        return hmac.compare_digest(_plain_bytes(p), password)
    if p.scheme in _ARGON2 or p.scheme in _CRYPT:
        return _crypt_verify(p.data, password)
    if p.scheme in _DIGESTS:
        return _digest_verify(_DIGESTS[p.scheme], p, password)
    if p.scheme in ("CRAM-MD5", "HMAC-MD5"):
        if len(p.data) != 64:
            return False
        return hmac.compare_digest(hmac_md5.context(password), bytes.fromhex(p.data))
    if p.scheme in _SCRAM:
        return _scram_verify(_SCRAM[p.scheme], p.data, password)
    return False


def verify(stored: str, password: bytes, *, default_scheme: str = "CRYPT") -> bool:
    """True if `password` matches `stored`. Never raises; anything unreadable is False."""
    try:
        return _verify(_parse(stored, default_scheme), password)
    except Exception:
        return False


def _scheme_to_make(scheme: str) -> tuple[str, str | None]:
    error = ValueError(f"unknown password scheme {scheme!r}")
    if not _SCHEME_NAME.fullmatch(scheme):
        raise error
    try:
        base, encoding = _split_name(scheme)
    except ValueError:
        raise error from None
    if base not in SCHEMES or (encoding and base not in _DIGESTS and base not in _PLAIN):
        raise error
    return base, encoding


def make(password: bytes, scheme: str = "ARGON2ID", *, cost: Cost = DEFAULT_COST) -> str:
    """Hash `password` as `{SCHEME}data`. Raises ValueError for an unknown scheme or a
    password the scheme cannot take (BLF-CRYPT: over 72 bytes or a NUL byte)."""
    base, encoding = _scheme_to_make(scheme)
    if base in _PLAIN:
        data = (
            password.decode("utf-8", "surrogateescape")
            if encoding is None
            else _encode(password, encoding)
        )
    elif base in _DIGESTS:
        data = _digest_make(_DIGESTS[base], password, encoding)
    elif base in ("CRAM-MD5", "HMAC-MD5"):
        data = hmac_md5.context(password).hex()
    elif base in _SCRAM:
        data = _scram_make(_SCRAM[base], password, cost.scram_iterations)
    else:
        data = _crypt_make(base, password, cost)
    return "{" + scheme.upper() + "}" + data


def scheme_of(stored: str, *, default_scheme: str = "CRYPT") -> str | None:
    """The name of the scheme `stored` uses, if `verify` knows it; else None."""
    try:
        name = _parse(stored, default_scheme).scheme
    except ValueError:
        return None
    return name if name in SCHEMES or name == "DES-CRYPT" else None


def is_fast(stored: str, *, default_scheme: str = "CRYPT") -> bool:
    """True for schemes checked with at most one hash (plaintext, digests, CRAM-MD5):
    cheaper on the event loop than on the hashing pool. Unreadable: False."""
    try:
        name = _parse(stored, default_scheme).scheme
    except ValueError:
        return False
    return name in _PLAIN or name in _DIGESTS or name in ("CRAM-MD5", "HMAC-MD5")


def plaintext(stored: str, *, default_scheme: str = "CRYPT") -> Secret | None:
    """The password itself when the scheme keeps it (PLAIN, CLEAR, CLEARTEXT), else None."""
    try:
        p = _parse(stored, default_scheme)
        return Secret(_plain_bytes(p)) if p.scheme in _PLAIN else None
    except (ValueError, binascii.Error):
        return None


_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="popbox-verify")


async def verify_async(stored: str, password: bytes, *, default_scheme: str = "CRYPT") -> bool:
    """`verify` on the shared hashing pool (at most 4 threads), off the event loop."""
    call: Callable[[], bool] = functools.partial(
        verify, stored, password, default_scheme=default_scheme
    )
    return await asyncio.get_running_loop().run_in_executor(_POOL, call)
