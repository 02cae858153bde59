"""Transport security: STLS (RFC 2595 §4), implicit TLS (RFC 8314 §3.3), the cleartext
policy (RFC 8314 §5.1 spirit), SNI and certificate reload. Real TLS over 127.0.0.1 with
certificates made at test time (trustme)."""

from __future__ import annotations

import asyncio
import poplib
import ssl
from pathlib import Path

import pytest
import trustme

from helpers import Client, MailEnv, running_server, server_process
from tls_helpers import client_context, tls_files


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_env(env: MailEnv, ca: trustme.CA, tmp_path: Path) -> MailEnv:
    cert, key = tls_files(ca, tmp_path / "tls")
    env.settings["tls"] = {"cert": cert, "key": key, "implicit": ["127.0.0.1:0"]}
    env.put("alice", b"Subject: hi\n\nhello over TLS\n")
    return env


def test_stls_with_poplib_and_verification(tls_env: MailEnv, ca: trustme.CA) -> None:
    """RFC 2595 §4: STLS, then CAPA no longer offers STLS; login and fetch over TLS."""
    with server_process(tls_env.config_file()) as server:
        pop = poplib.POP3("127.0.0.1", server.port, timeout=10)
        assert "STLS" in pop.capa()
        pop.stls(context=client_context(ca))
        assert "STLS" not in pop.capa()
        pop.user("alice")
        pop.pass_("secret")
        _, lines, _ = pop.retr(1)
        assert lines == [b"Subject: hi", b"", b"hello over TLS"]
        pop.quit()


def test_implicit_tls_with_poplib(tls_env: MailEnv, ca: trustme.CA) -> None:
    """RFC 8314 §3.3: POP3 over TLS from the first byte (port 995 in production)."""
    with server_process(tls_env.config_file()) as server:
        assert server.tls_port is not None
        pop = poplib.POP3_SSL("127.0.0.1", server.tls_port, context=client_context(ca), timeout=10)
        caps = pop.capa()
        assert "STLS" not in caps and "USER" in caps
        pop.user("alice")
        pop.pass_("secret")
        assert pop.stat()[0] == 1
        pop.quit()


async def test_stls_discards_injected_commands(tls_env: MailEnv, ca: trustme.CA) -> None:
    """CVE-2011-0411 class: `STLS\\r\\nCAPA\\r\\n` in one write; CAPA is never answered in
    clear, and after the handshake the session sees only what came over TLS."""
    async with running_server(tls_env.config()) as (port, _):
        client = await Client.connect(port)
        await client.line()
        client.writer.write(b"STLS\r\nCAPA\r\n")
        assert await client.line() == b"+OK Begin TLS negotiation now."
        await client.writer.start_tls(client_context(ca), server_hostname="localhost")
        client.send("NOOP")
        assert await client.line() == b"-ERR NOOP is not valid in this state."
        _, caps = await client.multi("CAPA")
        assert b"STLS" not in caps and b"USER" in caps
        await client.close()


async def test_cleartext_refused_from_a_remote_address(tls_env: MailEnv, ca: trustme.CA) -> None:
    """RFC 8314 §5.1 spirit: no USER/PASS or PLAIN without TLS from a non-local address.
    The server treats only 127.0.0.1 as local; the client connects from 127.0.0.2."""
    config = tls_env.config(auth={"local_networks": ["127.0.0.1/32"]})
    async with running_server(config) as (port, _):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=("127.0.0.2", 0)
        )
        client = Client(reader, writer)
        await client.line()
        _, caps = await client.multi("CAPA")
        assert b"STLS" in caps and b"USER" not in caps
        assert not any(c.startswith(b"SASL") for c in caps)
        refused = (
            b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."
        )
        assert await client.cmd("USER alice") == refused
        assert await client.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==") == refused
        assert await client.cmd("STLS") == b"+OK Begin TLS negotiation now."
        await client.writer.start_tls(client_context(ca), server_hostname="localhost")
        assert await client.cmd("USER alice") == b"+OK"
        assert (await client.cmd("PASS secret")).startswith(b"+OK Logged in")
        await client.close()


async def test_stls_not_offered_without_certificates(env: MailEnv) -> None:
    async with running_server(env.config()) as (port, _):
        client = await Client.connect(port)
        await client.line()
        _, caps = await client.multi("CAPA")
        assert b"STLS" not in caps
        assert await client.cmd("STLS") == b"-ERR STLS is not available on this server."
        await client.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_old_tls_versions_refused(tls_env: MailEnv) -> None:
    """TLS 1.2 is the minimum (RFC 8996, RFC 8314 §4.1): a client willing to speak only
    TLS 1.0/1.1 (at security level 0, so the refusal is the server's) is turned away."""

    def client(maximum: ssl.TLSVersion) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = maximum
        return ctx

    with server_process(tls_env.config_file()) as server:
        assert server.tls_port is not None
        with pytest.raises((ssl.SSLError, ConnectionError)):
            poplib.POP3_SSL("127.0.0.1", server.tls_port, context=client(ssl.TLSVersion.TLSv1_1),
                            timeout=10)
        pop = poplib.POP3_SSL("127.0.0.1", server.tls_port,
                              context=client(ssl.TLSVersion.TLSv1_2), timeout=10)
        assert pop.sock.version() == "TLSv1.2"
        pop.quit()


def test_sni_and_reload_on_sighup(tls_env: MailEnv, ca: trustme.CA, tmp_path: Path) -> None:
    """One certificate per domain by SNI; SIGHUP loads new files without a restart."""
    cert, key = tls_files(ca, tmp_path / "tls", "mail.example.org")
    tls = dict(tls_env.settings["tls"])
    config = tls_env.config_file()
    text = config.read_text() + f'\n[tls.sni."mail.example.org"]\ncert = "{cert}"\nkey = "{key}"\n'
    config.write_text(text)
    with server_process(config) as server:
        assert server.tls_port is not None

        def peer_names(server_name: str) -> list[str]:
            import socket

            with socket.create_connection(("127.0.0.1", server.tls_port), timeout=10) as raw, \
                    client_context(ca).wrap_socket(raw, server_hostname=server_name) as s:
                got = s.getpeercert()
            return [v for kind, v in got.get("subjectAltName", ()) if kind == "DNS"]

        assert peer_names("mail.example.org") == ["mail.example.org"]
        assert "localhost" in peer_names("localhost")
        # Replace the default certificate on disk, then SIGHUP.
        tls_files(ca, tmp_path / "tls2", "localhost", "renewed.example")
        Path(tls["cert"]).write_bytes((tmp_path / "tls2" / "localhost.pem").read_bytes())
        Path(tls["key"]).write_bytes((tmp_path / "tls2" / "localhost.key").read_bytes())
        import signal

        server.proc.send_signal(signal.SIGHUP)
        assert server.wait_log("TLS certificates reloaded")
        assert "renewed.example" in peer_names("localhost")


async def test_symlinked_key_files_need_follow_symlinks(
    env: MailEnv, ca: trustme.CA, tmp_path: Path
) -> None:
    """The certificate and key are opened with O_NOFOLLOW: as symlinks (certbot's live/
    layout) they are refused unless tls.follow_symlinks = true, and then served."""
    from popbox.server.tls import TlsContexts

    cert, key = tls_files(ca, tmp_path / "archive")
    live = tmp_path / "live"
    live.mkdir()
    (live / "fullchain.pem").symlink_to(cert)
    (live / "privkey.pem").symlink_to(key)
    linked = {"cert": str(live / "fullchain.pem"), "key": str(live / "privkey.pem")}
    with pytest.raises(OSError):
        TlsContexts(env.config(tls=linked).tls)
    config = env.config(tls={**linked, "follow_symlinks": True})
    env.put("alice", b"Subject: hi\n\nover linked keys\n")
    async with running_server(config) as (port, _):
        client = await Client.connect(port)
        assert (await client.line()).startswith(b"+OK")
        assert (await client.cmd("STLS")).startswith(b"+OK")
        await client.writer.start_tls(client_context(ca), server_hostname="localhost")
        assert (await client.cmd("USER alice")).startswith(b"+OK")
        assert (await client.cmd("PASS secret")).startswith(b"+OK")
        assert (await client.cmd("QUIT")).startswith(b"+OK")
        await client.close()
