"""Final delivery, shared by `popbox lmtp` and `popbox deliver`: recipient address ->
userdb -> the user's mail, written with the identity of its owner
(popbox.mailproc.MailAccess: in process for virtual users, by a mail process with
the user's uid, gid and groups when the userdb gives the user a uid of their own).

Recipients: the address as given (domain lowercased, popbox.auth.names), without the
`recipient_delimiter` extension (`alice+lists@x` -> `alice@x`, as Postfix writes it),
or only its local part with `strip_domain` (a users file without domains). A name that
could not be a user is unknown; an unknown user is a permanent failure (550 5.1.1,
EX_NOUSER); a userdb or store that cannot answer now is temporary (451 4.3.0,
EX_TEMPFAIL), so the MTA keeps the message and tries again. A user whose mail may not be
written by anyone here (a uid or gid below `auth.first_valid_uid`/`first_valid_gid`, uid
0, or a uid of another user when popbox was not started as root) is REFUSED at RCPT, a
configuration problem of this system (451 4.3.5, EX_TEMPFAIL): the MTA keeps the message.
Nothing is ever reported delivered unless the store said it is durably stored.

Recipients found are remembered for `cache_ttl` seconds (`lmtp.recipient_cache`, 5 by
default; at most CACHE_SIZE of them, the oldest forgotten first), so an MTA's stream of
mail for the same users costs no userdb query per RCPT. Only users found are kept: a
name unknown, refused or not answered is asked again each time, so a user just added
gets mail at once; a user removed or moved may still get mail at the old location for
up to `cache_ttl` seconds.

Trace headers (RFC 5321 §4.4): the final delivery agent adds `Return-Path:` with the
envelope sender, and `Delivered-To:` with the recipient (loop detection, as Postfix's
local(8) and Dovecot's LMTP do).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

from popbox.auth.base import UserDB, UserInfo, Verdict
from popbox.auth.names import normalize_username, valid_username
from popbox.mailowner import Refused
from popbox.mailproc import MailAccess
from popbox.store.base import Failure

log = logging.getLogger("popbox")

CACHE_SIZE = 10_000


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    NO_SUCH_USER = "no such user"
    TEMPORARY = "temporary failure"
    PERMANENT = "permanent failure"  # the store refuses this mailbox for good
    FULL = "storage full"  # no space or quota left: temporary (452 4.3.1)
    REFUSED = "owner refused"  # no process here may write this user's mail (451 4.3.5)


def trace_headers(sender: str | None, recipient: str) -> bytes:
    lines = []
    if sender is not None:
        lines.append(f"Return-Path: <{sender}>\n")
    lines.append(f"Delivered-To: {recipient}\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


class Agent:
    """Resolves recipients and delivers into one store."""

    def __init__(
        self, userdb: UserDB, mail: MailAccess, *, recipient_delimiter: str = "",
        strip_domain: bool = False, cache_ttl: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.userdb = userdb
        self.mail = mail
        self.delimiter = recipient_delimiter
        self.strip_domain = strip_domain
        self.cache_ttl = cache_ttl
        self.clock = clock
        self._found: dict[str, tuple[float, UserInfo]] = {}  # name -> (until, entry)

    def user_name(self, address: str) -> str | None:
        """The userdb name for a recipient address, or None if it cannot be one."""
        local, at, domain = address.rpartition("@") if "@" in address else (address, "", "")
        if self.delimiter:
            for char in self.delimiter:
                local = local.split(char, 1)[0] if local.find(char) > 0 else local
        name = local if self.strip_domain or not at else f"{local}@{domain}"
        return normalize_username(name) if valid_username(name) else None

    async def resolve(self, address: str) -> UserInfo | Outcome:
        """The userdb entry of a recipient, or NO_SUCH_USER / TEMPORARY / REFUSED. A local
        part in another case than the userdb's is tried again in lower case (MTAs keep the
        case the sender wrote)."""
        name = self.user_name(address)
        if name is None:
            return Outcome.NO_SUCH_USER
        now = self.clock()
        cached = self._found.get(name)
        if cached is not None:
            if now < cached[0]:
                return cached[1]
            del self._found[name]
        found = await self._lookup(name)
        if found is Outcome.NO_SUCH_USER and name != name.lower():
            found = await self._lookup(name.lower())
        if isinstance(found, UserInfo) and self.cache_ttl > 0:
            if len(self._found) >= CACHE_SIZE:
                del self._found[next(iter(self._found))]  # the oldest
            self._found[name] = (now + self.cache_ttl, found)
        return found

    async def _lookup(self, name: str) -> UserInfo | Outcome:
        try:
            info = await self.userdb.lookup(name)
        except Exception:  # a backend bug must not become a 250 or a bounce
            log.exception("userdb lookup of %r failed", name)
            return Outcome.TEMPORARY
        if isinstance(info, UserInfo):
            why = self.mail.route(info)
            if isinstance(why, Refused):
                log.error("delivery refused user=%s uid=%s gid=%s: %s", info.name, info.uid,
                          info.gid, why.value)
                return Outcome.REFUSED
            return info
        return Outcome.TEMPORARY if info is Verdict.TEMPORARY else Outcome.NO_SUCH_USER

    async def deliver(self, user: UserInfo, message: bytes) -> Outcome:
        try:
            failure = await self.mail.deliver(user, message)
        except Exception:
            log.exception("delivery to %r failed", user.mail_location)
            return Outcome.TEMPORARY
        if failure is None:
            return Outcome.DELIVERED
        if isinstance(failure, Refused):
            return Outcome.REFUSED
        if failure is Failure.FULL:
            return Outcome.FULL
        return Outcome.PERMANENT if failure is Failure.PERMANENT else Outcome.TEMPORARY
