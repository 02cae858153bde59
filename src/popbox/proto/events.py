"""Events: the one vocabulary both cores speak, as frozen dataclasses with slots.

Commands (RFC 1939 §§4-7, RFC 2449 §5, RFC 2595 §4, RFC 5034 §4, RFC 6856 §3, and the
older LAST of RFC 1460 §5 and XTND of RFC 1082) are what
the client core sends and the server core hands out. Replies are what the server core
sends and the client core hands out: a status line (`Ok`, `Err`; RFC 1939 §3), a SASL
challenge (`Continuation`, RFC 5034 §4), then, for a multi-line reply (RFC 1939 §3), the
`Lines` of a listing or the `Data` of a message, closed by `End`. Fields the sender
leaves empty are filled by the receiving client core: the `command` a reply answers
(None for the greeting), `multiline` on an `Ok` that opens a multi-line reply.

Response codes (RFC 2449 §8) are strings: `RespCode` members on the server side, any
code a server sent on the client side. Secrets (PASS arguments, SASL payloads) have a
redacting repr.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from popbox.proto.types import MsgNo


class Sentinel(enum.Enum):
    """`next_event()` results that are not events."""

    NEED_DATA = "need-data"  # feed more bytes
    PAUSED = "paused"  # answer the pending command first


NEED_DATA = Sentinel.NEED_DATA
PAUSED = Sentinel.PAUSED


# --- commands (RFC 1939 §§4-7, RFC 2449 §5, RFC 2595 §4, RFC 5034 §4, RFC 6856 §3) ---


@dataclass(frozen=True, slots=True)
class User:
    name: str


@dataclass(frozen=True, slots=True)
class Pass:
    secret: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Apop:
    name: str
    digest: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Auth:
    """AUTH with no mechanism lists the mechanisms (RFC 1734 style probe)."""

    mechanism: str | None
    initial: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class SaslResponse:
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SaslCancel:
    pass


@dataclass(frozen=True, slots=True)
class Stat:
    pass


@dataclass(frozen=True, slots=True)
class List:
    msg: MsgNo | None


@dataclass(frozen=True, slots=True)
class Uidl:
    msg: MsgNo | None


@dataclass(frozen=True, slots=True)
class Retr:
    msg: MsgNo


@dataclass(frozen=True, slots=True)
class Top:
    msg: MsgNo
    lines: int


@dataclass(frozen=True, slots=True)
class Dele:
    msg: MsgNo


@dataclass(frozen=True, slots=True)
class Noop:
    pass


@dataclass(frozen=True, slots=True)
class Rset:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Capa:
    pass


@dataclass(frozen=True, slots=True)
class Stls:
    pass


@dataclass(frozen=True, slots=True)
class Utf8:
    pass


@dataclass(frozen=True, slots=True)
class Lang:
    """RFC 6856 §3 LANG: list the response languages (None), or select one (a language
    tag, or "*" for the server's default)."""

    tag: str | None


@dataclass(frozen=True, slots=True)
class Last:
    """RFC 1460 §5 LAST (dropped by RFC 1725): the highest message number accessed."""


@dataclass(frozen=True, slots=True)
class Xtnd:
    """RFC 1082 XTND: the extended service commands (popbox answers -ERR)."""

    args: str = ""


class Problem(enum.Enum):
    """Why a line from the client is not a command we can run."""

    EMPTY_LINE = "empty command"
    LINE_TOO_LONG = "line too long"
    UNKNOWN_COMMAND = "unknown command"
    WRONG_STATE = "command not valid in this state"
    BAD_ARGUMENTS = "invalid arguments"
    BAD_MESSAGE_NUMBER = "invalid message number"
    BAD_BASE64 = "invalid base64 data"
    PASS_WITHOUT_USER = "no USER given"  # noqa: S105
    BAD_CHARACTERS = "invalid characters in command"


@dataclass(frozen=True, slots=True)
class Invalid:
    """A line that is not a valid command here; the server answers -ERR and goes on."""

    problem: Problem
    verb: str = ""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The client closed its side."""


Command = (
    User | Pass | Apop | Auth | SaslResponse | SaslCancel | Stat | List | Uidl | Retr | Top
    | Dele | Noop | Rset | Quit | Capa | Stls | Utf8 | Lang | Last | Xtnd
)
Event = Command | Invalid | ConnectionClosed


# --- replies (RFC 1939 §3, RFC 2449 §8, RFC 5034 §4) ---


@dataclass(frozen=True, slots=True)
class Ok:
    """`+OK text`. Opens a multi-line reply when the command's shape says so."""

    text: str = ""
    code: str | None = None
    command: Command | None = None
    multiline: bool = False


@dataclass(frozen=True, slots=True)
class Err:
    """`-ERR [code] text`: always one line (RFC 2449 §3)."""

    text: str
    code: str | None = None
    command: Command | None = None


@dataclass(frozen=True, slots=True)
class Continuation:
    """A SASL server challenge, `+ base64` (RFC 5034 §4), as decoded bytes."""

    data: bytes = field(repr=False)
    command: Auth | None = None


@dataclass(frozen=True, slots=True)
class Lines:
    """Lines of a listing (CAPA, LIST, UIDL, bare AUTH): un-stuffed, without CRLF."""

    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Data:
    """A piece of a message (RETR, TOP) as stored (server) or un-stuffed (client).
    `wire`: the server's piece is already in wire form (popbox.proto.wire.to_wire) and
    goes out as it is; every piece of one body says the same."""

    data: bytes = field(repr=False)
    wire: bool = False


@dataclass(frozen=True, slots=True)
class End:
    """The multi-line reply to `command` is complete."""

    command: Command | None = None


END = End()  # the server's: the same value every time

Reply = Ok | Err | Continuation | Lines | Data | End


# --- what else the client core reports ---


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The server broke the protocol; the connection is unusable."""

    reason: str


@dataclass(frozen=True, slots=True)
class Closed:
    """The server closed the connection; `clean` when nothing was outstanding."""

    clean: bool


ServerEvent = Reply | ProtocolError | Closed


class LocalProtocolError(ValueError):
    """This side was asked to send something the protocol does not allow."""
