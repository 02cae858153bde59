"""Certificate pinning, the TLS minimum version and STLS that must happen (RFC 2595 §4,
RFC 8314 §3; mpop's `tls_fingerprint`): against popbox's own TLS listeners, and against a
recording server the test runs (implicit TLS or STLS, trustme certificates) that shows a
wrong pin, or a server that stops offering STLS, ends the conversation before any
password is sent, with exit status 78 from `popbox fetch`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from fetch_helpers import fetch_argv, run_fetch
from helpers import MailEnv, running_tls_server
from popbox import client
from popbox.client.tls import fingerprint_of, parse_fingerprint


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("localhost", "127.0.0.1")


def pin_of(cert: trustme.LeafCert) -> str:
    return fingerprint_of(ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode()))


OTHER_PIN = "sha256:" + ":".join(["AB"] * 32)


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


def test_fingerprint_forms() -> None:
    digest = hashlib.sha256(b"x").digest()
    text = fingerprint_of(b"x")
    assert text.startswith("sha256:") and text.count(":") == 32
    assert parse_fingerprint(text) == digest
    assert parse_fingerprint(text.lower().replace("sha256:", "")) == digest
    assert parse_fingerprint(digest.hex()) == digest
    for bad in ("sha1:" + ":".join(["AB"] * 20), "sha256:AB:CD", "sha256:" + "g" * 64, ""):
        with pytest.raises(ValueError, match="tls_fingerprint"):
            parse_fingerprint(bad)


class Recorder:
    """A POP3 server that records every line it receives: CAPA (STLS when `stls`), STLS,
    USER, and a PASS it refuses; implicit TLS when `implicit`."""

    def __init__(self, cert: trustme.LeafCert, *, implicit: bool, stls: bool) -> None:
        self.ctx = server_context(cert)
        self.implicit, self.stls = implicit, stls
        self.lines: list[bytes] = []
        self.handshakes = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
            if self.implicit:
                self.handshakes += 1
            writer.write(b"+OK ready\r\n")
            while line := await reader.readline():
                self.lines.append(line.rstrip(b"\r\n"))
                verb = line.split()[0].upper() if line.split() else b""
                if verb == b"CAPA":
                    caps = b"USER\r\n" + (b"STLS\r\n" if self.stls else b"")
                    writer.write(b"+OK\r\n" + caps + b".\r\n")
                elif verb == b"STLS" and self.stls:
                    writer.write(b"+OK go ahead\r\n")
                    await writer.drain()
                    await writer.start_tls(self.ctx)
                    self.handshakes += 1
                    self.stls = False
                elif verb == b"PASS":
                    writer.write(b"-ERR [AUTH] no\r\n")
                elif verb == b"QUIT":
                    writer.write(b"+OK bye\r\n")
                    break
                else:
                    writer.write(b"+OK\r\n")
                await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def recorder(cert: trustme.LeafCert, *, implicit: bool, stls: bool = False
                   ) -> AsyncIterator[tuple[Recorder, int]]:
    found = Recorder(cert, implicit=implicit, stls=stls)
    server = await asyncio.start_server(found.handle, "127.0.0.1", 0,
                                        ssl=found.ctx if implicit else None)
    async with server:
        yield found, server.sockets[0].getsockname()[1]


@pytest.fixture
def tls_env(env: MailEnv, cert: trustme.LeafCert, tmp_path: Path) -> MailEnv:
    chain, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    env.settings["tls"] = {"cert": str(chain), "key": str(key), "implicit": ["127.0.0.1:0"]}
    env.put("alice", b"Subject: one\r\n\r\nbody\r\n")
    return env


async def test_the_pin_replaces_the_ca_check(tls_env: MailEnv, cert: trustme.LeafCert) -> None:
    """The pinned certificate is accepted from a CA nobody trusts, implicit and after STLS;
    another pin, or TLS 1.3 asked of a server that does it, behave as they must."""
    async with running_tls_server(tls_env.config()) as (port, tls_port):
        for where, mode in ((tls_port, "implicit"), (port, "starttls")):
            async with client.connect("127.0.0.1", where, tls=mode,  # type: ignore[arg-type]
                                      tls_fingerprint=pin_of(cert),
                                      tls_min_version="1.3") as pop:
                await pop.login("alice", "secret")
                assert await pop.stat() == (1, 22)
            with pytest.raises(client.PopSecurityError, match="not the pinned one: it is "
                               + pin_of(cert)):
                await client.connect("127.0.0.1", where, tls=mode,  # type: ignore[arg-type]
                                     tls_fingerprint=OTHER_PIN)
        with pytest.raises(client.PopTlsError, match="certificate verify failed"):
            await client.connect("127.0.0.1", tls_port)  # no pin: the CA check is back
    with pytest.raises(ValueError, match="need TLS"):
        client.connect("127.0.0.1", 1, tls="none", tls_fingerprint=OTHER_PIN)
    with pytest.raises(ValueError, match=r"1\.2 or 1\.3"):
        client.connect("127.0.0.1", 1, tls_min_version="1.1")


async def test_tls_min_version_refuses_an_older_server(cert: trustme.LeafCert) -> None:
    async with recorder(cert, implicit=True) as (rec, port):
        rec.ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        # The handshake fails on both sides: a TLS alert, or the server's reset first.
        with pytest.raises(client.PopConnectionError, match=r"127\.0\.0\.1"):
            await client.connect("127.0.0.1", port, tls_fingerprint=pin_of(cert),
                                 tls_min_version="1.3")
        async with client.connect("127.0.0.1", port, tls_fingerprint=pin_of(cert),
                                  tls_min_version="1.2"):
            pass
    assert rec.lines == [b"QUIT"]


async def test_fetch_wrong_pin_exits_78_before_the_password(tmp_path: Path,
                                                            cert: trustme.LeafCert) -> None:
    """The right pin gets as far as PASS (refused here: 77, and the recorder saw it); the
    wrong one ends the connection right after the handshake: 78, nothing received."""
    for mode, implicit in (("implicit", True), ("starttls", False)):
        async with recorder(cert, implicit=implicit, stls=not implicit) as (rec, port):
            right = await run_fetch(fetch_argv(
                port, "--tls", mode, "--tls-fingerprint", pin_of(cert), "--auth", "user",
                "--maildir", str(tmp_path / "Mail"), state=tmp_path / "s.json"))
        assert right.status == 77, right.err
        assert b"PASS secret" in rec.lines
        async with recorder(cert, implicit=implicit, stls=not implicit) as (rec, port):
            wrong = await run_fetch(fetch_argv(
                port, "--tls", mode, "--tls-fingerprint", OTHER_PIN, "--auth", "user",
                "--maildir", str(tmp_path / "Mail"), state=tmp_path / "s.json"))
        assert wrong.status == 78, wrong.err
        assert "is not the pinned one" in wrong.err
        assert rec.handshakes == 1
        assert rec.lines == ([] if implicit else [b"CAPA", b"STLS"])


async def test_fetch_starttls_never_falls_back_to_plaintext(tmp_path: Path,
                                                            cert: trustme.LeafCert) -> None:
    """RFC 2595 §4 / RFC 8314 §5: a server that stops offering STLS is exit 78 and sees
    no USER or PASS, even with --allow-plaintext."""
    async with recorder(cert, implicit=False, stls=False) as (rec, port):
        result = await run_fetch(fetch_argv(
            port, "--tls", "starttls", "--allow-plaintext", "--auth", "user",
            "--maildir", str(tmp_path / "Mail"), state=tmp_path / "s.json"))
    assert result.status == 78, result.err
    assert "does not offer STLS" in result.err
    assert rec.lines == [b"CAPA"]
