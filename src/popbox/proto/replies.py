"""What the client core reports: the server's replies, as frozen dataclasses.

The server side of the protocol uses `popbox.proto.events` (commands in, replies out); the
client side sends those same command events and gets these back from
`ClientConnection.next_event()`:

- `OkReply` / `ErrReply`: a status line (RFC 1939 §3), with its RFC 2449 §8 response code
  (`IN-USE`, `AUTH`, `SYS/TEMP`, ...) split off the text. `command` is the command it
  answers, None for the greeting (and for an unsolicited -ERR, which servers send just
  before they close a connection, e.g. on an idle timeout).
- `Continuation`: a SASL challenge, `+ base64` (RFC 5034 §4), already decoded.
- `Lines`: lines of a listing (CAPA, LIST, UIDL, bare AUTH), un-stuffed, without CRLF.
- `Data`: a piece of a message (RETR, TOP), un-stuffed, CRLF line ends kept.
- `End`: the multi-line reply to `command` is complete.
- `ProtocolError`: the server broke the protocol; the connection is unusable.
- `Closed`: the server closed the connection; `clean` when nothing was outstanding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from popbox.proto import events as ev


@dataclass(frozen=True, slots=True)
class OkReply:
    command: ev.Command | None
    text: str
    code: str | None = None
    multiline: bool = False  # lines or data follow, then End


@dataclass(frozen=True, slots=True)
class ErrReply:
    command: ev.Command | None
    text: str
    code: str | None = None


@dataclass(frozen=True, slots=True)
class Continuation:
    command: ev.Auth
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Lines:
    lines: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Data:
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class End:
    command: ev.Command


@dataclass(frozen=True, slots=True)
class ProtocolError:
    reason: str


@dataclass(frozen=True, slots=True)
class Closed:
    clean: bool


ServerEvent = OkReply | ErrReply | Continuation | Lines | Data | End | ProtocolError | Closed
