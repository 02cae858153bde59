"""Stored credentials for challenge-response SASL, shared by every password database.

`PassDB.credentials(user, scheme)` answers with what a mechanism needs: for CRAM-MD5 the
HMAC-MD5 context (Dovecot's `{CRAM-MD5}` data), for SCRAM-SHA-1/256 the RFC 5802 §3 keys
as `iter,salt,storedkey,serverkey` (Dovecot's `{SCRAM-SHA-*}` data), for PLAIN the
password. A user stored in that very scheme gets the stored data; with `derive` on, a
`{PLAIN}` user gets it computed at login, the SCRAM salt derived from a server secret
and the user name so it is the same every time. A user who cannot log in costs the same
derivation work and gets None, so the timing does not tell (RFC 5802 §5.1).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os

from popbox.auth import schemes
from popbox.auth.base import CREDENTIAL_SCHEMES, Secret
from popbox.auth.names import normalize_username

PLAIN_NAMES = frozenset({"PLAIN", "CLEAR", "CLEARTEXT"})
SCRAM_HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}


def scheme_data(stored: str) -> str:
    """The part after `{SCHEME}`."""
    return stored.split("}", 1)[1] if stored.startswith("{") and "}" in stored else stored


def scram_keys(algorithm: str, password: bytes, salt: bytes, iterations: int) -> str:
    """RFC 5802 §3 stored and server keys, as Dovecot's `iter,salt,storedkey,serverkey`."""
    salted = hashlib.pbkdf2_hmac(algorithm, password, salt, iterations)
    stored = hashlib.new(algorithm, hmac.digest(salted, b"Client Key", algorithm)).digest()
    server = hmac.digest(salted, b"Server Key", algorithm)
    fields = (salt, stored, server)
    return ",".join([str(iterations), *(base64.b64encode(x).decode("ascii") for x in fields)])


class CredentialSource:
    __slots__ = ("_default_scheme", "_derive", "_iterations", "_secret")

    def __init__(
        self, *, default_scheme: str = "CRYPT", derive: bool = False,
        secret: bytes | None = None,
        iterations: int = schemes.DEFAULT_COST.scram_iterations,
    ) -> None:
        self._default_scheme = default_scheme
        self._derive = derive
        self._secret = secret if secret is not None else os.urandom(32)
        self._iterations = iterations

    def servable(self, stored: str) -> frozenset[str]:
        """The credential schemes a user stored as `stored` (a hash) can be served in."""
        name = schemes.scheme_of(stored, default_scheme=self._default_scheme)
        if name in PLAIN_NAMES:
            return CREDENTIAL_SCHEMES if self._derive else frozenset({"PLAIN"})
        if name in ("CRAM-MD5", "HMAC-MD5"):
            return frozenset({"CRAM-MD5"})
        return frozenset({name}) if name in SCRAM_HASHES else frozenset()

    async def lookup(self, stored: str | None, scheme: str, user: str) -> Secret | None:
        """The credential in `scheme` for a user stored as `stored`; None for a user who
        cannot log in (after the same work a {PLAIN} user would cost)."""
        if not stored:
            if self._derive and scheme in SCRAM_HASHES:
                await self._derive_scram(scheme, b"", user)
            return None
        name = schemes.scheme_of(stored, default_scheme=self._default_scheme)
        if scheme == "PLAIN" or (self._derive and name in PLAIN_NAMES):
            password = schemes.plaintext(stored, default_scheme=self._default_scheme)
            if password is None or scheme == "PLAIN":
                return password
            if scheme == "CRAM-MD5":
                return Secret(scheme_data(schemes.make(password.value, "CRAM-MD5")).encode())
            if scheme in SCRAM_HASHES:
                return await self._derive_scram(scheme, password.value, user)
            return None
        if name == scheme or (scheme == "CRAM-MD5" and name == "HMAC-MD5"):
            return Secret(scheme_data(stored).encode("utf-8", "surrogateescape"))
        return None

    async def _derive_scram(self, scheme: str, password: bytes, name: str) -> Secret:
        label = f"popbox-scram-salt\0{scheme}\0{normalize_username(name)}".encode()
        salt = hmac.digest(self._secret, label, "sha256")[:16]
        keys = await asyncio.to_thread(
            scram_keys, SCRAM_HASHES[scheme], password, salt, self._iterations
        )
        return Secret(keys.encode("ascii"))
