"""Server-side SASL mechanisms as small pure state machines (RFC 4422, RFC 5034).

A mechanism never touches a password database: it turns client responses into either a
challenge to send, or the credentials the server must verify, or a failure. The shell
does the verification and answers +OK or -ERR [AUTH].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Challenge:
    data: bytes


@dataclass(frozen=True, slots=True)
class Credentials:
    """A plaintext login to verify: `authzid` empty or equal to `authcid` (RFC 4616 §2)."""

    authcid: str
    password: bytes = field(repr=False)
    authzid: str = ""


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str


Step = Challenge | Credentials | Failed


class Mechanism(Protocol):
    def start(self, initial: bytes | None) -> Step: ...

    def step(self, response: bytes) -> Step: ...


def _text(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


class Plain:
    """PLAIN (RFC 4616): one message `authzid NUL authcid NUL password`."""

    def start(self, initial: bytes | None) -> Step:
        return Challenge(b"") if initial is None else self.step(initial)

    def step(self, response: bytes) -> Step:
        parts = response.split(b"\0")
        if len(parts) != 3:
            return Failed("malformed PLAIN message")
        authzid, authcid = _text(parts[0]), _text(parts[1])
        if authzid is None or not authcid or not parts[2]:
            return Failed("malformed PLAIN message")
        return Credentials(authcid, parts[2], authzid)


class Login:
    """LOGIN (draft-murchison-sasl-login): username, then password, each a response."""

    def __init__(self) -> None:
        self._user: str | None = None

    def start(self, initial: bytes | None) -> Step:
        return Challenge(b"Username:") if initial is None else self.step(initial)

    def step(self, response: bytes) -> Step:
        if self._user is None:
            user = _text(response)
            if not user:
                return Failed("malformed LOGIN user name")
            self._user = user
            return Challenge(b"Password:")
        if not response:
            return Failed("empty password")
        return Credentials(self._user, response)


PLAINTEXT_MECHANISMS: dict[str, Callable[[], Mechanism]] = {"PLAIN": Plain, "LOGIN": Login}
