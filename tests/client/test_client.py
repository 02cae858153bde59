"""The asyncio client library (popbox.client) against a real popbox server on 127.0.0.1:
every command, every SASL mechanism, APOP, STLS and implicit TLS with trustme
certificates, response codes surfaced as exceptions, and servers that misbehave (a few
small scripted ones on 127.0.0.1, and in-memory streams for the plaintext policy)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import poplib
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from helpers import MailEnv, crlf, running_server, running_tls_server, server_process
from popbox import client
from popbox.client import PopClient
from popbox.proto.types import MsgNo

MESSAGES = [
    b"From: a@example.org\nSubject: one\n\nbody one\n.dotted line\n..two dots\n.\n",
    b"Subject: two\n\nno final newline",
    b"Subject: three\r\n\r\nCRLF stored\r\nbare\rCR and \x00 NUL and \xff 8-bit\r\n",
]
TIMEOUT = 10.0


@pytest.fixture
def mail(env: MailEnv) -> MailEnv:
    for message in MESSAGES:
        env.put("alice", message)
    return env


async def plain(port: int, **kwargs: Any) -> PopClient:
    return await client.connect("127.0.0.1", port, tls="none", timeout=TIMEOUT, **kwargs)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_mail(mail: MailEnv, ca: trustme.CA, tmp_path: Path) -> MailEnv:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    chain, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    mail.settings["tls"] = {"cert": str(chain), "key": str(key), "implicit": ["127.0.0.1:0"]}
    return mail


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


# --- every command -----------------------------------------------------------------------


async def test_every_command(mail: MailEnv) -> None:
    """RFC 1939 §§4-7 and RFC 2449 §5: greeting, CAPA, USER/PASS, STAT, LIST, UIDL, RETR,
    TOP, DELE, RSET, NOOP, QUIT; messages come back as sent (CRLF, un-stuffed)."""
    async with running_server(mail.config()) as (port, _):
        async with await plain(port) as pop:
            assert pop.greeting == "popbox ready." and pop.timestamp is None
            caps = await pop.capa()
            assert {"USER", "UIDL", "TOP", "PIPELINING", "RESP-CODES"} <= caps.keys()
            assert "SCRAM-SHA-256" not in caps["SASL"] and "PLAIN" in caps["SASL"]
            assert (await pop.user_pass("alice", "secret")).startswith("Logged in")
            wire = [crlf(m.replace(b"\r\n", b"\n")) for m in MESSAGES]
            assert await pop.stat() == (3, sum(map(len, wire)))
            sizes = await pop.list()
            assert sizes == {1: len(wire[0]), 2: len(wire[1]), 3: len(wire[2])}
            assert await pop.list(2) == len(wire[1])
            uidls = await pop.uidl()
            assert len(set(uidls.values())) == 3 and await pop.uidl(3) == uidls[MsgNo(3)]
            assert await pop.list_and_uidl() == (sizes, uidls)  # pipelined
            for n, expected in enumerate(wire, 1):
                assert await pop.retr(n) == expected
            sink = io.BytesIO()
            assert await pop.retr_to(1, sink) == len(wire[0])
            assert sink.getvalue() == wire[0]
            assert b"".join([c async for c in pop.retr_iter(2)]) == wire[1]
            assert await pop.top(1, 0) == b"From: a@example.org\r\nSubject: one\r\n\r\n"
            assert await pop.top(1, 2) == (b"From: a@example.org\r\nSubject: one\r\n\r\n"
                                           b"body one\r\n.dotted line\r\n")
            assert (await pop.dele(1)).startswith("Message 1 deleted")
            with pytest.raises(client.PopError) as failed:
                await pop.retr(1)
            assert failed.value.verb == "RETR" and failed.value.code is None
            await pop.rset()
            await pop.noop()
            await pop.dele_many([1, 3])
            assert (await pop.quit()).startswith("Logging out")
            assert pop.closed
        assert mail.messages("alice") == [MESSAGES[1]]


async def test_leaving_with_an_exception_deletes_nothing(mail: MailEnv) -> None:
    """RFC 1939 §6: no QUIT, no UPDATE state: an exception inside `async with` closes the
    connection without QUIT, so the DELE is not applied."""
    async with running_server(mail.config()) as (port, _):
        with pytest.raises(RuntimeError):
            async with await plain(port) as pop:
                await pop.login("alice", "secret")
                await pop.dele(1)
                raise RuntimeError("stop")
        async with await plain(port) as pop:
            await pop.login("alice", "secret")
            assert (await pop.stat())[0] == 3


def test_bytes_equal_poplibs(mail: MailEnv) -> None:
    """RETR and TOP give the bytes poplib gets (its lines joined with CRLF)."""
    with server_process(mail.config_file()) as server:
        pop3 = poplib.POP3("127.0.0.1", server.port, timeout=TIMEOUT)
        pop3.user("alice")
        pop3.pass_("secret")
        expected = [b"".join(line + b"\r\n" for line in pop3.retr(n)[1]) for n in (1, 2, 3)]
        top = b"".join(line + b"\r\n" for line in pop3.top(1, 1)[1])
        pop3.quit()

        async def ours() -> tuple[list[bytes], bytes]:
            async with await plain(server.port) as pop:
                await pop.login("alice", "secret")
                return [await pop.retr(n) for n in (1, 2, 3)], await pop.top(1, 1)

        assert asyncio.run(ours()) == (expected, top)


async def test_streaming_a_large_message(env: MailEnv) -> None:
    """A 6 MB message arrives in pieces (never one 6 MB read); leaving the loop early
    closes the connection and the next call says so."""
    big = b"Subject: big\n\n" + b"".join(b"%07d ........ line\n" % i for i in range(300_000))
    env.put("alice", big)
    async with running_server(env.config()) as (port, _), await plain(port) as pop:
        await pop.login("alice", "secret")
        pieces = [len(c) async for c in pop.retr_iter(1)]
        assert sum(pieces) == len(crlf(big)) and len(pieces) > 10
        async with contextlib.aclosing(pop.retr_iter(1)) as chunks:
            async for _ in chunks:
                break
        assert pop.closed
        with pytest.raises(client.PopConnectionError):
            await pop.noop()


# --- logins ------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1",
                                       "SCRAM-SHA-256"])
async def test_every_sasl_mechanism(mail: MailEnv, mechanism: str) -> None:
    """RFC 5034 AUTH with RFC 4616 PLAIN, LOGIN, RFC 2195 CRAM-MD5, RFC 5802/7677 SCRAM
    (the server's signature verified); a wrong password is PopAuthError [AUTH]."""
    config = mail.config(auth={"derive_credentials": True})
    async with running_server(config) as (port, _):
        async with await plain(port) as pop:
            assert (await pop.auth(mechanism, "alice", "secret")).startswith("Logged in")
            assert (await pop.stat())[0] == 3
        async with await plain(port) as pop:
            with pytest.raises(client.PopAuthError) as failed:
                await pop.auth(mechanism, "alice", "wrong")
            assert failed.value.code == "AUTH"


@pytest.mark.parametrize(("settings", "chosen"), [
    ({"derive_credentials": True}, "SCRAM-SHA-256"),
    ({"derive_credentials": True, "mechanisms": ["PLAIN", "SCRAM-SHA-1"]}, "SCRAM-SHA-1"),
    ({"derive_credentials": True, "mechanisms": ["PLAIN", "CRAM-MD5"]}, "CRAM-MD5"),
    ({}, "PLAIN"),
    ({"mechanisms": []}, "USER"),
])
async def test_login_picks_the_strongest_offered(
    mail: MailEnv, settings: dict[str, Any], chosen: str
) -> None:
    """SCRAM-SHA-256 > SCRAM-SHA-1 > CRAM-MD5 > PLAIN > USER/PASS, from CAPA's SASL line
    (RFC 2449 §6.3)."""
    async with running_server(mail.config(auth=settings)) as (port, _), await plain(port) as pop:
        assert await pop.login("alice", "secret") == chosen
        assert (await pop.stat())[0] == 3


async def test_apop(mail: MailEnv) -> None:
    """RFC 1939 §7: APOP with the greeting's timestamp."""
    async with running_server(mail.config(auth={"apop": True})) as (port, _):
        async with await plain(port) as pop:
            assert pop.timestamp is not None and pop.timestamp.endswith("@test.example>")
            await pop.apop("alice", "secret")
            assert (await pop.stat())[0] == 3
        async with await plain(port) as pop:
            with pytest.raises(client.PopAuthError):
                await pop.apop("alice", "wrong")
    async with running_server(mail.config()) as (port, _), await plain(port) as pop:
        with pytest.raises(client.PopUnsupportedError):
            await pop.apop("alice", "secret")


async def test_in_use_is_an_exception_with_its_code(mail: MailEnv) -> None:
    """RFC 2449 §8.1.1: -ERR [IN-USE] when another session holds the maildrop."""
    async with running_server(mail.config()) as (port, _), await plain(port) as first:
        await first.login("alice", "secret")
        async with await plain(port) as second:
            with pytest.raises(client.PopInUseError) as failed:
                await second.login("alice", "secret")
            assert failed.value.code == "IN-USE"
            assert "[IN-USE]" in str(failed.value)


async def test_login_delay_and_sys_temp(mail: MailEnv) -> None:
    """RFC 2449 §8.1.2 [LOGIN-DELAY]; RFC 3206 [SYS/TEMP] in a -ERR greeting."""
    async with running_server(mail.config(limits={"login_delay": 600})) as (port, _):
        async with await plain(port) as pop:
            await pop.login("alice", "secret")
        async with await plain(port) as pop:
            with pytest.raises(client.PopLoginDelayError) as failed:
                await pop.login("alice", "secret")
            assert failed.value.code == "LOGIN-DELAY"
    config = mail.config(limits={"max_connections": 1})
    async with running_server(config) as (port, _), await plain(port) as pop:
        await pop.capa()
        with pytest.raises(client.PopTemporaryError) as greeting:
            await plain(port)
        assert greeting.value.code == "SYS/TEMP" and greeting.value.verb == "greeting"


# --- TLS ---------------------------------------------------------------------------------


async def test_stls_and_implicit_tls(tls_mail: MailEnv, ca: trustme.CA) -> None:
    """RFC 2595 §4: STLS, then the capabilities are asked again (no STLS any more);
    RFC 8314 §3.3: implicit TLS. Certificates are verified against the test CA."""
    async with running_tls_server(tls_mail.config()) as (port, tls_port):
        pop = await client.connect("127.0.0.1", port, tls="starttls",
                                   ssl_context=trusting(ca), timeout=TIMEOUT)
        async with pop:
            assert pop.secure and pop.capabilities is None
            caps = await pop.capa()
            assert "STLS" not in caps and "USER" in caps
            await pop.login("alice", "secret")
            assert await pop.retr(2) == crlf(MESSAGES[1])
        async with await client.connect("127.0.0.1", tls_port, tls="implicit",
                                        ssl_context=trusting(ca), timeout=TIMEOUT) as pop:
            assert pop.secure
            assert await pop.login("alice", "secret") == "PLAIN"
            assert (await pop.stat())[0] == 3


async def test_tls_failures(tls_mail: MailEnv, mail: MailEnv) -> None:
    """A certificate from an unknown CA fails both ways with PopTlsError; so does STLS
    against a server that does not offer it."""
    stranger = trusting(trustme.CA())
    async with running_tls_server(tls_mail.config()) as (port, tls_port):
        for where, tls in ((tls_port, "implicit"), (port, "starttls")):
            with pytest.raises(client.PopTlsError, match="certificate verify failed"):
                await client.connect("127.0.0.1", where, tls=tls,  # type: ignore[arg-type]
                                     ssl_context=stranger, timeout=TIMEOUT)
    mail.settings.pop("tls")
    async with running_server(mail.config()) as (port, _):
        with pytest.raises(client.PopSecurityError, match="does not offer STLS"):
            await client.connect("127.0.0.1", port, tls="starttls", timeout=TIMEOUT)


# --- servers that fail -------------------------------------------------------------------


async def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(client.PopConnectionError, match="cannot connect"):
        await plain(port)


@contextlib.asynccontextmanager
async def scripted(*steps: tuple[int, bytes], hold: bool = False) -> AsyncIterator[int]:
    """A server on 127.0.0.1 that, for each step, reads that many lines, then sends the
    bytes; then it closes, or with `hold` waits for the client to go first."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            for lines, data in steps:
                for _ in range(lines):
                    await reader.readline()
                writer.write(data)
                await writer.drain()
            if hold:
                await reader.read()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_timeout() -> None:
    """A server that never greets: every read has a timeout."""
    async with scripted(hold=True) as port:
        with pytest.raises(client.PopTimeoutError):
            await client.connect("127.0.0.1", port, tls="none", timeout=0.2)


async def test_server_closing_mid_retr() -> None:
    async with scripted((0, b"+OK hi\r\n"), (1, b"+OK\r\n"), (1, b"+OK\r\n"),
                        (1, b"+OK 100 octets\r\nSubject: x\r\n\r\npart")) as port:
        pop = await plain(port)
        await pop.user_pass("u", "p")
        with pytest.raises(client.PopConnectionError, match="closed"):
            await pop.retr(1)
        assert pop.closed


@pytest.mark.parametrize("script", [b"HELLO\r\n", b"+OK " + b"x" * 20000 + b"\r\n",
                                    b"+OK hi\r\n+OK\r\n+OK\r\n+ c3VycHJpc2U=\r\n"])
async def test_protocol_violations(script: bytes) -> None:
    """Not a POP3 greeting; an endless line; a SASL challenge to STAT."""
    async with scripted((0, script), hold=True) as port:
        with pytest.raises(client.PopProtocolError):
            pop = await plain(port)
            await pop.user_pass("u", "p")
            await pop.stat()


class MemoryWriter:
    """A StreamWriter stand-in that records what is written, for a given peer."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.data = b""
        self.transport = self

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def get_extra_info(self, name: str) -> Any:
        return (self.peer, 110) if name == "peername" else None

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


async def memory_client(peer: str, server_says: bytes) -> tuple[PopClient, MemoryWriter]:
    reader = asyncio.StreamReader()
    reader.feed_data(server_says)
    writer = MemoryWriter(peer)
    pop = await client.open_streams(reader, writer,  # type: ignore[arg-type]
                                    server_hostname="pop.example.org", timeout=TIMEOUT)
    return pop, writer


async def test_no_plaintext_password_to_a_remote_host_without_tls() -> None:
    """RFC 8314 §5 spirit: USER/PASS and PLAIN are not sent unencrypted to a non-loopback
    address unless allowed; a challenge-response mechanism (CRAM-MD5) is."""
    capa = b"+OK\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n"
    pop, writer = await memory_client("192.0.2.7", b"+OK hi\r\n" + capa)
    with pytest.raises(client.PopPlaintextRefused):
        await pop.login("alice", "secret")
    with pytest.raises(client.PopPlaintextRefused):
        await pop.user_pass("alice", "secret")
    with pytest.raises(client.PopPlaintextRefused):
        await pop.auth("PLAIN", "alice", "secret")
    assert writer.data == b"CAPA\r\n"
    pop, writer = await memory_client("192.0.2.7", b"+OK hi\r\n" + capa + b"+OK\r\n+OK in\r\n")
    assert await pop.login("alice", "secret", allow_plaintext=True) == "PLAIN"
    pop, writer = await memory_client(
        "192.0.2.7", b"+OK hi\r\n+OK\r\nSASL PLAIN CRAM-MD5\r\n.\r\n+ PDEyMzQ1QGhvc3Q+\r\n+OK\r\n")
    assert await pop.login("alice", "secret") == "CRAM-MD5"
    assert b"secret" not in writer.data
    pop, writer = await memory_client("::ffff:127.0.0.1", b"+OK hi\r\n" + capa + b"+OK\r\n")
    assert await pop.login("alice", "secret") == "PLAIN"


async def test_connect_is_a_context_manager_and_quits(mail: MailEnv) -> None:
    """`async with connect(...)` without `await`: QUIT on the way out commits the DELE
    (RFC 1939 §6); `await connect(...)` still gives a client to manage by hand."""
    async with running_server(mail.config()) as (port, _):
        async with client.connect("127.0.0.1", port, tls="none", timeout=TIMEOUT) as pop:
            await pop.user_pass("alice", "secret")
            await pop.dele(1)
        assert pop.closed
        pop = await client.connect("127.0.0.1", port, tls="none", timeout=TIMEOUT)
        await pop.user_pass("alice", "secret")
        assert await pop.stat() == (2, sum(len(crlf(m.replace(b"\r\n", b"\n")))
                                           for m in MESSAGES[1:]))
        pop.close()


async def test_refused_commands_are_client_errors(mail: MailEnv) -> None:
    """A user name with a line break (RFC 1939 §3: it would be a second command) or a
    command in the wrong state is refused before anything is sent, as a PopUsageError;
    the session goes on."""
    async with running_server(mail.config()) as (port, _), await plain(port) as pop:
        with pytest.raises(client.PopUsageError):
            await pop.user_pass("alice\r\nDELE 1", "secret")
        with pytest.raises(client.PopUsageError):
            await pop.stat()  # not logged in
        await pop.user_pass("alice", "secret")
        assert (await pop.stat())[0] == 3


def test_login_strategy() -> None:
    """SCRAM-SHA-256 > SCRAM-SHA-1 > CRAM-MD5 > PLAIN > USER/PASS from CAPA; a server
    without CAPA gets USER/PASS; a plaintext-only server without TLS is refused
    (RFC 8314 §5 spirit), and one offering nothing known is unsupported."""
    from popbox.client.login import USER_PASS, choose

    sasl = {"SASL": ["PLAIN", "CRAM-MD5", "SCRAM-SHA-1"], "USER": []}
    assert choose(sasl, plaintext_ok=False, server="s") == "SCRAM-SHA-1"
    assert choose({"SASL": ["PLAIN"], "USER": []}, plaintext_ok=True, server="s") == "PLAIN"
    assert choose({}, plaintext_ok=True, server="s") == USER_PASS
    with pytest.raises(client.PopPlaintextRefused):
        choose({"SASL": ["PLAIN"], "USER": []}, plaintext_ok=False, server="s")
    with pytest.raises(client.PopUnsupportedError):
        choose({"SASL": ["GSSAPI"]}, plaintext_ok=True, server="s")
