"""A postgres message row's ``body`` given back from its ``wire`` (schema migration 6).

``wire`` is the message as a RETR sends it (popbox.proto.wire.to_wire: CRLF line ends,
lines starting with "." doubled, a final line end added where missing). For most mail
the message as delivered follows from it, so the row keeps ``body`` NULL and says in
``body_from_wire`` how to get it back:

* `LF` (1): the message had LF line ends only (no CRLF; a lone CR is kept as it is)
  and ended with LF, as MTAs and LMTP deliver it: ``body`` is ``wire`` un-stuffed with
  CRLF turned into LF;
* `CRLF` (2): every line ended with CRLF, the last one too: ``body`` is ``wire``
  un-stuffed.

Anything else (no final line end, mixed line ends) keeps its ``body``: the wire form
cannot tell what it was. `form()` decides at delivery, and only drops a body that the
derivation gives back byte for byte. `Decoder` derives while streaming, chunk by chunk,
cut anywhere: a "\\r" that ends a chunk waits for the next one (CRLF split in two), and
whether a chunk starts a line is carried from the last one, so a ".." split from its
line start is un-stuffed all the same. The work is `popbox.proto.wire.kernel`'s
(compiled C where built).
"""

from __future__ import annotations

from popbox.proto.wire import CrCarry, kernel

LF = 1
CRLF = 2


def derive(wire: bytes, form: int) -> bytes:
    """The whole message as delivered, from its whole wire form."""
    decoder = Decoder(form)
    return decoder.feed(wire) + decoder.finish()


def form(message: bytes, wire: bytes) -> int | None:
    """How the message follows from `wire` (its `to_wire`), or None: keep the body."""
    if not message.endswith(b"\n"):
        return None
    if message.find(b"\r") < 0:  # LF only: the derivation is exact by construction
        return LF
    made = CRLF if message.endswith(b"\r\n") else LF
    return made if derive(wire, made) == message else None


class Decoder:
    """Streaming `derive`: `feed` wire chunks in order, then `finish`."""

    __slots__ = ("_at_line_start", "_carry", "_lf")

    def __init__(self, form: int) -> None:
        if form not in (LF, CRLF):
            raise ValueError(f"unknown body form {form!r}")
        self._lf = form == LF
        self._carry = CrCarry()
        self._at_line_start = True

    def feed(self, chunk: bytes) -> bytes:
        if self._lf:
            chunk = self._carry.feed(chunk)
        if not chunk:
            return b""
        data = kernel.unstuff(chunk, self._at_line_start)
        self._at_line_start = chunk[-1:] == b"\n"
        return kernel.to_lf(data) if self._lf else data

    def finish(self) -> bytes:
        held, self._carry.held = self._carry.held, False
        return b"\r" if held else b""
