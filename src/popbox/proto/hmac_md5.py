"""HMAC-MD5 from a stored context (RFC 2104 §4, RFC 2195), the form Dovecot keeps
`{CRAM-MD5}` passwords in: the MD5 states reached after hashing `key XOR opad` and
`key XOR ipad`, outer first, 32 bytes.

Making such a context, and finishing an HMAC from one, both need MD5 to start from a given
internal state, which hashlib cannot do; so the MD5 block function (RFC 1321 §3.4) is
written out here, once, for the CRAM-MD5 mechanism and the password scheme alike.
"""

from __future__ import annotations

import hashlib
import math
import struct

_MASK = 0xFFFFFFFF
_SHIFT = [7, 12, 17, 22] * 4 + [5, 9, 14, 20] * 4 + [4, 11, 16, 23] * 4 + [6, 10, 15, 21] * 4
_K = [int(abs(math.sin(i + 1)) * 2**32) & _MASK for i in range(64)]
_INIT = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)

State = tuple[int, int, int, int]


def _compress(state: State, block: bytes) -> State:
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
    s0, s1, s2, s3 = ((x + y) & _MASK for x, y in zip(state, (a, b, c, d), strict=True))
    return s0, s1, s2, s3


def context(key: bytes) -> bytes:
    """The 32-byte HMAC-MD5 context for `key` (outer state, then inner state)."""
    if len(key) > 64:
        key = hashlib.md5(key).digest()  # noqa: S324 - HMAC-MD5 is the definition
    key = key.ljust(64, b"\0")
    outer = _compress(_INIT, bytes(k ^ 0x5C for k in key))
    inner = _compress(_INIT, bytes(k ^ 0x36 for k in key))
    return struct.pack("<4I", *outer) + struct.pack("<4I", *inner)


def _resume(state: bytes, data: bytes) -> bytes:
    """MD5 of (the one 64-byte block that led to `state`) + `data`."""
    a, b, c, d = struct.unpack("<4I", state)
    current: State = (a, b, c, d)
    length = (64 + len(data)) * 8
    padded = data + b"\x80" + b"\0" * ((55 - len(data)) % 64) + struct.pack("<Q", length)
    for start in range(0, len(padded), 64):
        current = _compress(current, padded[start : start + 64])
    return struct.pack("<4I", *current)


def from_context(ctx: bytes, message: bytes) -> bytes:
    """HMAC-MD5 of `message` under the key whose context is `ctx`."""
    return _resume(ctx[:16], _resume(ctx[16:], message))
