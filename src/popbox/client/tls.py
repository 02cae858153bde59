"""TLS policy for the client: certificate pinning and a minimum protocol version.

`tls_fingerprint = "sha256:AB:CD:..."` (mpop's `tls_fingerprint`): the SHA-256 digest of
the server certificate's DER encoding, as `openssl x509 -fingerprint -sha256` prints it
(case and colons do not matter). It is compared right after the handshake, implicit or
after STLS (RFC 2595 §4), before the greeting is read or any command is sent, so a server
with another certificate never sees a password or a token. A pin takes the place of the
CA check, as mpop's does: the certificate may be self-signed (with `ssl_context` given,
both must pass).

`tls_min_version = "1.2" | "1.3"`: the oldest protocol the handshake may settle on
(RFC 8996 retired 1.0 and 1.1; Python's default minimum is already 1.2).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import ssl

from popbox.client import errors as er

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_HEX = re.compile(r"[0-9a-f]{64}")


def parse_fingerprint(text: str) -> bytes:
    """`sha256:AB:CD:...` (or the 64 hex digits alone) -> the 32-octet digest; ValueError
    for anything else."""
    value = text.strip().lower()
    algorithm, sep, rest = value.partition(":")
    if sep and algorithm in ("sha256", "sha-256"):
        value = rest
    elif sep and not re.fullmatch(r"[0-9a-f]{2}", algorithm):
        raise ValueError(f"tls_fingerprint: only sha256 is supported, not {algorithm!r}")
    digits = value.replace(":", "")
    if not _HEX.fullmatch(digits):
        raise ValueError("tls_fingerprint: expected sha256: and 32 hex octets")
    return bytes.fromhex(digits)


def format_fingerprint(digest: bytes) -> str:
    return "sha256:" + ":".join(f"{b:02X}" for b in digest)


def fingerprint_of(certificate_der: bytes) -> str:
    """The pin for a certificate, in the form `tls_fingerprint` takes."""
    return format_fingerprint(hashlib.sha256(certificate_der).digest())


def min_version(value: str) -> ssl.TLSVersion:
    try:
        return VERSIONS[value]
    except KeyError:
        raise ValueError(f"tls_min_version must be 1.2 or 1.3, not {value!r}") from None


def context(base: ssl.SSLContext | None, *, pinned: bool,
            minimum: ssl.TLSVersion | None) -> ssl.SSLContext:
    """The context to connect with: `base`, or the system's CAs; with a pin and no
    `base`, no CA check (the pin is the check)."""
    ctx = base or ssl.create_default_context()
    if pinned and base is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if minimum is not None and ctx.minimum_version < minimum:
        ctx.minimum_version = minimum
    return ctx


def check_pin(ssl_object: object, pin: bytes, where: str) -> None:
    """PopSecurityError unless the peer's certificate has the pinned digest."""
    der = ssl_object.getpeercert(binary_form=True) if isinstance(ssl_object, ssl.SSLObject) \
        else None
    if der is None:
        raise er.PopSecurityError(f"{where} showed no certificate to check the pin against")
    if not hmac.compare_digest(hashlib.sha256(der).digest(), pin):
        raise er.PopSecurityError(
            f"the certificate of {where} is not the pinned one: it is {fingerprint_of(der)}, "
            f"tls_fingerprint says {format_fingerprint(pin)}")
