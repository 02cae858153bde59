"""Events: what the peer said (commands) and what we answer (replies).

Frozen dataclasses with slots, shared by the server core and, later, the client core.
Secrets (PASS arguments, SASL payloads) have a redacting repr.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from popbox.proto.types import MsgNo, RespCode


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
    | Dele | Noop | Rset | Quit | Capa | Stls | Utf8
)
Event = Command | Invalid | ConnectionClosed


# --- replies ---


@dataclass(frozen=True, slots=True)
class Ok:
    """`+OK text`. For RETR/TOP the message body follows (proto.wire.MessageEncoder)."""

    text: str = ""


@dataclass(frozen=True, slots=True)
class Err:
    text: str
    code: RespCode | None = None


@dataclass(frozen=True, slots=True)
class MultiLine:
    """`+OK text`, then each line byte-stuffed, then the terminator."""

    text: str
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Challenge:
    """A SASL server challenge: `+ base64` (RFC 5034 §4)."""

    data: bytes = field(repr=False)


Reply = Ok | Err | MultiLine | Challenge
