"""HAProxy PROXY protocol, versions 1 and 2 (haproxy.org/download/2.9/doc/proxy-protocol.txt),
sans-IO: the bytes a trusted proxy sends before the client's own, in; the client's real
address (or "keep the connection's own" for LOCAL/UNKNOWN) and the leftover bytes, out.

`parse(data)` is called with everything received so far. It answers `NEED_DATA` until a
whole header is there, then a `ProxyHeader`, or a `ProxyError` for anything malformed —
the caller closes the connection then. Headers are bounded (v1: 107 octets, v2: 16 + 512
octets here, enough for addresses and the usual TLVs), so no input makes it buffer more.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX_BODY = 512


class Sentinel(enum.Enum):
    NEED_DATA = "need-data"


NEED_DATA = Sentinel.NEED_DATA


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    source: tuple[str, int] | None  # None: LOCAL / UNKNOWN, keep the connection's address
    rest: bytes  # what followed the header: the client's first bytes
    tls: bool = False  # v2 PP2_TYPE_SSL says the client's connection to the proxy was TLS


@dataclass(frozen=True, slots=True)
class ProxyError:
    reason: str


Result = ProxyHeader | ProxyError | Sentinel


def parse(data: bytes) -> Result:
    if data.startswith(V2_SIGNATURE[: len(data)]) and len(data) < len(V2_SIGNATURE):
        return NEED_DATA
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if V1_PREFIX.startswith(data[: len(V1_PREFIX)]):
        return _parse_v1(data)
    return ProxyError("no PROXY header")


def _port(text: bytes) -> int | None:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0:1] == b"0"):
        return None
    port = int(text)
    return port if port <= 65535 else None


def _parse_v1(data: bytes) -> Result:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        return NEED_DATA if len(data) < V1_MAX else ProxyError("v1 header too long")
    parts = data[:end].split(b" ")
    rest = data[end + 2 :]
    if parts[0] != b"PROXY" or len(parts) < 2:
        return ProxyError("v1: bad signature")
    if parts[1] == b"UNKNOWN":
        return ProxyHeader(None, rest)
    if parts[1] not in (b"TCP4", b"TCP6") or len(parts) != 6:
        return ProxyError("v1: bad protocol or field count")
    try:
        source = ipaddress.ip_address(parts[2].decode("ascii"))
        ipaddress.ip_address(parts[3].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return ProxyError("v1: bad address")
    if source.version != (4 if parts[1] == b"TCP4" else 6):
        return ProxyError("v1: address family mismatch")
    sport, dport = _port(parts[4]), _port(parts[5])
    if sport is None or dport is None:
        return ProxyError("v1: bad port")
    return ProxyHeader((str(source), sport), rest)


def _parse_v2(data: bytes) -> Result:
    if len(data) < 16:
        return NEED_DATA
    version_command, family, length = struct.unpack("!BBH", data[12:16])
    if version_command >> 4 != 2:
        return ProxyError("v2: bad version")
    if length > V2_MAX_BODY:
        return ProxyError("v2: header too long")
    if len(data) < 16 + length:
        return NEED_DATA
    body, rest = data[16 : 16 + length], data[16 + length :]
    command = version_command & 0x0F
    if command == 0x0:  # LOCAL: health checks from the proxy itself
        return ProxyHeader(None, rest)
    if command != 0x1:
        return ProxyError("v2: bad command")
    if family == 0x11:  # TCP over IPv4
        if length < 12:
            return ProxyError("v2: short IPv4 address block")
        source = str(ipaddress.IPv4Address(body[0:4]))
        (sport,) = struct.unpack("!H", body[8:10])
        tlvs = body[12:]
    elif family == 0x21:  # TCP over IPv6
        if length < 36:
            return ProxyError("v2: short IPv6 address block")
        source = str(ipaddress.IPv6Address(body[0:16]))
        (sport,) = struct.unpack("!H", body[32:34])
        tlvs = body[36:]
    elif family == 0x00:  # UNSPEC
        return ProxyHeader(None, rest)
    else:
        return ProxyError("v2: unsupported address family")
    tls = _client_used_tls(tlvs)
    if tls is None:
        return ProxyError("v2: malformed TLV")
    return ProxyHeader((source, sport), rest, tls)


PP2_TYPE_SSL = 0x20
PP2_CLIENT_SSL = 0x01


def _client_used_tls(tlvs: bytes) -> bool | None:
    """Walk the TLVs (§2.2.7): True when PP2_TYPE_SSL has the PP2_CLIENT_SSL bit (HAProxy's
    `send-proxy-v2-ssl`: it terminated TLS for this client); None when they are malformed."""
    tls = False
    offset = 0
    while offset < len(tlvs):
        if offset + 3 > len(tlvs):
            return None
        kind = tlvs[offset]
        (size,) = struct.unpack("!H", tlvs[offset + 1 : offset + 3])
        value = tlvs[offset + 3 : offset + 3 + size]
        if len(value) != size:
            return None
        if kind == PP2_TYPE_SSL and size >= 1 and value[0] & PP2_CLIENT_SSL:
            tls = True
        offset += 3 + size
    return tls
