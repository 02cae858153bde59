"""The server side of a POP3 conversation, sans-IO.

    conn = ServerConnection()
    out = conn.send(Ok("ready"))           # the greeting
    conn.receive_data(bytes_from_socket)   # b"" means the client closed
    while (event := conn.next_event()) is not NEED_DATA:
        out += conn.send(reply_for(event)) # exactly one reply per command, in order

Framing: lines end with CRLF; a bare LF is accepted too. The input buffer never holds more
than `MAX_SASL_LINE` octets of an unfinished line: the rest of an over-long line is
discarded as it arrives and the line is reported once as `Invalid(LINE_TOO_LONG)`.

Replies (RFC 1939 §3): `Ok`, `Err` or `Continuation` answers the pending command. When
the command's shape (`commands.reply_shape`) is a listing, `Ok` is followed by `Lines`
(byte-stuffed here) and `End`; when it is a message (RETR, TOP), by `Data` pieces of the
message as stored and `End`: the core turns LF into CRLF, stuffs and terminates them
(`proto.wire.MessageEncoder`), so every byte on the wire comes from `send`. A store
that keeps bodies in wire form sends `Data(wire=True)` pieces: passed on unchanged (but
for the NUL workaround) and terminated. A message read whole may instead go out in one
piece, +OK line, body and end (`send_message`), after its size is checked in the same
pass. Anything else is a `LocalProtocolError`.

A TRANSACTION command line that names a message ("RETR 12") is parsed once per process
and its event shared (events are frozen): the next session's "RETR 12" is a dictionary
lookup.

Pipelining (RFC 2449 §6.6): every complete line already received is a command to answer
in order; `next_event()` hands out the next one only after the previous one was answered
in full (it says PAUSED meanwhile), so replies can never be reordered or doubled.

State (RFC 1939 §3) follows the table in `proto.state`, from the replies the server
sends. +OK to STLS throws away everything received after the STLS line (RFC 2595 §4, the
CVE-2011-0411 command-injection class); the shell then starts TLS. PASS is legal only
right after +OK to USER (RFC 1939 §7).
"""

from __future__ import annotations

import base64
from collections import deque
from typing import assert_never

from popbox.proto import events as ev
from popbox.proto.commands import (
    MAX_SASL_LINE,
    TABLE,
    Shape,
    parse_command,
    parse_sasl_response,
)
from popbox.proto.commands import reply_shape as _reply_shape
from popbox.proto.state import ON_ERR, ON_OK, ON_RECEIVE
from popbox.proto.types import State
from popbox.proto.wire import TERMINATOR, MessageEncoder, kernel

_TOO_LONG = object()


class ServerConnection:
    __slots__ = ("_buffer", "_discarding", "_enabled", "_encoder", "_eof", "_lines",
                 "_listing", "_no_nuls", "_pending", "_sasl", "_state", "_user_accepted")

    def __init__(self, *, no_nuls: bool = False, enabled: frozenset[str] = frozenset()) -> None:
        """`no_nuls`: send NUL octets in message bodies as 0x80 (`MessageEncoder`);
        `enabled`: the optional commands of the table this server answers (LAST)."""
        self._enabled = enabled
        self._state = State.AUTHORIZATION
        self._buffer = bytearray()
        self._lines: deque[bytes | object] = deque()
        self._discarding = False
        self._eof = False
        self._pending: ev.Event | None = None
        self._sasl = False
        self._user_accepted = False
        self._no_nuls = no_nuls
        self._listing = False  # after +OK to a listing, until End
        self._encoder: MessageEncoder | None = None  # after +OK to RETR/TOP, until End

    @property
    def state(self) -> State:
        return self._state

    @property
    def buffered(self) -> int:
        """Octets of an unfinished line held in memory (never more than MAX_SASL_LINE)."""
        return len(self._buffer)

    @property
    def replying(self) -> bool:
        """A multi-line reply is open: only its `Lines` or `Data`, then `End`, may follow."""
        return self._listing or self._encoder is not None

    # --- input ---

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
            return
        if self._state is State.CLOSED:
            return
        if self._discarding:
            nl = data.find(b"\n")
            if nl < 0:
                return
            self._discarding = False
            data = data[nl + 1 :]
        buf = self._buffer
        buf += data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            end = nl - 1 if nl > start and buf[nl - 1] == 0x0D else nl
            if end - start + 2 > MAX_SASL_LINE:
                self._lines.append(_TOO_LONG)
            else:
                self._lines.append(bytes(buf[start:end]))
            start = nl + 1
        del buf[:start]
        if len(buf) > MAX_SASL_LINE:
            buf.clear()
            self._lines.append(_TOO_LONG)
            self._discarding = True

    def next_event(self) -> ev.Event | ev.Sentinel:
        if self._pending is not None:
            return ev.PAUSED
        if self._state is State.CLOSED:
            return ev.NEED_DATA
        if not self._lines:
            if self._eof:
                self._state = State.CLOSED
                return ev.ConnectionClosed()
            return ev.NEED_DATA
        line = self._lines.popleft()
        event: ev.Event
        if self._state is State.TRANSACTION and (known := _PARSED.get(line)) is not None:
            self._pending = known  # (a line parsed before: not PASS, no state to move)
            self._user_accepted = False
            return known
        if not isinstance(line, bytes):
            event = ev.Invalid(ev.Problem.LINE_TOO_LONG)
        elif self._sasl:
            event = parse_sasl_response(line)
        else:
            event = parse_command(line, self._state, self._enabled)
            if event.__class__ in _SHARED and self._state is State.TRANSACTION:
                if len(_PARSED) >= _PARSED_MAX:
                    _PARSED.clear()
                _PARSED[line] = event
        if isinstance(event, ev.Pass) and not self._user_accepted:
            event = ev.Invalid(ev.Problem.PASS_WITHOUT_USER, "PASS")
        self._user_accepted = False
        moves = ON_RECEIVE.get(type(event))
        if moves is not None:
            self._state = _move(moves, self._state)
        self._pending = event
        return event

    def peek_retr(self) -> ev.Retr | None:
        """The next event if it is a RETR whose line was parsed before (TRANSACTION state,
        nothing pending), without taking it: `next_event` gives it next. None otherwise,
        or when there is no complete line."""
        if self._pending is not None or self._state is not State.TRANSACTION or not self._lines:
            return None
        known = _PARSED.get(self._lines[0])
        return known if known.__class__ is ev.Retr else None

    @property
    def has_input(self) -> bool:
        """Whether a line or the end of input waits to be taken by `next_event`."""
        return bool(self._lines) or self._eof

    # --- output ---

    def send(self, reply: ev.Reply) -> bytes:
        """Bytes for `reply`: the status line that answers the pending command (if any)
        and moves the state, or a piece of the multi-line reply it opened."""
        encoder = self._encoder
        if encoder is not None:
            if type(reply) is ev.Data:
                return encoder.feed_wire(reply.data) if reply.wire else encoder.feed(reply.data)
            if type(reply) is ev.End:
                self._encoder = self._pending = None
                return encoder.finish()
            raise ev.LocalProtocolError(f"{type(reply).__name__} inside a message body")
        if self._listing:
            if type(reply) is ev.Lines:
                return _stuffed(reply.lines)
            if type(reply) is ev.End:
                self._listing = False
                self._pending = None
                return b".\r\n"
            raise ev.LocalProtocolError(f"{type(reply).__name__} inside a listing")
        pending = self._pending
        match reply:
            case ev.Ok(text):
                shape = _MULTI.get(type(pending), Shape.SINGLE)  # (inline: a call per reply)
                if shape is None:
                    assert isinstance(pending, ev.List | ev.Uidl | ev.Auth | ev.Lang)
                    shape = _reply_shape(pending)
                if shape is Shape.MESSAGE:
                    self._encoder = MessageEncoder(no_nuls=self._no_nuls)
                elif shape is Shape.LISTING:
                    self._listing = True
                else:
                    self._pending = None
                    self._advance(pending, ok=True)
                return _status(b"+OK", text)
            case ev.Err(text, code):
                self._pending = None
                self._advance(pending, ok=False)
                return _status(b"-ERR", f"[{code}] {text}" if code else text)
            case ev.Continuation(data):
                self._pending = None
                self._sasl = True
                return b"+ " + base64.b64encode(data) + b"\r\n"
            case ev.Lines() | ev.Data() | ev.End():
                raise ev.LocalProtocolError(f"{type(reply).__name__} without a multi-line +OK")
            case _:
                assert_never(reply)

    def send_message(self, text: str, data: bytes, size: int) -> bytes | None:
        """The whole answer to the pending RETR or TOP in one piece: the bytes of
        `send(Ok(text))`, `send(Data(data))` and `send(END)`, for a message read whole.
        None, with nothing sent and the command still pending, when the wire size of
        `data` (`wire.wire_size`) is not `size`, the size the client was promised."""
        if self._encoder is not None or self._listing or (
                self._pending.__class__ not in (ev.Retr, ev.Top)):
            raise ev.LocalProtocolError("a whole message answers only a pending RETR or TOP")
        out = kernel.message(_status(b"+OK", text), data, size, self._no_nuls)
        if out is not None:
            self._pending = None
        return out

    def send_wire(self, text: str, wire: bytes) -> bytes:
        """The whole answer to the pending RETR in one piece, for a message held in wire
        form (popbox.proto.wire.to_wire): the bytes of `send(Ok(text))`,
        `send(Data(wire, wire=True))` and `send(END)`."""
        if self._encoder is not None or self._listing or self._pending.__class__ is not ev.Retr:
            raise ev.LocalProtocolError("a message in wire form answers only a pending RETR")
        self._pending = None
        if self._no_nuls:
            wire = wire.replace(b"\0", b"\x80")
        end = TERMINATOR if not wire or wire[-1:] == b"\n" else b"\r\n" + TERMINATOR
        return b"".join((_status(b"+OK", text), wire, end))

    def _advance(self, pending: ev.Event | None, *, ok: bool) -> None:
        self._sasl = False
        moves = (ON_OK if ok else ON_ERR).get(type(pending))
        if moves is not None:
            self._state = _move(moves, self._state)
        match pending:
            case ev.User():
                self._user_accepted = ok
            case ev.Stls() if ok:
                self._lines.clear()
                self._buffer.clear()
                self._discarding = False
            case _:
                pass

    def close(self) -> None:
        """The shell ended the conversation (timeout, shutdown, too many errors)."""
        self._state = State.CLOSED
        self._pending = None
        self._encoder = None
        self._listing = False


# The commands whose +OK may open a multi-line reply; a class hashes in C, so the common
# single-line commands cost one dictionary miss (and RETR, TOP and CAPA one hit).
_MULTI: dict[type, Shape | None] = {
    spec.event: spec.shape for spec in TABLE.values() if spec.shape is not Shape.SINGLE
}
_MULTI[ev.List] = _MULTI[ev.Uidl] = _MULTI[ev.Auth] = _MULTI[ev.Lang] = None  # it depends


# TRANSACTION command lines that name a message ("RETR 12", "DELE 3"), parsed once and
# shared by every connection: events are frozen, these commands carry no secret, move no
# state on receipt and parse alike whatever the optional commands. A session of RETRs
# then costs one dictionary lookup per command. Bounded: emptied when full.
_SHARED = frozenset({ev.Retr, ev.Top, ev.Dele, ev.List, ev.Uidl})
_PARSED: dict[bytes | object, ev.Event] = {}
_PARSED_MAX = 4096


def _move(moves: tuple[tuple[State, State], ...], state: State) -> State:
    for before, after in moves:
        if before is state:
            return after
    return state


def _clean(text: str) -> bytes:
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")


def _status(indicator: bytes, text: str) -> bytes:
    return indicator + b" " + _clean(text) + b"\r\n" if text else indicator + b"\r\n"


def _stuffed(lines: tuple[str, ...]) -> bytes:
    """Listing lines on the wire: each ended by CRLF, a leading "." doubled."""
    if not lines:
        return b""
    body = "\r\n".join(lines)
    # Fast path for long listings (LIST/UIDL of 100,000 messages): one join, one encode,
    # when no line holds a line break of its own or starts with the termination octet.
    if (
        body.count("\n") == len(lines) - 1
        and body.count("\r") == len(lines) - 1
        and not body.startswith(".")
        and "\n." not in body
    ):
        return body.encode("utf-8", "replace") + b"\r\n"
    out = [b"." + raw if raw.startswith(b".") else raw for raw in map(_clean, lines)]
    out.append(b"")
    return b"\r\n".join(out)
