"""Server TLS contexts (RFC 8314 §4.2, RFC 7525 / BCP 195 recommendations).

TLS 1.2 or newer, forward-secret AEAD cipher suites only for TLS 1.2, the server's
preference order, no compression, no renegotiation. One default certificate, plus one per
domain chosen by SNI. `reload()` loads every certificate again into the same contexts, so
new handshakes use the new files while running sessions go on.

Certificate and key files are opened as regular files, never through a symlink unless
`tls.follow_symlinks` is set (certbot's ``live/`` directory is made of symlinks), and
never blocking on a FIFO (popbox.fsutil); OpenSSL then reads the opened file through
``/proc/self/fd``, so what was checked is what is loaded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

from popbox.config import TlsSection
from popbox.fsutil import open_regular
from popbox.server.binding import certificate_hash

log = logging.getLogger("popbox")

TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])


def _context(minimum: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if minimum == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return ctx


class TlsContexts:
    def __init__(self, section: TlsSection) -> None:
        assert section.cert is not None and section.key is not None
        self._follow = section.follow_symlinks
        self._files: dict[str, tuple[Path, Path]] = {"": (section.cert, section.key)}
        for domain, pair in section.sni.items():
            self._files[domain.lower()] = (pair.cert, pair.key)
        self._min = section.min_version
        self._contexts = {name: _context(section.min_version) for name in self._files}
        self._end_points: dict[str, bytes] = {}
        self.reload()
        self.context = self._contexts[""]
        if len(self._contexts) > 1:
            self.context.sni_callback = self._pick

    def compatible(self, section: TlsSection) -> bool:
        """Whether `update(section)` can apply it: the same names and minimum version."""
        names = {""} | {domain.lower() for domain in section.sni}
        return section.enabled and names == set(self._files) and section.min_version == self._min

    def update(self, section: TlsSection) -> None:
        """Load the certificate files `section` names into the running contexts."""
        assert section.cert is not None and section.key is not None
        files = {"": (section.cert, section.key)}
        for domain, pair in section.sni.items():
            files[domain.lower()] = (pair.cert, pair.key)
        old, self._files = self._files, files
        try:
            self.reload()
        except (OSError, ssl.SSLError):
            self._files = old
            self.reload()
            raise

    def reload(self) -> None:
        """(Re)load every certificate chain and key. Raises ssl.SSLError/OSError."""
        for name, (cert, key) in self._files.items():
            with self._opened(cert) as cert_path, self._opened(key) as key_path:
                self._contexts[name].load_cert_chain(cert_path, key_path)
                with open(cert_path, "rb") as f:
                    pem = f.read()
            try:
                self._end_points[name] = certificate_hash(pem)
            except ValueError:
                self._end_points.pop(name, None)  # no tls-server-end-point for this one

    @contextlib.contextmanager
    def _opened(self, path: Path) -> Iterator[str]:
        """A path by which OpenSSL reads the regular file `path` as opened here."""
        fd = open_regular(os.path.realpath(path) if self._follow else path)
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)

    def end_point(self, ssl_object: ssl.SSLObject) -> bytes | None:
        """RFC 5929 §4.1 binding data of the certificate this connection was served."""
        for name, context in self._contexts.items():
            if ssl_object.context is context:
                return self._end_points.get(name)
        return None

    def _pick(self, sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        if server_name:
            chosen = self._contexts.get(server_name.lower())
            if chosen is not None:
                sock.context = chosen
