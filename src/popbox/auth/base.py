"""The authentication contract: PassDB ("is this the password?") and UserDB ("where is the
mail?") are separate, as in Dovecot, so that one can be swapped without the other.

Outcomes are values. An unknown user and a wrong password are the same `Verdict.REJECTED`
so that nothing above this layer can tell them apart (no user enumeration).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


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


class PassDB(Protocol):
    async def verify(self, user: str, password: Secret) -> Verdict:
        """Check a plaintext password (USER/PASS, AUTH PLAIN/LOGIN)."""
        ...

    async def plaintext(self, user: str) -> Secret | Verdict | None:
        """The plaintext-equivalent secret for challenge-response (APOP, CRAM-MD5).

        None when the user is unknown or the stored scheme cannot give it;
        Verdict.TEMPORARY when the database could not be read.
        """
        ...


class UserDB(Protocol):
    async def lookup(self, user: str) -> UserInfo | Verdict | None:
        """The user's mail location; None if unknown; Verdict.TEMPORARY on trouble."""
        ...
