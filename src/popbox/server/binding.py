"""TLS channel binding data for SCRAM-*-PLUS (RFC 5056, RFC 5802 §6).

- `tls-server-end-point` (RFC 5929 §4.1): a hash of the server's own certificate, with
  the certificate's signature hash, SHA-256 when that is MD5 or SHA-1 (or when the
  signature has no separate hash, as with Ed25519). Python's `ssl` cannot hand a server
  its own certificate, so the hash is computed from the certificate file when it is
  (re)loaded, per SNI name (`TlsContexts.end_point`). Works with TLS 1.2 and 1.3.
- `tls-unique` (RFC 5929 §3): the first Finished message, from `SSLObject`; offered only
  on TLS 1.2, as RFC 9266 §3 forbids it with TLS 1.3.
- `tls-exporter` (RFC 9266, the TLS 1.3 default): not offered. It needs
  SSL_export_keying_material, which Python's `ssl` module does not expose.
"""

from __future__ import annotations

import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes


def certificate_hash(pem: bytes) -> bytes:
    """RFC 5929 §4.1 binding data for the first certificate in a PEM file."""
    cert = x509.load_pem_x509_certificate(pem)
    algorithm = cert.signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    return cert.fingerprint(algorithm)


def channel_bindings(ssl_object: ssl.SSLObject | None, end_point: bytes | None) -> dict[str, bytes]:
    """The binding data available on a TLS connection, by RFC 5929 type name."""
    found: dict[str, bytes] = {}
    if end_point:
        found["tls-server-end-point"] = end_point
    if ssl_object is not None and ssl_object.version() == "TLSv1.2":
        unique = ssl_object.get_channel_binding("tls-unique")
        if unique:
            found["tls-unique"] = unique
    return found
