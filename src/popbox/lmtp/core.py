"""A sans-IO LMTP server connection (RFC 2033): bytes in, events out, no I/O, no clock.

LMTP is SMTP (RFC 5321) with LHLO instead of HELO/EHLO and one difference that matters:
after the message data the server answers once per accepted recipient (RFC 2033 §4.2),
so one recipient's mailbox can fail (4xx, the MTA retries it alone) while the others
succeed. This core keeps the transaction state and answers everything that needs no
policy itself; it asks its shell about the rest through events:

* `Output(data)`: a reply the core made (LHLO, MAIL, syntax errors, 354, ...): send it.
* `RcptTo(address)`: the shell looks the recipient up and answers with `recipient()`.
* `Message(sender, recipients, data)`: the shell delivers to each recipient and answers
  with `delivered()`, one reply per recipient in RCPT order. `data` is None when the
  message was larger than `max_size` (then every recipient gets 552 5.3.4).

After QUIT, or too many errors, `closed` is true: send the last Output, then close.

`next_event()` returns None when it needs more bytes, and also while an answer is
pending, so pipelined commands (RFC 2920) are answered strictly in order.

Message data (RFC 5321 §4.5.2): the terminating "." line ends it; a leading "." of any
other line is removed; line ends become LF, as stores keep mail. Data is taken in whole
chunks with bytes operations (no per-line Python loop); a chunk that ends in the middle
of a line is taken too, so a long line costs no buffering, and beyond `max_size` the
rest is counted and dropped. The un-stuffing and the CRLF-to-LF pass are
popbox.proto.wire's kernels (compiled C where built). Extensions: PIPELINING,
ENHANCEDSTATUSCODES (RFC 2034, codes of RFC 3463), 8BITMIME (RFC 6152), SMTPUTF8
(RFC 6531), SIZE (RFC 1870).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from popbox.proto.wire import kernel

MAX_LINE = 4096  # command lines; RFC 5321 §4.5.3.1.4 requires at least 512
MAX_ERRORS = 20



@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    enhanced: str  # RFC 3463 "x.y.z"
    text: str

    def encode(self) -> bytes:
        return f"{self.code} {self.enhanced} {self.text}\r\n".encode()


@dataclass(frozen=True, slots=True)
class Output:
    data: bytes


@dataclass(frozen=True, slots=True)
class RcptTo:
    address: str


T = TypeVar("T")  # what the shell accepted a recipient with (where its mail goes)


@dataclass(frozen=True, slots=True)
class Message(Generic[T]):
    sender: str  # "" for the null reverse-path
    recipients: tuple[tuple[str, T], ...]  # (address, the shell's target) in RCPT order
    data: bytes | None  # None: over the size limit


Event = Output | RcptTo | Message[T]


def parse_path(arg: str, keyword: str) -> tuple[str, dict[str, str]] | None:
    """`FROM:<a@b> SIZE=10` -> ("a@b", {"SIZE": "10"}); None if malformed. A source route
    (`<@relay:a@b>`) is dropped; spaces after the colon are tolerated."""
    head, colon, rest = arg.partition(":")
    if not colon or head.strip().upper() != keyword:
        return None
    rest = rest.lstrip()
    if not rest.startswith("<"):
        return None
    quoted = False
    end = -1
    for i, char in enumerate(rest):
        if char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            end = i
            break
    if end < 0:
        return None
    address, params = rest[1:end], rest[end + 1 :]
    if address.startswith("@"):
        address = address.partition(":")[2]
    if params and not params.startswith(" "):
        return None
    found: dict[str, str] = {}
    for item in params.split():
        key, _, value = item.partition("=")
        found[key.upper()] = value
    return address, found


class LmtpCore(Generic[T]):
    """One LMTP connection's protocol state."""

    def __init__(self, hostname: str, max_size: int, max_recipients: int = 100) -> None:
        self.hostname = hostname
        self.max_size = max_size
        self.max_recipients = max_recipients
        self._buf = bytearray()
        self._hello = False
        self._sender: str | None = None
        self._rcpts: list[tuple[str, T]] = []
        self._pending_rcpt: str | None = None
        self._waiting = False  # for the shell's answer to RcptTo or Message
        self._closed = False
        self._discarding = False  # the rest of an overlong command line
        self._errors = 0
        self._in_data = False
        self._parts: list[bytes] = []
        self._size = 0
        self._bol = True

    def greeting(self) -> bytes:
        return f"220 {self.hostname} LMTP popbox ready\r\n".encode()

    def feed(self, data: bytes) -> None:
        self._buf += data

    # --- events --------------------------------------------------------------------

    def next_event(self) -> Event[T] | None:
        if self._closed or self._waiting:
            return None
        if self._in_data:
            return self._data_step()
        if self._discarding:
            nl = self._buf.find(b"\n")
            if nl < 0:
                self._buf.clear()
                return None
            del self._buf[: nl + 1]
            self._discarding = False
            return self._error(Reply(500, "5.5.2", "Line too long"))
        nl = self._buf.find(b"\n")
        if nl < 0:
            if len(self._buf) > MAX_LINE:
                self._buf.clear()
                self._discarding = True
            return None
        raw = bytes(self._buf[:nl]).removesuffix(b"\r")
        del self._buf[: nl + 1]
        if len(raw) > MAX_LINE:
            return self._error(Reply(500, "5.5.2", "Line too long"))
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self._error(Reply(500, "5.5.2", "Invalid characters in command"))
        return self._command(line)

    def _reply(self, reply: Reply) -> Output:
        return Output(reply.encode())

    def _error(self, reply: Reply) -> Event[T]:
        self._errors += 1
        if self._errors > MAX_ERRORS:
            self._closed = True
            return Output(Reply(421, "4.7.0", "Too many errors, closing").encode())
        return self._reply(reply)

    def _reset(self) -> None:
        self._sender = None
        self._rcpts = []

    def _command(self, line: str) -> Event[T]:
        verb, _, arg = line.partition(" ")
        match verb.upper():
            case "LHLO":
                return self._lhlo(arg.strip())
            case "MAIL":
                return self._mail(arg)
            case "RCPT":
                return self._rcpt(arg)
            case "DATA":
                return self._data_command()
            case "RSET":
                self._reset()
                return self._reply(Reply(250, "2.0.0", "Ok"))
            case "NOOP":
                return self._reply(Reply(250, "2.0.0", "Ok"))
            case "VRFY":
                return self._reply(Reply(252, "2.5.2", "Send mail and see"))
            case "QUIT":
                self._closed = True
                return Output(Reply(221, "2.0.0", "Bye").encode())
            case "HELO" | "EHLO":
                return self._error(Reply(500, "5.5.1", "This is LMTP: say LHLO"))
            case _:
                return self._error(Reply(500, "5.5.2", "Command not recognized"))

    def _lhlo(self, name: str) -> Event[T]:
        if not name:
            return self._error(Reply(501, "5.5.4", "Syntax: LHLO hostname"))
        self._hello = True
        self._reset()
        lines = [self.hostname, "PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8",
                 f"SIZE {self.max_size}"]
        text = "".join(f"250-{item}\r\n" for item in lines[:-1]) + f"250 {lines[-1]}\r\n"
        return Output(text.encode())

    def _mail(self, arg: str) -> Event[T]:
        if not self._hello:
            return self._error(Reply(503, "5.5.1", "Say LHLO first"))
        if self._sender is not None:
            return self._error(Reply(503, "5.5.1", "Nested MAIL command"))
        parsed = parse_path(arg, "FROM")
        if parsed is None:
            return self._error(Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>"))
        sender, params = parsed
        for key, value in params.items():
            if key == "SIZE":
                if not value.isdigit():
                    return self._error(Reply(501, "5.5.4", "Bad SIZE parameter"))
                if int(value) > self.max_size:
                    return self._reply(Reply(552, "5.3.4", "Message size exceeds fixed limit"))
            elif key == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):
                    return self._error(Reply(501, "5.5.4", "Unsupported BODY type"))
            elif key != "SMTPUTF8" or value:
                return self._error(Reply(555, "5.5.4", f"Unsupported parameter {key}"))
        self._sender = sender
        return self._reply(Reply(250, "2.1.0", "Ok"))

    def _rcpt(self, arg: str) -> Event[T]:
        if self._sender is None:
            return self._error(Reply(503, "5.5.1", "Need MAIL first"))
        parsed = parse_path(arg, "TO")
        if parsed is None or not parsed[0]:
            return self._error(Reply(501, "5.1.3", "Syntax: RCPT TO:<address>"))
        address, params = parsed
        if params:
            return self._error(Reply(555, "5.5.4", "RCPT parameters are not supported"))
        if len(self._rcpts) >= self.max_recipients:
            return self._reply(Reply(452, "4.5.3", "Too many recipients"))
        self._pending_rcpt = address
        self._waiting = True
        return RcptTo(address)

    def recipient(self, reply: Reply, target: T | None) -> bytes:
        """The shell's answer to RcptTo: accepted (with where to deliver) or not."""
        if self._pending_rcpt is None:
            raise RuntimeError("no recipient is waiting for an answer")
        if target is not None and reply.code == 250:
            self._rcpts.append((self._pending_rcpt, target))
        self._pending_rcpt = None
        self._waiting = False
        return reply.encode()

    def _data_command(self) -> Event[T]:
        if self._sender is None:
            return self._error(Reply(503, "5.5.1", "Need MAIL first"))
        if not self._rcpts:
            return self._error(Reply(503, "5.5.1", "No valid recipients"))
        self._in_data, self._parts, self._size, self._bol = True, [], 0, True
        return Output(b"354 End data with <CR><LF>.<CR><LF>\r\n")

    # --- message data (RFC 5321 §4.5.2) ----------------------------------------------

    def _data_step(self) -> Event[T] | None:
        buf = self._buf
        end = skip = -1
        if self._bol and (buf.startswith(b".\r\n") or buf.startswith(b".\n")):
            end, skip = 0, 3 if buf.startswith(b".\r\n") else 2
        else:
            for marker in (b"\n.\r\n", b"\n.\n"):
                pos = buf.find(marker)
                if pos >= 0 and (end < 0 or pos + 1 < end):
                    end, skip = pos + 1, len(marker) - 1
        if end >= 0:
            self._take(bytes(buf[:end]))
            del buf[: end + skip]
            return self._finish()
        take = len(buf)
        if not buf.endswith(b"\n"):
            last = buf.rfind(b"\n")
            tail = bytes(buf[last + 1 :])
            if tail in (b".", b".\r") and (last >= 0 or self._bol):
                take = last + 1  # may be the start of the terminator
            elif tail.endswith(b"\r"):
                take -= 1  # keep CR LF together
        if take > 0:
            self._take(bytes(buf[:take]))
            del buf[:take]
        return None

    def _take(self, part: bytes) -> None:
        if not part:
            return
        self._size += len(part)
        if self._size > self.max_size:
            self._parts.clear()
            self._bol = part.endswith(b"\n")
            return
        # the first "." of each line dropped, CRLF made LF (compiled C where built)
        self._parts.append(kernel.to_lf(kernel.unstuff(part, self._bol)))
        self._bol = part.endswith(b"\n")

    def _finish(self) -> Event[T]:
        self._in_data = False
        self._waiting = True
        data = None if self._size > self.max_size else b"".join(self._parts)
        self._parts = []
        assert self._sender is not None
        return Message(self._sender, tuple(self._rcpts), data)

    def delivered(self, replies: list[Reply]) -> bytes:
        """The shell's answer to Message: one reply per recipient, in RCPT order."""
        if not self._waiting or self._pending_rcpt is not None:
            raise RuntimeError("no message is waiting for an answer")
        if len(replies) != len(self._rcpts):
            raise ValueError("one reply per accepted recipient (RFC 2033 §4.2)")
        self._waiting = False
        self._reset()
        return b"".join(reply.encode() for reply in replies)

    @property
    def closed(self) -> bool:
        return self._closed
