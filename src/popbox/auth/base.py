"""The authentication contract: PassDB ("is this the password?") and UserDB ("where is the
mail?") are separate, as in Dovecot, so that one can be swapped without the other.

Outcomes are values. An unknown user and a wrong password are the same `Verdict.REJECTED`
so that nothing above this layer can tell them apart (no user enumeration).

Challenge-response mechanisms (APOP, CRAM-MD5, SCRAM) need the stored credential rather
than a yes/no: `credentials(user, scheme)` gives it, and `schemes()` says which schemes
can be given for every user, so that the server advertises only mechanisms that work.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class Verdict(enum.Enum):
    OK = "ok"
    REJECTED = "rejected"  # unknown user or wrong password: deliberately one value
    TEMPORARY = "temporary"  # the database could not be read


@dataclass(frozen=True, slots=True)
class Secret:
    """A password or shared secret. Its repr never shows the value."""

    value: bytes = field(repr=False)

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class UserInfo:
    """Where a user's mail lives, as the userdb says."""

    name: str
    mail_location: str
    uid: int | None = None
    gid: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    # POP3 logins are refused (passwd-file `nopop3`, PostgreSQL `enabled` false for the
    # user or the domain) once the client has proved who it is; mail is still delivered.
    disabled: bool = False


CREDENTIAL_SCHEMES = frozenset({"PLAIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"})
"""What `PassDB.credentials` may be asked for. The text forms are Dovecot's: PLAIN is the
password, CRAM-MD5 the 32-byte HMAC-MD5 context in hex, SCRAM-* `iter,salt,stored,server`
with base64 fields."""


class PassDB(Protocol):
    async def verify(self, user: str, password: Secret) -> Verdict:
        """Check a plaintext password (USER/PASS, AUTH PLAIN/LOGIN)."""
        ...

    async def schemes(self) -> frozenset[str]:
        """The credential schemes `credentials()` can serve for every user right now.

        A SASL mechanism that needs a scheme not in here is not advertised: a client
        that picked it would fail for an account that has no such credential.
        """
        ...

    async def credentials(self, user: str, scheme: str) -> Secret | Verdict | None:
        """The stored credential of `user` for `scheme` (see CREDENTIAL_SCHEMES), in text
        form, possibly derived from a stored plaintext password.

        None when the user is unknown or nothing usable is stored (the caller then goes
        on with a mock, so that an unknown user looks like a wrong password);
        Verdict.TEMPORARY when the database could not be read.
        """
        ...

    async def plaintext(self, user: str) -> Secret | Verdict | None:
        """The plaintext-equivalent secret for challenge-response (APOP, CRAM-MD5).

        None when the user is unknown or the stored scheme cannot give it;
        Verdict.TEMPORARY when the database could not be read.
        """
        ...

    async def aclose(self) -> None:
        """Release what the database holds (a connection pool); a second call does nothing."""
        ...


class UserDB(Protocol):
    async def lookup(self, user: str) -> UserInfo | Verdict | None:
        """The user's mail location; None if unknown; Verdict.TEMPORARY on trouble."""
        ...

    async def aclose(self) -> None:
        """Release what the database holds (a connection pool); a second call does nothing."""
        ...


@runtime_checkable
class Directory(Protocol):
    """A userdb that can list its users (for `popbox expire`) and say whether users may
    have their own value of a setting (for CAPA's USER tags, RFC 2449 §§6.7-6.8)."""

    async def names(self) -> list[str] | Verdict:
        """Every user name; Verdict.TEMPORARY when the database could not be read."""
        ...

    async def varies(self, field: str) -> bool:
        """Whether some user may have their own `field` (an extra field such as
        `expire_days`), so that the server's default is not everyone's."""
        ...
