"""What the client library raises.

`PopError` and its subclasses: the server answered -ERR; `code` is the RFC 2449 §8 /
RFC 3206 response code (None when the server sent none) and `text` the rest of the line.
The subclass comes from the code when there is one, else from the command: a refused
login is a `PopAuthError`. `PopProtocolError`: the server broke the protocol.
`PopConnectionError`: the network failed (refused, reset, closed, timed out, TLS).
`PopUsageError`: the command could not be sent at all (a user name with a line break, a
command not valid in the current state); nothing went to the server.
"""

from __future__ import annotations

from popbox.proto import events as ev


class PopClientError(Exception):
    """Anything the POP3 client library raises."""


class PopError(PopClientError):
    """The server answered -ERR."""

    def __init__(self, text: str, code: str | None = None, verb: str = "") -> None:
        self.text = text
        self.code = code
        self.verb = verb
        shown = f"[{code}] {text}" if code else text
        super().__init__(f"{verb}: -ERR {shown}" if verb else f"-ERR {shown}")


class PopAuthError(PopError):
    """The login was refused (`[AUTH]`, or -ERR to USER, PASS, APOP or AUTH)."""


class PopInUseError(PopError):
    """`[IN-USE]`: another session holds the maildrop (RFC 2449 §8.1.1)."""


class PopLoginDelayError(PopError):
    """`[LOGIN-DELAY]`: logged in too recently (RFC 2449 §8.1.2)."""


class PopTemporaryError(PopError):
    """`[SYS/TEMP]`: a temporary problem on the server (RFC 3206 §4)."""


class PopPermanentError(PopError):
    """`[SYS/PERM]`: a problem that will not go away by itself (RFC 3206 §4)."""


class PopProtocolError(PopClientError):
    """The server sent something the protocol does not allow."""


class PopConnectionError(PopClientError):
    """The connection could not be made, or broke."""


class PopTimeoutError(PopConnectionError):
    """The server did not answer in time."""


class PopTlsError(PopConnectionError):
    """TLS could not be set up: handshake, certificate, or STLS refused."""


class PopUsageError(PopClientError):
    """The protocol does not allow what was asked; nothing was sent."""


class PopPlaintextRefused(PopClientError):
    """The login would send a password in the clear to a remote host without TLS."""


class PopUnsupportedError(PopClientError):
    """The server lacks what was asked for (a SASL mechanism, an APOP timestamp, ...)."""


_BY_CODE: dict[str, type[PopError]] = {
    "IN-USE": PopInUseError,
    "LOGIN-DELAY": PopLoginDelayError,
    "SYS/TEMP": PopTemporaryError,
    "SYS/PERM": PopPermanentError,
    "AUTH": PopAuthError,
}
_LOGIN = (ev.User, ev.Pass, ev.Apop, ev.Auth, ev.SaslResponse, ev.SaslCancel)


def error_for(reply: ev.Err, verb: str = "") -> PopError:
    """The exception for an -ERR reply. Codes are hierarchical (RFC 2449 §8): `SYS/TEMP/X`
    is a `SYS/TEMP`."""
    kind: type[PopError] = PopAuthError if isinstance(reply.command, _LOGIN) else PopError
    if reply.code:
        levels = reply.code.upper().split("/")
        for depth in (2, 1):
            found = _BY_CODE.get("/".join(levels[:depth]))
            if found is not None:
                kind = found
                break
    return kind(reply.text, reply.code, verb)
