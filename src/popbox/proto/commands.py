"""The command table: verb, event class, legal states, argument grammar, reply shape and
the capability each command belongs to.

One table, read by both cores and by the server's CAPA: the server core parses with it
and refuses what is not legal in the current state; the client core takes each command's
verb and the shape of its reply from it (`verb`, `reply_shape`) and refuses locally what
the server would; CAPA lists the capabilities of the table's commands
(`capabilities`, RFC 2449 §5). Parsing is strict and total: every input line maps to a
command event or to `Invalid`, never to an exception.

Reply shapes (RFC 2449 §3): SINGLE, one status line; LISTING, +OK and lines (CAPA, LIST
and UIDL without an argument, a bare AUTH); MESSAGE, +OK and a message body (RETR, TOP);
SASL, challenges until +OK or -ERR (AUTH with a mechanism). -ERR is always one line.

- RFC 1939 §3: keywords are case-insensitive, arguments are separated by single spaces,
  message numbers are positive decimal integers.
- RFC 2449 §4: a command line is at most 255 octets including CRLF.
- RFC 5034 §4: AUTH lines and SASL responses may be longer (we accept 8190 octets).
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from popbox.proto import events as ev
from popbox.proto.types import MsgNo, State

MAX_COMMAND_LINE = 255  # octets including CRLF (RFC 2449 §4)
MAX_SASL_LINE = 8192  # octets including CRLF; also the input buffer bound

_BAD_CHARACTERS = re.compile(rb"[\0\r]")  # one scan (`bytes in bytes` tries an int first)

# Tuples, not sets: `in` compares by identity, where a set would call Enum.__hash__ (a
# Python function) for every command.
AUTH_ONLY = (State.AUTHORIZATION,)
TRANSACTION_ONLY = (State.TRANSACTION,)
BOTH = (State.AUTHORIZATION, State.TRANSACTION)


class Shape(enum.Enum):
    """How the server answers (RFC 2449 §3): what a client must read."""

    SINGLE = "single"  # one status line
    LISTING = "listing"  # +OK, then lines, then "."
    MESSAGE = "message"  # +OK, then a byte-stuffed message, then "."
    SASL = "sasl"  # challenges until +OK/-ERR


Parsed = ev.Command | ev.Invalid
Parser = Callable[[list[bytes], bytes], Parsed]


@dataclass(frozen=True, slots=True)
class Spec:
    verb: str
    event: type[ev.Command]
    states: tuple[State, ...]
    shape: Shape  # LIST and UIDL with an argument, and a bare AUTH: see `reply_shape`
    parse: Parser
    capability: str | None = None  # RFC 2449 §6: the CAPA tag that announces it


def _bad(verb: str, problem: ev.Problem = ev.Problem.BAD_ARGUMENTS) -> ev.Invalid:
    return ev.Invalid(problem, verb)


def _number(arg: bytes) -> int | None:
    """A non-negative decimal integer (digits only: no sign, no spaces)."""
    if not arg or not arg.isdigit() or len(arg) > 20:
        return None
    return int(arg)


def _msg(arg: bytes) -> MsgNo | None:
    n = _number(arg)
    return None if n is None else MsgNo(n)


def _text(arg: bytes) -> str | None:
    try:
        text = arg.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def _no_args(make: Callable[[], ev.Command], verb: str) -> Parser:
    def parse(args: list[bytes], rest: bytes) -> Parsed:
        return _bad(verb) if args else make()

    return parse


def _msg_arg(make: Callable[[MsgNo], ev.Command], verb: str) -> Parser:
    def parse(args: list[bytes], rest: bytes) -> Parsed:
        if len(args) != 1:
            return _bad(verb)
        msg = _msg(args[0])
        return _bad(verb, ev.Problem.BAD_MESSAGE_NUMBER) if msg is None else make(msg)

    return parse


def _opt_msg_arg(make: Callable[[MsgNo | None], ev.Command], verb: str) -> Parser:
    def parse(args: list[bytes], rest: bytes) -> Parsed:
        if not args:
            return make(None)
        if len(args) != 1:
            return _bad(verb)
        msg = _msg(args[0])
        return _bad(verb, ev.Problem.BAD_MESSAGE_NUMBER) if msg is None else make(msg)

    return parse


def _parse_top(args: list[bytes], rest: bytes) -> Parsed:
    if len(args) != 2:
        return _bad("TOP")
    msg, lines = _msg(args[0]), _number(args[1])
    if msg is None:
        return _bad("TOP", ev.Problem.BAD_MESSAGE_NUMBER)
    if lines is None:
        return _bad("TOP")
    return ev.Top(msg, lines)


def _parse_user(args: list[bytes], rest: bytes) -> Parsed:
    name = _text(rest.strip(b" "))
    return ev.User(name) if name else _bad("USER")


def _parse_pass(args: list[bytes], rest: bytes) -> Parsed:
    # RFC 1939 §7: PASS has one argument, so spaces belong to the password.
    return ev.Pass(rest) if rest else _bad("PASS")


def _parse_apop(args: list[bytes], rest: bytes) -> Parsed:
    if len(args) != 2:
        return _bad("APOP")
    name, digest = _text(args[0]), _text(args[1])
    if not name or not digest or len(digest) != 32:
        return _bad("APOP")
    return ev.Apop(name, digest.lower())


def decode_base64(data: bytes) -> bytes | None:
    """SASL data: `=` is an empty response (RFC 5034 §4); anything not base64 is None."""
    if data == b"=":
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def _parse_auth(args: list[bytes], rest: bytes) -> Parsed:
    if not args:
        return ev.Auth(None)
    if len(args) > 2:
        return _bad("AUTH")
    mechanism = _text(args[0])
    if not mechanism or not all(c.isalnum() or c in "-_" for c in mechanism):
        return _bad("AUTH")
    if len(args) == 1:
        return ev.Auth(mechanism.upper())
    initial = decode_base64(args[1])
    if initial is None:
        return _bad("AUTH", ev.Problem.BAD_BASE64)
    return ev.Auth(mechanism.upper(), initial)


S, L, M = Shape.SINGLE, Shape.LISTING, Shape.MESSAGE

TABLE: dict[str, Spec] = {
    spec.verb: spec
    for spec in (
        Spec("TOP", ev.Top, TRANSACTION_ONLY, M, _parse_top, "TOP"),
        Spec("UIDL", ev.Uidl, TRANSACTION_ONLY, L, _opt_msg_arg(ev.Uidl, "UIDL"), "UIDL"),
        Spec("UTF8", ev.Utf8, BOTH, S, _no_args(ev.Utf8, "UTF8"), "UTF8"),
        Spec("STLS", ev.Stls, AUTH_ONLY, S, _no_args(ev.Stls, "STLS"), "STLS"),
        Spec("USER", ev.User, AUTH_ONLY, S, _parse_user, "USER"),
        Spec("PASS", ev.Pass, AUTH_ONLY, S, _parse_pass, "USER"),
        Spec("AUTH", ev.Auth, AUTH_ONLY, Shape.SASL, _parse_auth, "SASL"),
        Spec("APOP", ev.Apop, AUTH_ONLY, S, _parse_apop),
        Spec("CAPA", ev.Capa, BOTH, L, _no_args(ev.Capa, "CAPA")),
        Spec("QUIT", ev.Quit, BOTH, S, _no_args(ev.Quit, "QUIT")),
        Spec("STAT", ev.Stat, TRANSACTION_ONLY, S, _no_args(ev.Stat, "STAT")),
        Spec("LIST", ev.List, TRANSACTION_ONLY, L, _opt_msg_arg(ev.List, "LIST")),
        Spec("RETR", ev.Retr, TRANSACTION_ONLY, M, _msg_arg(ev.Retr, "RETR")),
        Spec("DELE", ev.Dele, TRANSACTION_ONLY, S, _msg_arg(ev.Dele, "DELE")),
        Spec("NOOP", ev.Noop, TRANSACTION_ONLY, S, _no_args(ev.Noop, "NOOP")),
        Spec("RSET", ev.Rset, TRANSACTION_ONLY, S, _no_args(ev.Rset, "RSET")),
    )
}

# The verb of every command event; the lines inside an AUTH exchange belong to AUTH.
_VERBS: dict[type, str] = {spec.event: spec.verb for spec in TABLE.values()}
_VERBS[ev.SaslResponse] = _VERBS[ev.SaslCancel] = "AUTH"


def spec_of(command: ev.Command) -> Spec:
    return TABLE[_VERBS[type(command)]]


def verb(command: ev.Command) -> str:
    return _VERBS[type(command)]


def reply_shape(command: ev.Command) -> Shape:
    """What the reply to `command` looks like after +OK. LIST and UIDL are listings only
    without an argument (RFC 1939 §5); a bare AUTH lists the mechanisms (RFC 1734 style)."""
    match command:
        case ev.List(msg) | ev.Uidl(msg) if msg is not None:
            return Shape.SINGLE
        case ev.Auth(None):
            return Shape.LISTING
        case _:
            return spec_of(command).shape


def capabilities(state: State, offered: Mapping[str, str]) -> list[str]:
    """The CAPA lines (RFC 2449 §5) for the table's commands, in table order: each
    capability in `offered` (tag -> its arguments, "" for none) once. A capability whose
    commands are legal only before login is listed only before login; the others in both
    states (RFC 2449 §5: the client learns what it may do after login)."""
    lines: list[str] = []
    for spec in TABLE.values():
        tag = spec.capability
        if tag is None or tag not in offered or any(line.split()[0] == tag for line in lines):
            continue
        if state is State.AUTHORIZATION or State.TRANSACTION in spec.states:
            lines.append(f"{tag} {offered[tag]}" if offered[tag] else tag)
    return lines


def parse_command(line: bytes, state: State) -> Parsed:
    """Parse one command line (without its line end) in `state`."""
    if not line.strip(b" \t"):
        return ev.Invalid(ev.Problem.EMPTY_LINE)
    verb_bytes, _, rest = line.partition(b" ")
    if not verb_bytes.isalnum() or not verb_bytes.isascii() or len(verb_bytes) > 16:
        return ev.Invalid(ev.Problem.UNKNOWN_COMMAND)
    verb = verb_bytes.decode("ascii").upper()
    spec = TABLE.get(verb)
    if spec is None:
        return ev.Invalid(ev.Problem.UNKNOWN_COMMAND, verb)
    if state not in spec.states:
        return ev.Invalid(ev.Problem.WRONG_STATE, verb)
    if _BAD_CHARACTERS.search(line):
        return ev.Invalid(ev.Problem.BAD_CHARACTERS, verb)
    if len(line) + 2 > MAX_COMMAND_LINE and verb != "AUTH":
        return ev.Invalid(ev.Problem.LINE_TOO_LONG, verb)
    args = [a for a in rest.split(b" ") if a]
    return spec.parse(args, rest)


def parse_sasl_response(line: bytes) -> ev.SaslResponse | ev.SaslCancel | ev.Invalid:
    """A client line inside an AUTH exchange (RFC 5034 §4): base64, `=` or `*`."""
    stripped = line.strip(b" ")
    if stripped == b"*":
        return ev.SaslCancel()
    data = decode_base64(stripped)
    if data is None:
        return ev.Invalid(ev.Problem.BAD_BASE64, "AUTH")
    return ev.SaslResponse(data)
