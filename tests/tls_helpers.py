"""Certificates made at test time (trustme) and a client context that trusts them."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme


def tls_files(ca: trustme.CA, folder: Path, *names: str) -> tuple[str, str]:
    cert = ca.issue_cert(*(names or ("localhost", "127.0.0.1")))
    folder.mkdir(exist_ok=True)
    name = names[0] if names else "default"
    chain, key = folder / f"{name}.pem", folder / f"{name}.key"
    cert.private_key_pem.write_to_path(str(key))
    cert.cert_chain_pems[0].write_to_path(str(chain))
    for extra in cert.cert_chain_pems[1:]:
        with chain.open("ab") as f:
            f.write(extra.bytes())
    return str(chain), str(key)


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx
