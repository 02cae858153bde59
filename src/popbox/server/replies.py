"""The one place where outcomes become `-ERR [CODE] text` (RFC 2449 §8, RFC 3206).

No exception text or class name ever reaches the wire: every negative reply the server
sends is built here from a value.
"""

from __future__ import annotations

from dataclasses import dataclass

from popbox.auth.base import Verdict
from popbox.proto.events import Err, Problem
from popbox.proto.types import RespCode
from popbox.store.base import Failure

AUTH_FAILED = Err("Authentication failed.", RespCode.AUTH)
CLEARTEXT_REFUSED = Err(
    "Plaintext authentication disallowed on non-secure (SSL/TLS) connections.", RespCode.AUTH
)
APOP_DISABLED = Err("APOP is not enabled on this server.", RespCode.AUTH)
UNKNOWN_MECHANISM = Err("Unsupported authentication mechanism.")
AUTH_CANCELLED = Err("Authentication cancelled.")
LOGIN_DELAY = Err("Logged in too recently, try again later.", RespCode.LOGIN_DELAY)
NO_SUCH_MESSAGE = Err("There is no such message.")
ALREADY_DELETED = Err("Message is deleted.")
TOO_MANY_ERRORS = Err("Too many invalid commands, closing.")
IDLE_TIMEOUT = Err("Disconnected for inactivity.")
TOO_MANY_CONNECTIONS = Err("Too many connections, try again later.", RespCode.SYS_TEMP)
SHUTTING_DOWN = Err("Server shutting down.", RespCode.SYS_TEMP)
STLS_UNAVAILABLE = Err("STLS is not available on this server.")
ALREADY_SECURE = Err("TLS is already active.")
MESSAGE_GONE = Err("Message was removed by another agent.", RespCode.SYS_PERM)


@dataclass(frozen=True, slots=True)
class Listing:
    """A multi-line answer (CAPA, LIST, UIDL, bare AUTH): sent as `Ok(text)`, `Lines`,
    `End` (RFC 1939 §3)."""

    text: str
    lines: tuple[str, ...]


def problem(p: Problem, verb: str) -> Err:
    match p:
        case Problem.UNKNOWN_COMMAND:
            return Err("Unknown command.")
        case Problem.WRONG_STATE:
            return Err(f"{verb} is not valid in this state.")
        case Problem.EMPTY_LINE:
            return Err("Empty command.")
        case Problem.LINE_TOO_LONG:
            return Err("Command line too long.")
        case Problem.BAD_MESSAGE_NUMBER:
            return Err("Invalid message number.")
        case Problem.BAD_BASE64:
            return Err("Invalid base64 data.")
        case Problem.PASS_WITHOUT_USER:
            return Err("No username given.")
        case Problem.BAD_CHARACTERS:
            return Err("Invalid characters in command.")
        case Problem.BAD_ARGUMENTS:
            return Err(f"Invalid arguments for {verb}." if verb else "Invalid arguments.")


def failure(f: Failure) -> Err:
    match f:
        case Failure.IN_USE:
            return Err("Mailbox is locked by another POP3 session.", RespCode.IN_USE)
        case Failure.TEMPORARY:
            return Err("Temporary failure, try again later.", RespCode.SYS_TEMP)
        case Failure.PERMANENT:
            return Err("Mailbox cannot be opened.", RespCode.SYS_PERM)
        case Failure.GONE:
            return MESSAGE_GONE


def verdict(v: Verdict) -> Err:
    if v is Verdict.TEMPORARY:
        return Err("Temporary authentication failure.", RespCode.SYS_TEMP)
    return AUTH_FAILED
