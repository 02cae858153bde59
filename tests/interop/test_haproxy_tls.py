"""POP3S behind Debian's HAProxy: HAProxy terminates TLS and forwards to popbox's plain
port with `send-proxy-v2-ssl`. popbox sees the client's real address (logs, limits,
penalties) and the PROXY v2 SSL TLV, so the session counts as secure: USER/PASS work
although the cleartext policy trusts no network here. Maildir store, 127.0.0.x only."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import trustme

from helpers import MailEnv, server_process

CONFIG = """\
global
    maxconn 256
defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m
listen pop3s
    bind 127.0.0.1:{port} ssl crt {pem}
    server popbox 127.0.0.1:{backend} send-proxy-v2-ssl
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_pop3s_terminated_by_haproxy(env: MailEnv, tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy")
    assert haproxy is not None, "haproxy is missing: scripts/install-peers installs it"
    env.put("alice", b"Subject: via haproxy\n\nhello\n")
    ca = trustme.CA()
    pem = tmp_path / "haproxy.pem"
    pem.write_bytes(ca.issue_cert("localhost").private_key_and_cert_chain_pem.bytes())
    config = env.config_file(
        server={"proxy_networks": ["127.0.0.1/32"]},
        auth={"local_networks": ["192.0.2.0/24"]},  # nothing here counts as local
    )
    with server_process(config) as server:
        port = free_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(CONFIG.format(port=port, pem=pem, backend=server.port))
        proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 10
            while True:
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", port)) == 0:
                        break
                assert time.monotonic() < deadline and proc.poll() is None, "haproxy down"
                time.sleep(0.05)
            context = ssl.create_default_context()
            ca.configure_trust(context)
            raw = socket.create_connection(("127.0.0.1", port), timeout=10,
                                           source_address=("127.0.0.3", 0))
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                reader = tls.makefile("rb")

                def cmd(line: bytes) -> bytes:
                    tls.sendall(line + b"\r\n")
                    return reader.readline()

                assert reader.readline().startswith(b"+OK")
                assert cmd(b"USER alice") == b"+OK\r\n"
                assert cmd(b"PASS secret").startswith(b"+OK Logged in. 1 messages")
                assert cmd(b"STLS") == b"-ERR STLS is not valid in this state.\r\n"
                assert cmd(b"QUIT").startswith(b"+OK")
        finally:
            proc.terminate()
            proc.wait(10)
        log = server.stop()
    assert "login ok user=alice mech=USER ip=127.0.0.3" in log
