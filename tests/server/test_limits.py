"""Connection limits and the PROXY protocol, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import pytest

from helpers import Client, MailEnv, running_server
from popbox.proto.proxy import V2_SIGNATURE


async def test_per_ip_limit_gives_a_proper_err(env: MailEnv) -> None:
    """Past the per-address limit: `-ERR [SYS/TEMP]` and a close, not a reset; a slot
    frees when a session ends."""
    async with running_server(env.config(limits={"max_connections_per_ip": 2})) as (port, _):
        first, second = await Client.connect(port), await Client.connect(port)
        await first.line()
        await second.line()
        third = await Client.connect(port)
        assert await third.line() == b"-ERR [SYS/TEMP] Too many connections, try again later."
        assert await third.reader.read() == b""
        await third.close()
        await first.cmd("QUIT")
        await first.close()
        for _ in range(100):  # the server notices the close on its next loop turn
            fourth = await Client.connect(port)
            greeting = await fourth.line()
            await fourth.close()
            if greeting.startswith(b"+OK"):
                break
        assert greeting.startswith(b"+OK")
        await second.close()


def proxy_v2(source: str, sport: int) -> bytes:
    body = bytes(int(x) for x in source.split(".")) + bytes([127, 0, 0, 1])
    body += struct.pack("!HH", sport, 110)
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, len(body)) + body


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 110\r\n",
    proxy_v2("203.0.113.9", 40000),
])
async def test_proxy_header_from_trusted_network(
    env: MailEnv, header: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """The real client address comes from the header: it shows in the logs and the
    cleartext policy applies to it (203.0.113.9 is not local, so USER is refused)."""
    config = env.config(server={"proxy_networks": ["127.0.0.0/8"]})
    caplog.set_level(logging.INFO, "popbox")
    async with running_server(config) as (port, _):
        client = await Client.connect(port)
        client.writer.write(header + b"CAPA\r\n")
        assert (await client.line()).startswith(b"+OK popbox ready")
        assert (await client.line()).startswith(b"+OK Capability")
        caps = (await client.body()).split(b"\r\n")
        assert b"USER" not in caps
        assert (await client.cmd("USER alice")).startswith(b"-ERR [AUTH]")
        await client.close()
    assert "connect ip=203.0.113.9" in caplog.text


async def test_proxy_v2_ssl_tlv_marks_the_session_secure(env: MailEnv) -> None:
    """HAProxy terminating TLS (`send-proxy-v2-ssl`): PP2_TYPE_SSL with PP2_CLIENT_SSL makes
    the session count as TLS, so USER/PASS work for a remote client and STLS is not
    offered; without the TLV the same client is refused cleartext login."""
    config = env.config(server={"proxy_networks": ["127.0.0.0/8"]})
    ssl_tlv = bytes([0x20]) + struct.pack("!H", 5) + bytes([0x01]) + bytes(4)
    async with running_server(config) as (port, _):
        for tlv, secure in ((ssl_tlv, True), (b"", False)):
            client = await Client.connect(port)
            header = proxy_v2("203.0.113.9", 40000)
            header = header[:14] + struct.pack("!H", 12 + len(tlv)) + header[16:] + tlv
            client.writer.write(header)
            assert (await client.line()).startswith(b"+OK")
            _, caps = await client.multi("CAPA")
            assert (b"USER" in caps) is secure
            reply = await client.cmd("USER alice")
            assert reply.startswith(b"+OK" if secure else b"-ERR [AUTH]")
            if secure:
                assert (await client.cmd("PASS secret")).startswith(b"+OK Logged in")
            await client.close()


async def test_proxy_header_missing_or_bad_closes(env: MailEnv) -> None:
    config = env.config(server={"proxy_networks": ["127.0.0.0/8"]})
    async with running_server(config) as (port, _):
        bad = (b"USER alice\r\n", b"PROXY TCP4 nonsense\r\n", V2_SIGNATURE + b"\x11\x11\x00\x00")
        for data in bad:
            client = await Client.connect(port)
            client.writer.write(data)
            assert await asyncio.wait_for(client.reader.read(), 10) == b""
            await client.close()


async def test_proxy_header_from_untrusted_network_is_just_a_bad_command(env: MailEnv) -> None:
    """Only configured networks may speak for other addresses."""
    config = env.config(server={"proxy_networks": ["192.0.2.0/24"]})
    async with running_server(config) as (port, _):
        client = await Client.connect(port)
        assert (await client.line()).startswith(b"+OK")
        reply = await client.cmd("PROXY TCP4 203.0.113.9 127.0.0.1 40000 110")
        assert reply == b"-ERR Unknown command."
        assert (await client.cmd("USER alice")) == b"+OK"
        await client.close()


async def test_slow_proxy_header_times_out(env: MailEnv) -> None:
    config = env.config(
        server={"proxy_networks": ["127.0.0.0/8"]}, limits={"login_timeout": 0.3}
    )
    async with running_server(config) as (port, _):
        client = await Client.connect(port)
        client.writer.write(b"PROXY TCP4 ")
        assert await asyncio.wait_for(client.reader.read(), 10) == b""
        await client.close()


async def test_client_that_never_reads_is_cut_off_by_the_send_timeout(env: MailEnv) -> None:
    """Backpressure pauses the session; `limits.send_timeout` then ends it without UPDATE,
    and the maildrop lock is free again."""
    env.put("alice", b"Subject: big\n\n" + (b"y" * 999 + b"\n") * 20_000)  # 20 MB
    async with running_server(env.config(limits={"send_timeout": 0.5})) as (port, _):
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        stuck.connect(("127.0.0.1", port))  # a plain socket that nobody reads
        stuck.sendall(b"USER alice\r\nPASS secret\r\nRETR 1\r\nDELE 1\r\nQUIT\r\n")
        for _ in range(100):
            client = await Client.connect(port)
            reply = await client.login()
            await client.close()
            if not reply.startswith(b"-ERR [IN-USE]"):
                break
            await asyncio.sleep(0.1)
        assert reply.startswith(b"+OK Logged in. 1 messages")
        stuck.close()
