"""APOP (RFC 1939 §7): the client proves it knows the shared secret by sending
MD5(timestamp + secret) in lowercase hex, where the timestamp is the `<...>` part of the
server's greeting. MD5 challenge-response is weak, so popbox offers APOP only when the
operator turns it on."""

from __future__ import annotations

import hashlib
import hmac


def digest(timestamp: str, secret: bytes) -> str:
    return hashlib.md5(timestamp.encode() + secret).hexdigest()  # noqa: S324 - RFC 1939


def matches(timestamp: str, secret: bytes, offered: str) -> bool:
    """Constant-time comparison of the client's digest with the expected one."""
    return hmac.compare_digest(digest(timestamp, secret), offered.lower())
