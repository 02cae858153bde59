"""The server side of a POP3 conversation, sans-IO.

    conn = ServerConnection()
    out = conn.send(Ok("ready"))           # the greeting
    conn.receive_data(bytes_from_socket)   # b"" means the client closed
    while (event := conn.next_event()) is not NEED_DATA:
        out += conn.send(reply_for(event)) # exactly one reply per command, in order

Framing: lines end with CRLF; a bare LF is accepted too. The input buffer never holds more
than `MAX_SASL_LINE` octets of an unfinished line: the rest of an over-long line is
discarded as it arrives and the line is reported once as `Invalid(LINE_TOO_LONG)`.

Pipelining (RFC 2449 §6.6): every complete line already received is a command to answer
in order; `next_event()` hands out the next one only after the previous one was answered
(it says PAUSED meanwhile), so replies can never be reordered or doubled.

State (RFC 1939 §3) is derived from the replies the server sends: +OK to PASS, APOP or
AUTH enters TRANSACTION; QUIT in TRANSACTION enters UPDATE, and any reply to QUIT ends the
conversation. +OK to STLS throws away everything received after the STLS line (RFC 2595
§4, the CVE-2011-0411 command-injection class); the shell then starts TLS.
"""

from __future__ import annotations

import base64
from collections import deque
from typing import assert_never

from popbox.proto import events as ev
from popbox.proto.commands import MAX_SASL_LINE, parse_command, parse_sasl_response
from popbox.proto.types import State

_TOO_LONG = object()


class ServerConnection:
    __slots__ = ("_buffer", "_discarding", "_eof", "_lines", "_pending", "_sasl", "_state",
                 "_user_accepted", "utf8")

    def __init__(self) -> None:
        self._state = State.AUTHORIZATION
        self._buffer = bytearray()
        self._lines: deque[bytes | object] = deque()
        self._discarding = False
        self._eof = False
        self._pending: ev.Event | None = None
        self._sasl = False
        self._user_accepted = False
        self.utf8 = False

    @property
    def state(self) -> State:
        return self._state

    @property
    def buffered(self) -> int:
        """Octets of an unfinished line held in memory (never more than MAX_SASL_LINE)."""
        return len(self._buffer)

    @property
    def in_sasl(self) -> bool:
        """True while an AUTH exchange waits for the client's next response."""
        return self._sasl

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
        if not isinstance(line, bytes):
            event = ev.Invalid(ev.Problem.LINE_TOO_LONG)
        elif self._sasl:
            event = parse_sasl_response(line)
        else:
            event = parse_command(line, self._state)
        if isinstance(event, ev.Pass) and not self._user_accepted:
            event = ev.Invalid(ev.Problem.PASS_WITHOUT_USER, "PASS")
        self._user_accepted = False
        if isinstance(event, ev.Quit) and self._state is State.TRANSACTION:
            self._state = State.UPDATE
        self._pending = event
        return event

    # --- output ---

    def send(self, reply: ev.Reply) -> bytes:
        """Bytes for `reply`; answers the pending command, if any, and moves the state."""
        pending, self._pending = self._pending, None
        self._advance(pending, reply)
        match reply:
            case ev.Ok(text):
                return _status(b"+OK", text)
            case ev.Err(text, code):
                return _status(b"-ERR", f"[{code.value}] {text}" if code else text)
            case ev.MultiLine(text, lines):
                return _status(b"+OK", text) + _multiline(lines)
            case ev.Challenge(data):
                return b"+ " + base64.b64encode(data) + b"\r\n"
            case _:
                assert_never(reply)

    def _advance(self, pending: ev.Event | None, reply: ev.Reply) -> None:
        ok = isinstance(reply, ev.Ok | ev.MultiLine)
        self._sasl = isinstance(reply, ev.Challenge)
        match pending:
            case ev.User():
                self._user_accepted = ok
            case ev.Pass() | ev.Apop() | ev.Auth() | ev.SaslResponse() if ok:
                if isinstance(pending, ev.Auth) and pending.mechanism is None:
                    return  # a bare AUTH only lists mechanisms
                self._state = State.TRANSACTION
            case ev.Quit():
                self._state = State.CLOSED
            case ev.Stls() if ok:
                self._lines.clear()
                self._buffer.clear()
                self._discarding = False
            case ev.Utf8() if ok:
                self.utf8 = True
            case _:
                pass

    def close(self) -> None:
        """The shell ended the conversation (timeout, shutdown, too many errors)."""
        self._state = State.CLOSED
        self._pending = None


def _clean(text: str) -> bytes:
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")


def _status(indicator: bytes, text: str) -> bytes:
    return indicator + b" " + _clean(text) + b"\r\n" if text else indicator + b"\r\n"


def _multiline(lines: tuple[str, ...]) -> bytes:
    if not lines:
        return b".\r\n"
    body = "\r\n".join(lines)
    # Fast path for long listings (LIST/UIDL of 100,000 messages): one join, one encode,
    # when no line holds a line break of its own or starts with the termination octet.
    if (
        body.count("\n") == len(lines) - 1
        and body.count("\r") == len(lines) - 1
        and not body.startswith(".")
        and "\n." not in body
    ):
        return body.encode("utf-8", "replace") + b"\r\n.\r\n"
    out = [b"." + raw if raw.startswith(b".") else raw for raw in map(_clean, lines)]
    out.append(b".")
    return b"\r\n".join(out) + b"\r\n"
