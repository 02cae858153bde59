"""Failed implicit-TLS handshakes (RFC 8314 §3.3, POP3S) are logged and counted in
popbox_tls_handshakes_total{version="unknown",result="failed"}: real clients that fail
the handshake in different ways against `popbox serve` with two workers, scraped with
prometheus-client's parser."""

from __future__ import annotations

import poplib
import socket
import ssl
from pathlib import Path

import pytest
import trustme

from helpers import MailEnv, ServerProcess
from metrics_helpers import metrics_port, scrape_until, value
from tls_helpers import client_context, tls_files

FAILED = {"version": "unknown", "result": "failed"}


def read_to_end(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def garbage(port: int) -> None:
    """A plain-text client on the POP3S port: no ClientHello at all."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"USER alice\r\nGET / HTTP/1.0\r\n\r\n")
        answer = read_to_end(sock)
    assert b"+OK" not in answer  # at most a TLS alert, never a POP3 greeting


def old_protocol(port: int, ca: trustme.CA) -> None:
    """A client that offers only TLS 1.2 to a server that requires 1.3 (tls.min_version)."""
    ctx = client_context(ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, \
            pytest.raises(ssl.SSLError):
        ctx.wrap_socket(sock, server_hostname="localhost")


def wrong_name(port: int, ca: trustme.CA) -> None:
    """A client asking for a name the certificate does not cover: it rejects the
    certificate and aborts the handshake with an alert."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, \
            pytest.raises(ssl.SSLCertVerificationError):
        client_context(ca).wrap_socket(sock, server_hostname="other.example")


def test_failed_implicit_tls_handshakes_are_counted(env: MailEnv, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = tls_files(ca, tmp_path / "tls")
    env.put("alice", b"Subject: hi\n\nhello\n")
    config = env.config_file(
        server={"workers": 2}, metrics={"listen": "127.0.0.1:0"},
        tls={"cert": cert, "key": key, "implicit": ["127.0.0.1:0"], "min_version": "1.3"})
    server = ServerProcess(config)
    try:
        port = metrics_port(server)
        assert server.tls_port is not None
        garbage(server.tls_port)
        old_protocol(server.tls_port, ca)
        wrong_name(server.tls_port, ca)
        failed = scrape_until(port, "popbox_tls_handshakes_total", 3, **FAILED)
        assert value(failed, "popbox_tls_handshakes_total", **FAILED) == 3
        assert value(failed, "popbox_connections_total", listener=f"127.0.0.1:{server.tls_port}",
                     tls="yes") == 0  # no session was started

        pop = poplib.POP3_SSL("127.0.0.1", server.tls_port, context=client_context(ca),
                              timeout=10)
        pop.user("alice")
        pop.pass_("secret")
        assert pop.stat()[0] == 1
        pop.quit()
        after = scrape_until(port, "popbox_tls_handshakes_total", 1, version="TLSv1.3",
                             result="ok")
    finally:
        log = server.stop()
    assert value(after, "popbox_tls_handshakes_total", version="TLSv1.3", result="ok") == 1
    assert value(after, "popbox_tls_handshakes_total", **FAILED) == 3
    failures = [line for line in log.splitlines() if "tls handshake failed" in line]
    assert len(failures) == 3, log
    assert all("ip=127.0.0.1 reason=" in line for line in failures)
    reasons = {line.rsplit("reason=", 1)[1] for line in failures}
    assert "wrong-version-number" in reasons or "http-request" in reasons, reasons
    assert "unsupported-protocol" in reasons, reasons
    assert any(reason.endswith("alert-bad-certificate") for reason in reasons), reasons
