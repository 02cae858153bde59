"""The message as it crosses the wire (RFC 1939 §3 and §11).

Stores keep messages with LF (or CRLF) line ends, as MTAs write them. On the wire every
line ends with CRLF, a line starting with "." gets one more "." (byte-stuffing), and the
multi-line response ends with CRLF "." CRLF. A message whose last line lacks a line end
still gets one before the terminator.

The *size* of a message (STAT, LIST, the octets a client counts) is the length of the
message as sent, CRLF line ends included, before byte-stuffing and without the
terminator: exactly what `poplib` and fetchmail count after un-stuffing. `wire_size`,
`SizeCounter` and `MessageEncoder` implement one definition, so sizes always equal the
bytes actually sent.

All work is done with whole-chunk operations (no per-line Python loop), with at most one
byte ("\r" at a chunk end) carried between chunks; TOP is the one filter that looks at
line boundaries, and it stops looking once it is past the headers.

A small message read whole goes out as one piece (`kernel.message`: the status line, the
encoded message and its end in one allocation, its size checked in the same pass).

The per-chunk work (`kernel.encode`, `kernel.octets`, `kernel.message`) is compiled C,
`popbox.proto._speedups`, built from source when popbox is installed; where it was not
built, or with POPBOX_PURE_PYTHON=1 in the environment, it is the same code in Python,
`popbox.proto._native`. `KERNEL_NAME` says which ("c" or "python"). Both give the same
bytes for any input cut into any chunks (tests/proto/test_wire_kernels.py).
"""

from __future__ import annotations

import os
from typing import Protocol

from popbox.proto import _native

TERMINATOR = b".\r\n"
PURE_PYTHON_ENV = "POPBOX_PURE_PYTHON"


class Kernel(Protocol):
    """One chunk's work, whole (popbox.proto._native documents each function)."""

    def encode(self, chunk: bytes, at_line_start: bool, no_nuls: bool, /) -> bytes: ...
    def message(self, head: bytes, data: bytes, size: int, no_nuls: bool, /) -> bytes | None: ...
    def octets(self, chunk: bytes, /) -> int: ...
    def to_lf(self, chunk: bytes, /) -> bytes: ...
    def unstuff(self, chunk: bytes, at_line_start: bool, /) -> bytes: ...


def _kernel() -> Kernel:
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return _native
    try:
        from popbox.proto import _speedups
    except ImportError:  # built without a C compiler: the same code in Python
        return _native
    return _speedups


kernel: Kernel = _kernel()
KERNEL_NAME = "python" if kernel is _native else "c"


class CrCarry:
    """A "\\r" that ends one chunk may be the first half of a CRLF split between two
    chunks: `feed` holds it back and puts it in front of the next chunk, so every filter
    sees each CRLF whole. `held` says whether a "\\r" is waiting (the caller's `finish`
    decides what a final lone "\\r" becomes)."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = False

    def feed(self, chunk: bytes) -> bytes:
        if self.held:
            chunk = b"\r" + chunk
            self.held = False
        if chunk.endswith(b"\r"):
            self.held = True
            return chunk[:-1]
        return chunk


def wire_size(data: bytes) -> int:
    """Octets of `data` as sent: LF becomes CRLF and a missing final line end is added
    (what `SizeCounter` counts for `data` fed whole: a final lone "\\r" is one octet,
    then the line end)."""
    if not data:
        return 0
    return kernel.octets(data) + (0 if data.endswith(b"\n") else 2)


def to_wire(data: bytes) -> bytes:
    """`data` whole as a RETR sends it, without the terminator: CRLF line ends, lines
    starting with "." doubled, a final line end added where missing (what
    `MessageEncoder` sends for it, the final ".\\r\\n" left out). Its length is
    `wire_size(data)` plus one octet per doubled "."; NULs are kept (the "outlook-no-nuls"
    workaround is applied when sending)."""
    encoder = MessageEncoder()
    return encoder.feed(data) + encoder.finish()[: -len(TERMINATOR)]


class SizeCounter:
    """Streaming `wire_size`: feed the stored bytes in chunks, then `finish()`."""

    __slots__ = ("_carry", "_last", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._carry = CrCarry()
        self._last = b"\n"

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        chunk = self._carry.feed(chunk)
        if chunk:
            self._size += kernel.octets(chunk)
            self._last = chunk[-1:]

    def finish(self) -> int:
        size = self._size
        if self._carry.held:
            size += 1
            return size + 2
        if self._last != b"\n":
            size += 2
        return size


class MessageEncoder:
    """Turns stored message bytes into the body of a RETR/TOP multi-line response.

    `feed(chunk)` returns the bytes to send for that chunk; `finish()` returns the
    closing bytes: a line end if the message did not end with one, then ".\\r\\n".

    `no_nuls` is the "outlook-no-nuls" client workaround (as in Dovecot): NUL octets,
    which break old Outlook versions, are sent as 0x80. The size does not change.
    """

    __slots__ = ("_at_line_start", "_carry", "_no_nuls")

    def __init__(self, *, no_nuls: bool = False) -> None:
        self._at_line_start = True
        self._carry = CrCarry()
        self._no_nuls = no_nuls

    def feed(self, chunk: bytes) -> bytes:
        chunk = self._carry.feed(chunk)
        if not chunk:
            return b""
        data = kernel.encode(chunk, self._at_line_start, self._no_nuls)
        self._at_line_start = chunk[-1:] == b"\n"
        return data

    def feed_wire(self, chunk: bytes) -> bytes:
        """A chunk of a body already in wire form (`to_wire`): sent as it is, but for
        the "outlook-no-nuls" workaround. A body is fed either way, never both."""
        if chunk:
            self._at_line_start = chunk[-1:] == b"\n"
        return chunk.replace(b"\0", b"\x80") if self._no_nuls else chunk

    def finish(self) -> bytes:
        tail = b""
        if self._carry.held:
            self._carry.held = False
            tail = b"\r"
            self._at_line_start = False
        if not self._at_line_start:
            tail += b"\r\n"
        return tail + TERMINATOR


class TopFilter:
    """Keeps the headers, the empty line after them and `body_lines` lines of the body.

    RFC 1939 §7 (TOP): "the headers of the message, the blank line separating the headers
    from the body, and then the number of lines of the indicated message's body". A
    message without an empty line is all headers and is sent whole.
    """

    __slots__ = ("_done", "_in_headers", "_line", "_lines_left")

    # What the current header line holds so far: nothing, a lone "\r", or text.
    _EMPTY, _CR, _TEXT = 0, 1, 2

    def __init__(self, body_lines: int) -> None:
        self._lines_left = body_lines
        self._in_headers = True
        self._line = self._EMPTY
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, chunk: bytes) -> bytes:
        if self._done:
            return b""
        pos = 0
        if self._in_headers:
            pos = self._skip_headers(chunk)
            if self._in_headers:
                return chunk
        return chunk[:pos] + self._body(chunk[pos:])

    def _grow(self, segment: bytes) -> None:
        if not segment:
            return
        if self._line == self._EMPTY and segment == b"\r":
            self._line = self._CR
        else:
            self._line = self._TEXT

    def _skip_headers(self, chunk: bytes) -> int:
        """Scan for the empty line; return the offset just past it (or len(chunk))."""
        start = 0
        n = len(chunk)
        while start < n:
            nl = chunk.find(b"\n", start)
            self._grow(chunk[start:] if nl < 0 else chunk[start:nl])
            if nl < 0:
                return n
            start = nl + 1
            empty = self._line != self._TEXT
            self._line = self._EMPTY
            if empty:
                self._in_headers = False
                return start
        return n

    def _body(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        if self._lines_left <= 0:
            self._done = True
            return b""
        newlines = chunk.count(b"\n")
        if newlines < self._lines_left:
            self._lines_left -= newlines
            return chunk
        end = -1
        for _ in range(self._lines_left):
            end = chunk.find(b"\n", end + 1)
        self._lines_left = 0
        self._done = True
        return chunk[: end + 1]
