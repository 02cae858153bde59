"""PROXY protocol v1/v2 parser (haproxy proxy-protocol.txt §2.1, §2.2): whole, byte by
byte, with trailing data; arbitrary input never raises."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popbox.proto.proxy import NEED_DATA, V2_SIGNATURE, ProxyError, ProxyHeader, parse


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


V2_TCP4 = v2(1, 0x11, bytes([203, 0, 113, 9, 10, 0, 0, 1]) + struct.pack("!HH", 5555, 110))
V2_TCP6 = v2(1, 0x21, bytes.fromhex("20010db8" + "00" * 11 + "01") + b"\0" * 16
             + struct.pack("!HH", 6666, 110))

GOOD = [
    (b"PROXY TCP4 203.0.113.9 10.0.0.1 5555 110\r\n", ("203.0.113.9", 5555)),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 6666 110\r\n", ("2001:db8::1", 6666)),
    (b"PROXY UNKNOWN\r\n", None),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None),
    (V2_TCP4, ("203.0.113.9", 5555)),
    (V2_TCP6, ("2001:db8::1", 6666)),
    (v2(0, 0x00, b""), None),
    (v2(1, 0x11, bytes(12) + b"\x03\x00\x04abcd"), ("0.0.0.0", 0)),  # with a TLV
]


@pytest.mark.parametrize(("header", "source"), GOOD)
def test_headers_whole_and_byte_by_byte(header: bytes, source: tuple[str, int] | None) -> None:
    assert parse(header + b"CAPA\r\n") == ProxyHeader(source, b"CAPA\r\n")
    for cut in range(len(header)):
        assert parse(header[:cut]) is NEED_DATA, cut


def test_v2_ssl_tlv() -> None:
    """§2.2.7: PP2_TYPE_SSL (0x20) with the PP2_CLIENT_SSL bit; other TLVs are skipped."""
    addresses = bytes([203, 0, 113, 9, 10, 0, 0, 1]) + struct.pack("!HH", 5555, 995)
    alpn = b"\x01" + struct.pack("!H", 4) + b"pop3"
    ssl_tlv = b"\x20" + struct.pack("!H", 5) + b"\x01" + bytes(4)
    result = parse(v2(1, 0x11, addresses + alpn + ssl_tlv))
    assert isinstance(result, ProxyHeader) and result.tls
    not_ssl = b"\x20" + struct.pack("!H", 5) + b"\x00" + bytes(4)
    result = parse(v2(1, 0x11, addresses + not_ssl))
    assert isinstance(result, ProxyHeader) and not result.tls
    assert isinstance(parse(v2(1, 0x11, addresses + b"\x20\x00\x09\x01")), ProxyError)


BAD = [
    b"GET / HTTP/1.0\r\n",
    b"USER alice\r\n",
    b"PROXY TCP4 203.0.113.9 10.0.0.1 5555\r\n",
    b"PROXY TCP4 2001:db8::1 10.0.0.1 5555 110\r\n",
    b"PROXY TCP4 999.0.0.1 10.0.0.1 5555 110\r\n",
    b"PROXY TCP4 1.2.3.4 10.0.0.1 65536 110\r\n",
    b"PROXY TCP4 1.2.3.4 10.0.0.1 -1 110\r\n",
    b"PROXY UDP4 1.2.3.4 10.0.0.1 1 110\r\n",
    b"PROXY " + b"x" * 200,
    v2(1, 0x11, b"\0" * 4),
    v2(2, 0x11, bytes(12)),
    v2(1, 0x31, bytes(216)),
    V2_SIGNATURE + struct.pack("!BBH", 0x11, 0x11, 12) + bytes(12),
    V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 60000),
]


@pytest.mark.parametrize("data", BAD)
def test_malformed_headers_are_errors(data: bytes) -> None:
    assert isinstance(parse(data), ProxyError)


@given(st.binary(max_size=300))
def test_never_raises(data: bytes) -> None:
    result = parse(data)
    assert result is NEED_DATA or isinstance(result, ProxyHeader | ProxyError)


@given(st.binary(max_size=600))
def test_v2_prefix_never_raises(body: bytes) -> None:
    result = parse(V2_SIGNATURE + body)
    assert result is NEED_DATA or isinstance(result, ProxyHeader | ProxyError)
