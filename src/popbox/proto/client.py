"""The client side of a POP3 conversation, sans-IO.

    conn = ClientConnection()
    conn.receive_data(bytes_from_socket)      # b"" means the server closed
    event = conn.next_event()                 # Ok(text, command=None): the greeting
    out = conn.send(ev.User("alice"))         # bytes to write; the reply is now expected
    out += conn.send(ev.Stat())               # pipelining: replies come back in order

The replies are the events the server core sends (`proto.events`), with the `command`
each answers filled in. What a reply looks like comes from the shared command table
(`commands.reply_shape`): CAPA, RETR and TOP are multi-line after +OK; LIST and UIDL are
multi-line only without an argument; AUTH with a mechanism is a SASL exchange (`+ base64`
challenges until +OK or -ERR) and a bare AUTH is a multi-line listing. -ERR is always
one line (RFC 2449 §3). RETR and TOP bodies come out as `Data` pieces as they arrive (a
100 MB message is never held whole); listings as `Lines`, decoded as UTF-8.

Framing (RFC 1939 §3): status and listing lines end with CRLF (a bare LF is accepted) and
are at most `max_line` octets: a longer one is a `ProtocolError`, so an endless line costs
at most that much memory. In a message body, a line starting with "." loses that octet,
and "." CRLF at the start of a line ends the body; the terminator is found wherever the
pieces split it, by holding back at most two octets ("." and "\\r" at a line start).

Response codes (RFC 2449 §8, RFC 3206): `[IN-USE]`, `[AUTH]`, `[SYS/TEMP]`, ... at the
start of the text are split off into `code`; unknown codes are kept as they are.

State (RFC 1939 §3) follows the replies, through the table both roles share
(`proto.state`): +OK to PASS, APOP or a SASL exchange enters TRANSACTION; any reply to
QUIT ends the conversation. A command not legal in the current
state is refused locally (`LocalProtocolError`), unless a reply that may change the state
is still outstanding. Data received after +OK to STLS, before TLS starts, is a protocol
error (RFC 2595 §4: it could only have been injected by someone on the path).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import deque
from dataclasses import dataclass
from typing import assert_never

from popbox.proto import events as ev
from popbox.proto import wire
from popbox.proto.commands import (
    MAX_COMMAND_LINE,
    MAX_SASL_LINE,
    Shape,
    reply_shape,
    spec_of,
    verb,
)
from popbox.proto.events import LocalProtocolError
from popbox.proto.state import STATE_CHANGERS, after_reply
from popbox.proto.types import MsgNo, State, Uidl

__all__ = ["ClientConnection", "LocalProtocolError", "apop_timestamp", "capabilities", "encode",
           "listing", "numbers", "split_code", "uidl_line", "uidl_listing", "verb"]

MAX_LINE = MAX_SASL_LINE  # a status or listing line, CRLF included (RFC 2449 §4 says 512)

_CODE = re.compile(rb"\[([\x21-\x2e\x30-\x5c\x5e-\x7e]+(?:/[\x21-\x2e\x30-\x5c\x5e-\x7e]+)*)\] ?")
_TIMESTAMP = re.compile(r"<[^<>\s]*@[^<>\s]*>")
# Multi-byte patterns through re: bytes.find/replace search them slowly in mail (proto.wire)
_TERMINATOR = re.compile(rb"\n\.\r\n")


@dataclass(slots=True)
class _Expected:
    command: ev.Command | None  # None: the greeting
    shape: Shape


def apop_timestamp(greeting: str) -> str | None:
    """The `<...@...>` timestamp an APOP-capable server puts in its greeting (RFC 1939 §7)."""
    match = _TIMESTAMP.search(greeting)
    return match.group() if match else None


def split_code(text: bytes) -> tuple[str | None, str]:
    """`[SYS/TEMP] text` -> ("SYS/TEMP", "text"); text without a code -> (None, text)."""
    match = _CODE.match(text)
    code = match.group(1).decode("ascii") if match else None
    rest = text[match.end() :] if match else text
    return code, rest.decode("utf-8", "replace")


# --- what the replies say (RFC 1939 §§5, 7; RFC 2449 §5) ---


def numbers(text: str) -> tuple[int, int] | None:
    """The two numbers that open a STAT reply ("count octets") or a LIST line ("msg
    octets"); anything after them is ignored (RFC 1939 §5); None when malformed."""
    parts = text.split(None, 2)
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return int(parts[0]), int(parts[1])


def listing(lines: list[str]) -> dict[MsgNo, int] | None:
    """A LIST listing: message number -> octets; None if any line is malformed."""
    sizes: dict[MsgNo, int] = {}
    for line in lines:
        pair = numbers(line)
        if pair is None:
            return None
        sizes[MsgNo(pair[0])] = pair[1]
    return sizes


def uidl_line(text: str) -> tuple[MsgNo, Uidl] | None:
    """A UIDL line or reply, "msg unique-id" (RFC 1939 §7); None when malformed."""
    parts = text.split()
    if len(parts) < 2 or not parts[0].isdigit():
        return None
    return MsgNo(int(parts[0])), Uidl(parts[1])


def uidl_listing(lines: list[str]) -> dict[MsgNo, Uidl] | None:
    """A UIDL listing: message number -> unique-id; None if any line is malformed."""
    uidls: dict[MsgNo, Uidl] = {}
    for line in lines:
        pair = uidl_line(line)
        if pair is None:
            return None
        uidls[pair[0]] = pair[1]
    return uidls


def capabilities(lines: list[str]) -> dict[str, list[str]]:
    """A CAPA listing (RFC 2449 §5): capability name, upper-cased -> its arguments."""
    caps: dict[str, list[str]] = {}
    for line in lines:
        name, *args = line.split() or [""]
        if name:
            caps[name.upper()] = args
    return caps


def _text(value: str, *, spaces: bool = False) -> bytes:
    data = value.encode("utf-8")
    if not data or any(c in data for c in (b"\r\n\0" if spaces else b"\r\n\0 ")):
        raise LocalProtocolError(f"not a valid argument: {value!r}")
    return data


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def encode(command: ev.Command) -> bytes:
    """The command line for `command`, CRLF included."""
    match command:
        case ev.User(name):
            line = b"USER " + _text(name, spaces=True)  # RFC 1939 §7: one argument
        case ev.Pass(secret):
            if not secret or any(c in secret for c in b"\r\n\0"):
                raise LocalProtocolError("PASS: the password is empty or has CR, LF or NUL")
            line = b"PASS " + secret
        case ev.Apop(name, digest):
            line = b"APOP " + _text(name) + b" " + _text(digest)
        case ev.Auth(mechanism, initial):
            line = b"AUTH"
            if mechanism is not None:
                line += b" " + _text(mechanism)
                if initial is not None:  # RFC 5034 §4: "=" is an empty initial response
                    line += b" " + (_b64(initial) if initial else b"=")
        case ev.SaslResponse(data):
            line = _b64(data)
        case ev.SaslCancel():
            line = b"*"
        case ev.List(msg) | ev.Uidl(msg):
            line = verb(command).encode() + (b"" if msg is None else b" %d" % msg)
        case ev.Retr(msg) | ev.Dele(msg):
            line = verb(command).encode() + b" %d" % msg
        case ev.Top(msg, lines):
            line = b"TOP %d %d" % (msg, lines)
        case ev.Stat() | ev.Noop() | ev.Rset() | ev.Quit() | ev.Capa() | ev.Stls() | ev.Utf8():
            line = verb(command).encode()
        case _:
            assert_never(command)
    sasl = isinstance(command, ev.Auth | ev.SaslResponse)
    if len(line) + 2 > (MAX_SASL_LINE if sasl else MAX_COMMAND_LINE):
        raise LocalProtocolError(f"{verb(command)}: command line too long")
    return line + b"\r\n"


class ClientConnection:
    __slots__ = ("_buffer", "_end_next", "_eof", "_error", "_expected", "_line_start",
                 "_max_line", "_mode", "_sasl_waiting", "_state", "_tls_pending")

    def __init__(self, *, max_line: int = MAX_LINE, greeting: bool = True) -> None:
        """`greeting=False` when the greeting was already read by another core."""
        self._max_line = max_line
        self._state = State.AUTHORIZATION
        self._buffer = bytearray()
        self._expected: deque[_Expected] = deque()
        if greeting:
            self._expected.append(_Expected(None, Shape.SINGLE))
        self._mode = Shape.SINGLE  # what is being read: status lines, a listing, a body
        self._line_start = True
        self._end_next = False
        self._sasl_waiting = False
        self._tls_pending = False
        self._eof = False
        self._error: ev.ProtocolError | None = None

    @property
    def state(self) -> State:
        return self._state

    @property
    def outstanding(self) -> int:
        """Replies still expected (the greeting counts as one)."""
        return len(self._expected)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # --- output ---

    def send(self, command: ev.Command) -> bytes:
        """Bytes for `command`; its reply is expected after those already outstanding."""
        if self._error is not None or self._state is State.CLOSED:
            raise LocalProtocolError("the connection is closed")
        if self._tls_pending:
            raise LocalProtocolError("STLS was accepted: start TLS before anything else")
        if isinstance(command, ev.SaslResponse | ev.SaslCancel):
            if not self._sasl_waiting:
                raise LocalProtocolError("no SASL challenge to answer")
            data = encode(command)
            self._sasl_waiting = False
            return data
        if self._sasl_waiting:
            raise LocalProtocolError("a SASL challenge must be answered first")
        for waiting in self._expected:
            if waiting.shape is Shape.SASL or isinstance(waiting.command, ev.Stls):
                # RFC 5034 §4: our next line answers the exchange; RFC 2595 §4: nothing
                # may follow STLS until TLS is up
                raise LocalProtocolError("nothing may follow AUTH or STLS until answered")
        settled = not any(isinstance(e.command, STATE_CHANGERS) for e in self._expected)
        if settled and self._state not in spec_of(command).states:
            raise LocalProtocolError(f"{verb(command)} is not valid in {self._state.value}")
        data = encode(command)
        self._expected.append(_Expected(command, reply_shape(command)))
        return data

    # --- input ---

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
        elif self._state is not State.CLOSED and self._error is None:
            self._buffer += data

    def tls_started(self) -> None:
        """The shell has completed the TLS handshake after +OK to STLS."""
        self._tls_pending = False

    def next_event(self) -> ev.ServerEvent | ev.Sentinel:
        if self._error is not None:
            return self._error
        if self._tls_pending and self._buffer:
            return self._fail("data received after +OK to STLS, before TLS")
        match self._mode:
            case Shape.MESSAGE:
                event = self._body()
            case Shape.LISTING:
                event = self._listing()
            case Shape.SINGLE | Shape.SASL:
                event = self._status()
            case _:
                assert_never(self._mode)
        if event is ev.NEED_DATA and self._eof:
            clean = not self._expected and not self._buffer
            return ev.Closed(clean or self._state is State.CLOSED)
        return event

    def _fail(self, reason: str) -> ev.ProtocolError:
        self._error = ev.ProtocolError(reason)
        self._buffer.clear()
        return self._error

    def _line(self) -> bytes | ev.ProtocolError | None:
        """The next complete line without its line end; None if there is none yet."""
        buf = self._buffer
        nl = buf.find(b"\n", 0, self._max_line)
        if nl < 0:
            if len(buf) >= self._max_line:
                return self._fail(f"line longer than {self._max_line} octets")
            return None
        end = nl - 1 if nl and buf[nl - 1] == 0x0D else nl
        line = bytes(buf[:end])
        del buf[: nl + 1]
        return line

    def _status(self) -> ev.ServerEvent | ev.Sentinel:
        if self._state is State.CLOSED:
            return ev.NEED_DATA
        line = self._line()
        if line is None:
            return ev.NEED_DATA
        if isinstance(line, ev.ProtocolError):
            return line
        head = line[:4].upper()
        if head == b"+OK" or head.startswith(b"+OK "):
            return self._ok(line[4:])
        if head == b"-ERR" and line[4:5] in (b"", b" "):
            return self._err(line[5:])
        if line == b"+" or line.startswith(b"+ "):
            return self._continuation(line[2:])
        return self._fail(f"not a POP3 reply: {line[:40]!r}")

    def _ok(self, text: bytes) -> ev.ServerEvent:
        if not self._expected:
            return self._fail("+OK with no command outstanding")
        expected = self._expected[0]
        command, shape = expected.command, expected.shape
        code, decoded = split_code(text)
        if shape is Shape.LISTING or shape is Shape.MESSAGE:
            self._mode = shape
            self._line_start = True
            return ev.Ok(decoded, code, command, multiline=True)
        self._expected.popleft()
        self._sasl_waiting = False
        self._state = after_reply(self._state, command, ok=True)
        if isinstance(command, ev.Stls):
            if self._buffer:
                return self._fail("data received after +OK to STLS, before TLS")
            self._tls_pending = True
        return ev.Ok(decoded, code, command)

    def _err(self, text: bytes) -> ev.ServerEvent:
        code, decoded = split_code(text)
        if not self._expected:
            return ev.Err(decoded, code)  # e.g. an idle timeout notice
        command = self._expected.popleft().command
        self._sasl_waiting = False
        self._mode = Shape.SINGLE
        self._state = after_reply(self._state, command, ok=False)
        return ev.Err(decoded, code, command)

    def _continuation(self, data: bytes) -> ev.ServerEvent:
        expected = self._expected[0] if self._expected else None
        if expected is None or expected.shape is not Shape.SASL or self._sasl_waiting:
            return self._fail("unexpected SASL challenge")
        assert isinstance(expected.command, ev.Auth)
        try:
            decoded = base64.b64decode(data.strip(b" "), validate=True)
        except (binascii.Error, ValueError):
            return self._fail("SASL challenge is not base64")
        self._sasl_waiting = True
        return ev.Continuation(decoded, expected.command)

    def _end(self) -> ev.End:
        command = self._expected.popleft().command
        self._mode = Shape.SINGLE
        return ev.End(command)

    def _listing(self) -> ev.ServerEvent | ev.Sentinel:
        if self._end_next:
            self._end_next = False
            return self._end()
        lines: list[str] = []
        while True:
            line = self._line()
            if isinstance(line, ev.ProtocolError):
                return line
            if line is None:
                break
            if line == b".":
                if not lines:
                    return self._end()
                self._end_next = True  # the lines first, the end on the next call
                break
            lines.append((line[1:] if line[:1] == b"." else line).decode("utf-8", "replace"))
        return ev.Lines(tuple(lines)) if lines else ev.NEED_DATA

    def _body(self) -> ev.ServerEvent | ev.Sentinel:
        buf = self._buffer
        if self._line_start and buf.startswith(b".\r\n"):
            del buf[:3]
            return self._end()
        found = _TERMINATOR.search(buf)
        if found is not None:
            size = found.start() + 1  # up to and including the line end before it
        else:  # hold back a "." or ".\r" at a line start: it may begin the terminator
            size = len(buf)
            for tail in (b".\r", b"."):
                if buf.endswith(tail):
                    start = size - len(tail)
                    if buf[start - 1 : start] == b"\n" or (start == 0 and self._line_start):
                        size = start
                    break
        if size == 0:
            return ev.NEED_DATA
        chunk = bytes(buf[:size])
        del buf[:size]
        at_start, self._line_start = self._line_start, chunk[-1:] == b"\n"
        return ev.Data(wire.kernel.unstuff(chunk, at_start))
