"""The inner loops of `popbox.proto.wire` and `popbox.client.crlf`, in Python.

`popbox.proto._speedups` (C, built at install when a compiler is there) has the same five
functions; `wire.kernel` is whichever of the two is in use. Each works on one chunk; what
is carried between chunks stays with the caller.

Measured on 1 MB of mail (CPython 3.11): `bytes.replace`, `count` and `in` with a
two-byte pattern whose first byte is as common as "\\n" take 1-2.5 ms, because their
search cannot skip ahead; a compiled regular expression finds the same two bytes in
about 0.4 ms, and a one-byte `replace`/`in` (memchr) costs 0.3 ms or less. So every
two-byte pattern here goes through `re`.
"""

from __future__ import annotations

import re

_CRLF = re.compile(rb"\r\n")
_DOT_LINE = re.compile(rb"\n\.")


def encode(chunk: bytes, at_line_start: bool, no_nuls: bool) -> bytes:
    """The chunk as sent (RFC 1939 §3): CRLF line ends, a line-starting "." doubled, and
    with `no_nuls` every NUL as 0x80. A lone "\\r" is kept."""
    # Stuffing before the CRLF pass is the same (a "." starts a line after "\n" either
    # way) and scans fewer bytes.
    data = _DOT_LINE.sub(b"\n..", chunk)
    if at_line_start and data[:1] == b".":
        data = b"." + data
    if data.find(b"\r") >= 0:  # a quick scan saves a whole pass for LF-only stored mail
        data = _CRLF.sub(b"\n", data)
    data = data.replace(b"\n", b"\r\n")
    if no_nuls:
        data = data.replace(b"\0", b"\x80")
    return data


def message(head: bytes, data: bytes, size: int, no_nuls: bool) -> bytes | None:
    """A whole multi-line reply in one piece: `head` (the status line with its CRLF), the
    whole message `data` as `encode` sends it from a line start, a line end where it
    does not end with one, and ".\\r\\n"; None when the wire size of `data` (CRLF line
    ends, a final line end added, before stuffing) is not `size`."""
    tail = b"\r\n.\r\n" if data and not data.endswith(b"\n") else b".\r\n"
    if octets(data) + len(tail) - 3 != size:
        return None
    return head + encode(data, True, no_nuls) + tail


def octets(chunk: bytes) -> int:
    """len(chunk) once its line ends are CRLF."""
    crlf = _CRLF.subn(b"", chunk)[1] if chunk.find(b"\r") >= 0 else 0
    return len(chunk) + chunk.count(b"\n") - crlf


def to_lf(chunk: bytes) -> bytes:
    """CRLF line ends to LF; a "\\r" not followed by "\\n" is kept."""
    return _CRLF.sub(b"\n", chunk)


def unstuff(chunk: bytes, at_line_start: bool) -> bytes:
    """The first "." of every line removed (RFC 1939 §3, the client's side)."""
    if at_line_start and chunk[:1] == b".":
        chunk = chunk[1:]
    return _DOT_LINE.sub(b"\n", chunk)
