"""The command table: verb, legal states, argument grammar and reply shape.

One table, read by the server core (which commands are legal now, how to parse them) and
by the client core (what shape of answer to expect). Parsing is strict and total: every
input line maps to a command event or to `Invalid`, never to an exception.

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
from collections.abc import Callable
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

    SINGLE = "single"
    MULTI = "multi"
    MULTI_WITHOUT_ARG = "multi-without-argument"  # LIST, UIDL: multi-line when no argument
    SASL = "sasl"  # AUTH: challenges until +OK/-ERR; a bare AUTH is multi-line


Parsed = ev.Command | ev.Invalid
Parser = Callable[[list[bytes], bytes], Parsed]


@dataclass(frozen=True, slots=True)
class Spec:
    verb: str
    states: tuple[State, ...]
    shape: Shape
    parse: Parser


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


def _spec(verb: str, states: tuple[State, ...], shape: Shape, parse: Parser) -> Spec:
    return Spec(verb, states, shape, parse)


TABLE: dict[str, Spec] = {
    spec.verb: spec
    for spec in (
        _spec("USER", AUTH_ONLY, Shape.SINGLE, _parse_user),
        _spec("PASS", AUTH_ONLY, Shape.SINGLE, _parse_pass),
        _spec("APOP", AUTH_ONLY, Shape.SINGLE, _parse_apop),
        _spec("AUTH", AUTH_ONLY, Shape.SASL, _parse_auth),
        _spec("STLS", AUTH_ONLY, Shape.SINGLE, _no_args(ev.Stls, "STLS")),
        _spec("UTF8", BOTH, Shape.SINGLE, _no_args(ev.Utf8, "UTF8")),
        _spec("CAPA", BOTH, Shape.MULTI, _no_args(ev.Capa, "CAPA")),
        _spec("QUIT", BOTH, Shape.SINGLE, _no_args(ev.Quit, "QUIT")),
        _spec("STAT", TRANSACTION_ONLY, Shape.SINGLE, _no_args(ev.Stat, "STAT")),
        _spec("LIST", TRANSACTION_ONLY, Shape.MULTI_WITHOUT_ARG, _opt_msg_arg(ev.List, "LIST")),
        _spec("UIDL", TRANSACTION_ONLY, Shape.MULTI_WITHOUT_ARG, _opt_msg_arg(ev.Uidl, "UIDL")),
        _spec("RETR", TRANSACTION_ONLY, Shape.MULTI, _msg_arg(ev.Retr, "RETR")),
        _spec("TOP", TRANSACTION_ONLY, Shape.MULTI, _parse_top),
        _spec("DELE", TRANSACTION_ONLY, Shape.SINGLE, _msg_arg(ev.Dele, "DELE")),
        _spec("NOOP", TRANSACTION_ONLY, Shape.SINGLE, _no_args(ev.Noop, "NOOP")),
        _spec("RSET", TRANSACTION_ONLY, Shape.SINGLE, _no_args(ev.Rset, "RSET")),
    )
}


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
