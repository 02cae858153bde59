"""Line ends: POP3 delivers messages with CRLF (RFC 1939 §3); Maildir and mbox files keep
LF, as MTAs write them. `to_lf` converts a whole message, `LfConverter` a stream of pieces
(a CR at the end of one piece is held until the next shows whether LF follows). The
conversion itself is `proto.wire.kernel.to_lf` (C when built)."""

from __future__ import annotations

from popbox.proto import wire
from popbox.proto.wire import CrCarry


def to_lf(data: bytes) -> bytes:
    """CRLF line ends to LF; a CR not followed by LF is kept."""
    return wire.kernel.to_lf(data)


class LfConverter:
    __slots__ = ("_carry",)

    def __init__(self) -> None:
        self._carry = CrCarry()

    def feed(self, chunk: bytes) -> bytes:
        return wire.kernel.to_lf(self._carry.feed(chunk))

    def finish(self) -> bytes:
        tail, self._carry.held = (b"\r" if self._carry.held else b""), False
        return tail
