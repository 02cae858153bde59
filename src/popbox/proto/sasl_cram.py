"""CRAM-MD5 (RFC 2195), server side, as a pure state machine.

The server sends a challenge in RFC 822 msg-id form, `<random.time@host>` (RFC 2195 §2);
the random number and the time are passed in by the shell. The client answers
`user SP hex(HMAC-MD5(password, challenge))` (the user name is everything before the
last space). The mechanism then asks for the user's stored credential, which is
Dovecot's `{CRAM-MD5}` form: the 32-byte HMAC-MD5 context in hex, i.e. the MD5 states
reached after hashing `key XOR opad` and `key XOR ipad` (RFC 2104 §2), outer first.

With only those two states, the HMAC is finished by running MD5 on from each state
(`popbox.proto.hmac_md5`). An unknown user is answered with a mock context and fails at the same
point as a wrong password. CRAM-MD5 never sends the password, but the stored context is
password-equivalent; it is on the way to Historic and offered for old clients.
"""

from __future__ import annotations

import hmac

from popbox.proto.hmac_md5 import from_context
from popbox.proto.sasl import (
    Answer,
    Authenticated,
    Challenge,
    Failed,
    NeedCredential,
    Step,
    StoredCredential,
    text,
)

_MOCK_CONTEXT = bytes(32)


def challenge(random: int, now: int, host: str) -> bytes:
    """The RFC 2195 §2 challenge `<random.time@host>`."""
    return f"<{random}.{now}@{host}>".encode()


class CramMd5:
    """Challenge, `user digest` response, credential lookup, verdict."""

    def __init__(self, challenge: bytes) -> None:
        self._challenge = challenge
        self._user: str | None = None
        self._digest = ""

    def start(self, initial: bytes | None) -> Step:
        if initial is not None:  # a server-first mechanism takes no initial response
            return Failed("CRAM-MD5 takes no initial response")
        return Challenge(self._challenge)

    def step(self, response: bytes) -> Step:
        if self._user is not None:
            return Failed("unexpected response")
        decoded = text(response)
        user, _, digest = (decoded or "").rpartition(" ")
        if not user or len(digest) != 32:
            return Failed("malformed CRAM-MD5 response")
        self._user, self._digest = user, digest.lower()
        return NeedCredential(user, "CRAM-MD5")

    def provide(self, answer: Answer) -> Step:
        if self._user is None or not isinstance(answer, StoredCredential):
            return Failed("unexpected answer")
        context = _context(answer.data)
        known = context is not None
        expected = from_context(context or _MOCK_CONTEXT, self._challenge).hex()
        if hmac.compare_digest(expected, self._digest) and known:
            return Authenticated(self._user)
        return Failed("wrong digest", self._user)


def _context(data: bytes | None) -> bytes | None:
    if data is None or len(data) != 64:
        return None
    try:
        return bytes.fromhex(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
