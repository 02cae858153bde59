"""`popbox reload` loads new TLS certificates into the running listeners (RFC 8314 §3
implicit TLS, RFC 2595 §4 STLS) and refuses unusable ones; TLS handshakes are counted by
version in the metrics."""

from __future__ import annotations

import asyncio
import poplib
import socket
import sys
from pathlib import Path

import trustme

from helpers import MailEnv, ServerProcess
from metrics_helpers import metrics_port, scrape_when_idle, value
from tls_helpers import client_context, tls_files


async def reload(config: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "popbox", "reload", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, (out + err).decode()


def names(port: int, ca: trustme.CA) -> list[str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            client_context(ca).wrap_socket(raw, server_hostname="localhost") as tls:
        got = tls.getpeercert()
    return [v for kind, v in got.get("subjectAltName", ()) if kind == "DNS"]


async def test_reload_switches_certificates_and_counts_handshakes(
    env: MailEnv, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert, key = tls_files(ca, tmp_path / "tls", "localhost", "127.0.0.1", "first.example")
    env.put("alice", b"Subject: hi\n\nhello\n")
    tls = {"cert": cert, "key": key, "implicit": ["127.0.0.1:0"]}
    settings = {"tls": tls, "admin": {"socket": str(env.root / "admin.sock")},
                "metrics": {"listen": "127.0.0.1:0"}}
    config = env.config_file(**settings)
    server = await asyncio.to_thread(ServerProcess, config)
    try:
        assert server.tls_port is not None
        port = metrics_port(server)
        held = poplib.POP3_SSL("127.0.0.1", server.tls_port, context=client_context(ca),
                               timeout=10)
        held.user("alice")
        held.pass_("secret")
        assert "first.example" in await asyncio.to_thread(names, server.tls_port, ca)

        new_cert, new_key = tls_files(
            ca, tmp_path / "tls2", "localhost", "127.0.0.1", "second.example")
        env.config_file(**{**settings, "tls": {**tls, "cert": new_cert, "key": new_key}})
        assert await reload(config) == (0, "configuration reloaded (1 worker)\n")
        assert "second.example" in await asyncio.to_thread(names, server.tls_port, ca)
        stls = poplib.POP3("127.0.0.1", server.port, timeout=10)
        stls.stls(client_context(ca))
        assert "second.example" in str(stls.sock.getpeercert())  # type: ignore[attr-defined]
        stls.quit()

        Path(new_key).write_text("not a key\n")
        code, text = await reload(config)
        assert code == 1 and "tls:" in text
        assert "second.example" in await asyncio.to_thread(names, server.tls_port, ca)
        assert held.retr(1)[0].startswith(b"+OK")  # the TLS session from before goes on
        held.quit()
        samples = await asyncio.to_thread(scrape_when_idle, port)
    finally:
        server.stop()
    # POP3S: held, three certificate checks; STLS: one.
    assert value(samples, "popbox_tls_handshakes_total", version="TLSv1.3", result="ok") == 5
    listener = f"127.0.0.1:{server.tls_port}"
    assert value(samples, "popbox_connections_total", listener=listener, tls="yes") == 4
    assert value(samples, "popbox_connections_total",
                 listener=f"127.0.0.1:{server.port}", tls="no") == 1
