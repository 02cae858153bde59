"""Server-side SASL mechanisms as small pure state machines (RFC 4422, RFC 5034).

A mechanism never touches a password database, a clock, a random source or a socket.
It turns client responses into `Step`s:

- `Challenge`: data to send as `+ base64` (RFC 5034 §4); the client's next line comes
  back through `step()`.
- `Credentials`: a plaintext login (PLAIN, LOGIN) the shell verifies with the passdb.
- `NeedCredential(user, scheme)`: the mechanism needs the user's stored credential for
  `scheme` (CRAM-MD5's HMAC context, SCRAM's `iter,salt,storedkey,serverkey`). The shell
  asks the passdb and answers with `provide(StoredCredential(...))`; `None` there means
  "no such user, or nothing usable stored", and the mechanism goes on with a mock so
  that the exchange looks the same and fails only at the end (RFC 5802 §5.1).
- `NeedToken(user, token)`: a bearer token to validate (OAUTHBEARER, XOAUTH2); the
  shell answers with `provide(TokenOwner(...))`.
- `Authenticated(user)`: the mechanism verified the client itself (CRAM-MD5, SCRAM,
  OAuth after the token was validated); the shell opens the maildrop.
- `Failed`: the exchange is over; the shell answers `-ERR [AUTH]`.

Mechanisms that need randomness (CRAM-MD5's challenge, SCRAM's nonce) or a secret (the
SCRAM mock) receive it from the shell when they are made.

`INFO` says what each mechanism needs, so the shell can tell what to advertise on a
connection (RFC 5034 §4: CAPA's SASL line and the bare AUTH listing) without making one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

# --- steps (mechanism -> shell) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Credentials:
    """A plaintext login to verify: `authzid` empty or equal to `authcid` (RFC 4616 §2)."""

    authcid: str
    password: bytes = field(repr=False)
    authzid: str = ""


@dataclass(frozen=True, slots=True)
class NeedCredential:
    """Ask for the stored credential of `user` for `scheme`; answer with `provide()`."""

    user: str
    scheme: str


@dataclass(frozen=True, slots=True)
class NeedToken:
    """Ask whose bearer token this is; `user` is who the client claims to be ("" if it
    did not say). Answer with `provide(TokenOwner(...))`."""

    user: str
    token: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The mechanism has verified the client: log `user` in."""

    user: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The exchange failed. `reason` is a fixed text (never client data) for the log;
    `user` is who the client said it was, when the mechanism got that far."""

    reason: str
    user: str = ""


Step = Challenge | Credentials | NeedCredential | NeedToken | Authenticated | Failed

# --- answers (shell -> mechanism) --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredCredential:
    """The answer to `NeedCredential`: the credential in the passdb's text form, or None."""

    data: bytes | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class TokenOwner:
    """The answer to `NeedToken`: the user the token was issued to, or None if the token
    is not valid (or not for the user the client named)."""

    user: str | None


Answer = StoredCredential | TokenOwner


class Mechanism(Protocol):
    def start(self, initial: bytes | None) -> Step: ...

    def step(self, response: bytes) -> Step: ...

    def provide(self, answer: Answer) -> Step: ...


# --- what each mechanism needs ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Info:
    scheme: str | None  # the credential scheme it asks the passdb for (None: none)
    cleartext: bool  # the client sends a password or bearer token: TLS or local only
    binding: bool = False  # -PLUS: needs TLS channel binding data (RFC 5056)
    bearer: bool = False  # needs a token validator ([oauth])


INFO: dict[str, Info] = {
    "PLAIN": Info(None, cleartext=True),
    "LOGIN": Info(None, cleartext=True),
    "CRAM-MD5": Info("CRAM-MD5", cleartext=False),
    "SCRAM-SHA-1": Info("SCRAM-SHA-1", cleartext=False),
    "SCRAM-SHA-1-PLUS": Info("SCRAM-SHA-1", cleartext=False, binding=True),
    "SCRAM-SHA-256": Info("SCRAM-SHA-256", cleartext=False),
    "SCRAM-SHA-256-PLUS": Info("SCRAM-SHA-256", cleartext=False, binding=True),
    "OAUTHBEARER": Info(None, cleartext=True, bearer=True),
    "XOAUTH2": Info(None, cleartext=True, bearer=True),
}

DEFAULT_MECHANISMS = (
    "PLAIN", "LOGIN", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-1", "CRAM-MD5"
)
BEARER_MECHANISMS = ("OAUTHBEARER", "XOAUTH2")


# --- PLAIN and LOGIN ----------------------------------------------------------------------


def text(data: bytes) -> str | None:
    """UTF-8 without control characters, or None."""
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return decoded if decoded.isprintable() else None


class _AsksNothing:
    def provide(self, answer: Answer) -> Step:
        return Failed("unexpected answer")


class Plain(_AsksNothing):
    """PLAIN (RFC 4616 §2): one message `authzid NUL authcid NUL password`."""

    def start(self, initial: bytes | None) -> Step:
        return Challenge(b"") if initial is None else self.step(initial)

    def step(self, response: bytes) -> Step:
        parts = response.split(b"\0")
        if len(parts) != 3:
            return Failed("malformed PLAIN message")
        authzid, authcid = text(parts[0]), text(parts[1])
        if authzid is None or not authcid or not parts[2]:
            return Failed("malformed PLAIN message")
        return Credentials(authcid, parts[2], authzid)


class Login(_AsksNothing):
    """LOGIN (draft-murchison-sasl-login): username, then password, each a response."""

    def __init__(self) -> None:
        self._user: str | None = None

    def start(self, initial: bytes | None) -> Step:
        return Challenge(b"Username:") if initial is None else self.step(initial)

    def step(self, response: bytes) -> Step:
        if self._user is None:
            user = text(response)
            if not user:
                return Failed("malformed LOGIN user name")
            self._user = user
            return Challenge(b"Password:")
        if not response:
            return Failed("empty password", self._user)
        return Credentials(self._user, response)
