"""CRAM-MD5 (RFC 2195), server side, as a pure state machine.

The server sends a challenge in RFC 822 msg-id form, `<random.time@host>` (RFC 2195 §2);
the random number and the time are passed in by the shell. The client answers
`user SP hex(HMAC-MD5(password, challenge))` (the user name is everything before the
last space). The mechanism then asks for the user's stored credential, which is
Dovecot's `{CRAM-MD5}` form: the 32-byte HMAC-MD5 context in hex, i.e. the MD5 states
reached after hashing `key XOR opad` and `key XOR ipad` (RFC 2104 §2), outer first.

With only those two states, the HMAC is finished by running MD5 on from each state
(RFC 1321 §3.4): hashlib cannot start from a given state, so the MD5 block function is
written out here. An unknown user is answered with a mock context and fails at the same
point as a wrong password. CRAM-MD5 never sends the password, but the stored context is
password-equivalent; it is on the way to Historic and offered for old clients.
"""

from __future__ import annotations

import hmac
import math
import struct

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

_MASK = 0xFFFFFFFF
_SHIFT = [7, 12, 17, 22] * 4 + [5, 9, 14, 20] * 4 + [4, 11, 16, 23] * 4 + [6, 10, 15, 21] * 4
_K = [int(abs(math.sin(i + 1)) * 2**32) & _MASK for i in range(64)]
_MOCK_CONTEXT = bytes(32)


def _compress(state: tuple[int, int, int, int], block: bytes) -> tuple[int, int, int, int]:
    """One MD5 block (RFC 1321 §3.4) from `state`."""
    words = struct.unpack("<16I", block)
    a, b, c, d = state
    for i in range(64):
        if i < 16:
            f, g = (b & c) | (~b & d), i
        elif i < 32:
            f, g = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            f, g = b ^ c ^ d, (3 * i + 5) % 16
        else:
            f, g = c ^ (b | (~d & _MASK)), (7 * i) % 16
        f = (f + a + _K[i] + words[g]) & _MASK
        a, d, c = d, c, b
        b = (b + ((f << _SHIFT[i] | f >> (32 - _SHIFT[i])) & _MASK)) & _MASK
    new = (a, b, c, d)
    s0, s1, s2, s3 = ((x + y) & _MASK for x, y in zip(state, new, strict=True))
    return s0, s1, s2, s3


def md5_resume(state: bytes, data: bytes) -> bytes:
    """MD5 of (one 64-byte block that led to `state`) + `data`, from the 16-byte state."""
    a, b, c, d = struct.unpack("<4I", state)
    current = (a, b, c, d)
    length = (64 + len(data)) * 8
    padded = data + b"\x80" + b"\0" * ((55 - len(data)) % 64) + struct.pack("<Q", length)
    for start in range(0, len(padded), 64):
        current = _compress(current, padded[start : start + 64])
    return struct.pack("<4I", *current)


def hmac_from_context(context: bytes, message: bytes) -> bytes:
    """HMAC-MD5 of `message` from a 32-byte (outer state, inner state) context."""
    outer, inner = context[:16], context[16:]
    return md5_resume(outer, md5_resume(inner, message))


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
        expected = hmac_from_context(context or _MOCK_CONTEXT, self._challenge).hex()
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
