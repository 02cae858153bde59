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
_FIRST_WINDOW = 8192  # octets searched first for the empty line (then 8 times as many)


class HeaderGuard:
    """Feed a message as stored, chunk by chunk; get it back with 7-bit headers."""

    __slots__ = ("_in_headers", "_tail")

    def __init__(self) -> None:
        self._in_headers = True
        self._tail = b"\n"  # the header octets just before the next chunk (at most 2)

    @property
    def active(self) -> bool:
        """The header section has not ended yet: later chunks still need the guard."""
        return self._in_headers

    def feed(self, chunk: bytes) -> bytes:
        if not self._in_headers or not chunk:
            return chunk
        end = self._across(chunk)
        if end is None:
            end = _empty_line_end(chunk)
        if end is None:
            end = len(chunk)
            self._tail = (self._tail + chunk[-2:])[-2:]
        else:
            self._in_headers = False
        if chunk.isascii():  # the common case: nothing to change, nothing copied
            return chunk
        if end == len(chunk):
            return chunk.translate(_ASCII_ONLY)
        head = chunk[:end]
        if head.isascii():
            return chunk
        return head.translate(_ASCII_ONLY) + chunk[end:]

    def _across(self, chunk: bytes) -> int | None:
        """Where an empty line that began before this chunk ends in it, if one does."""
        tail = self._tail
        if tail.endswith(b"\n"):
            if chunk.startswith(b"\n"):
                return 1
            if chunk.startswith(b"\r\n"):
                return 2
        if tail == b"\n\r" and chunk.startswith(b"\n"):
            return 1
        return None


def ascii_header(chunk: bytes) -> bool:
    """The message's header section ends inside its first `chunk` and is all ASCII, so
    the guard has nothing to do: a short search and a scan of the header only."""
    if chunk.startswith((b"\n", b"\r\n")):
        return True
    end = _empty_line_end(chunk)
    return end is not None and chunk[:end].isascii()


def _empty_line_end(chunk: bytes) -> int | None:
    """The offset just past the first empty (or lone CR) line inside `chunk`, found with
    C-speed substring searches rather than a regular expression. The searches look at a
    growing window from the start: a header section ends within a few KB, and in a chunk
    in wire form (CRLF, where no "\n\n" is) a search over the whole chunk for the LF
    form would read all of it, 256 KiB for a big message."""
    size, start, stop = len(chunk), 0, min(len(chunk), _FIRST_WINDOW)
    while True:  # each turn finds the matches that begin in [start, stop)
        lf = chunk.find(b"\n\n", start, stop + 1)
        crlf = chunk.find(b"\n\r\n", start, (stop if lf < 0 else lf) + 2)
        if crlf >= 0:
            return crlf + 3
        if lf >= 0:
            return lf + 2
        if stop >= size:
            return None
        start, stop = stop, min(size, stop * 8)
