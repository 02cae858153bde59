"""Password verification for every password database, with the verified-login cache.

`Verifier.check(stored, password)` is True when `password` matches the stored hash.

- A user without a stored hash (unknown, or no password) costs one verification against
  a fixed Argon2id hash of a random password, so the time taken does not tell.
- Fast schemes (plaintext, one salted digest, CRAM-MD5) are checked on the event loop:
  a hop to the hashing pool costs more than the check itself.
- Slow schemes (the crypt family, Argon2, PBKDF2 for SCRAM) run on the shared hashing
  pool. After one of them succeeds, an HMAC-SHA256 of (stored hash, password) under a
  random per-process key is remembered for `auth.cache_ttl` seconds, as Dovecot's auth
  cache does: the same password for the same stored hash within that time is accepted
  without running the hash again. Wrong passwords are never remembered and always cost
  the full verification, so a failure takes as long whether the user is cached or not.
  A changed password is a changed stored hash, which no old entry matches. At most
  `size` entries are kept; the least recently used go first.
"""

from __future__ import annotations

import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable

from popbox.auth import schemes
from popbox.auth.base import Secret

# The hash of a random password nobody knows, with Dovecot's default Argon2id cost.
DUMMY_HASH = (
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$M5rx4mFmycVeRCm48Q+vmg"
    "$IBLXZwkYFIV/V3bUiwBH+kSVEgLNhArTZLHW9OjMemo"
)


class Verifier:
    __slots__ = ("_clock", "_default_scheme", "_entries", "_key", "_size", "_ttl")

    def __init__(
        self, *, default_scheme: str = "CRYPT", cache_ttl: float = 0.0, size: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._default_scheme = default_scheme
        self._ttl = cache_ttl
        self._size = size
        self._clock = clock
        self._key = os.urandom(32)
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    async def check(self, stored: str | None, password: Secret) -> bool:
        if not stored:
            await schemes.verify_async(DUMMY_HASH, password.value)
            return False
        if schemes.is_fast(stored, default_scheme=self._default_scheme):
            return schemes.verify(stored, password.value, default_scheme=self._default_scheme)
        digest = self._digest(stored, password.value) if self._ttl > 0 else b""
        if digest and self._cached(stored, digest):
            return True
        ok = await schemes.verify_async(
            stored, password.value, default_scheme=self._default_scheme
        )
        if ok and digest:
            self._remember(stored, digest)
        return ok

    def _digest(self, stored: str, password: bytes) -> bytes:
        message = stored.encode("utf-8", "surrogateescape") + b"\0" + password
        return hmac.digest(self._key, message, "sha256")

    def _cached(self, stored: str, digest: bytes) -> bool:
        found = self._entries.get(stored)
        if found is None:
            return False
        remembered, expires = found
        if expires <= self._clock():
            del self._entries[stored]
            return False
        if not hmac.compare_digest(remembered, digest):
            return False
        self._entries.move_to_end(stored)
        return True

    def _remember(self, stored: str, digest: bytes) -> None:
        self._entries[stored] = (digest, self._clock() + self._ttl)
        self._entries.move_to_end(stored)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
