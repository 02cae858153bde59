"""8-bit header octets for a client that did not say UTF8 (RFC 6856 §2.1), sans-IO.

RFC 6856 §2.1: a server must not send a message with UTF-8 header fields (RFC 6532) to a
client that has not issued UTF8. Rewriting such a message into 7-bit form (RFC 6857
downgrading) changes its size, and a POP3 size is promised exactly before the message is
sent (RFC 1939 §5 LIST, §7 RETR); refusing it with -ERR leaves it stuck on the server
for clients that will never say UTF8 (fetchmail, getmail). So popbox sends it with
every octet above 0x7F in the header section replaced by "?": the client gets a 7-bit
header and the exact size it was told, the body is untouched, and the stored message is
unchanged for a client that says UTF8. The header section ends at the first empty line
(LF or CRLF); a message without one is all header.
"""

from __future__ import annotations

_ASCII_ONLY = bytes(range(128)) + b"?" * 128


class HeaderGuard:
    """Feed a message as stored, chunk by chunk; get it back with 7-bit headers."""

    __slots__ = ("_in_headers", "_line")

    _EMPTY, _CR, _TEXT = 0, 1, 2  # what the current header line holds so far

    def __init__(self) -> None:
        self._in_headers = True
        self._line = self._EMPTY

    def feed(self, chunk: bytes) -> bytes:
        if not self._in_headers or not chunk:
            return chunk
        end = self._header_end(chunk)
        head = chunk[:end]
        if not head.isascii():
            head = head.translate(_ASCII_ONLY)
        return head if end == len(chunk) else head + chunk[end:]

    def _header_end(self, chunk: bytes) -> int:
        """The offset just past the empty line that ends the headers, or len(chunk)."""
        start, n = 0, len(chunk)
        while start < n:
            nl = chunk.find(b"\n", start)
            segment = chunk[start:] if nl < 0 else chunk[start:nl]
            if segment:
                cr = self._line == self._EMPTY and segment == b"\r"
                self._line = self._CR if cr else self._TEXT
            if nl < 0:
                return n
            start = nl + 1
            empty = self._line != self._TEXT
            self._line = self._EMPTY
            if empty:
                self._in_headers = False
                return start
        return n
