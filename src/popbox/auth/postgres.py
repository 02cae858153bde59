"""PassDB and UserDB in PostgreSQL: the ``users`` table of popbox.pg.schema.

One indexed query per request (``users`` by name, joined with its domain): ``password``
is a ``{SCHEME}hash`` of any scheme popbox.auth.schemes knows (a Dovecot SQL passdb's
values verify unchanged), verified by `auth.verifier.Verifier` (slow hashes on the
shared hashing pool, never on the event loop; the verified-login cache). A user whose
``enabled`` is false, or whose domain's is, is `UserInfo.disabled`: the passdb still
checks the password (and serves the credentials of challenge-response mechanisms), so
that the server can tell a client that proved who it is why it may not log in, and
nobody else; mail is still delivered. An unknown user costs one
verification against a fixed Argon2id hash, as a wrong password does, so timing does
not tell whether a name exists. Database trouble is `Verdict.TEMPORARY`
(`-ERR [SYS/TEMP]`), never a rejection.

UserDB: the location is the row's ``mail`` or else the ``auth.mail_location`` template
(for the postgres store, ``{user}``: the mailbox named after the user). Per-user
settings reach `UserInfo.extra`: ``home``, ``login_delay`` (seconds), ``expire_days`` (days).

Challenge-response SASL (`credentials()`, `schemes()`) as in popbox.auth.passwd_file:
CRAM-MD5 contexts and SCRAM key sets are given as stored; with `derive`, a ``{PLAIN}``
password also gives them (SCRAM salt keyed by `secret` and the user name, so it is the
same at every login and in every frontend that shares `auth.secret_file`). `schemes()`
looks at the distinct stored schemes of the enabled users, at most once per `schemes_ttl`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from popbox.auth import schemes as pwschemes
from popbox.auth.base import (
    CREDENTIAL_SCHEMES,
    Directory,
    PassDB,
    Secret,
    UserDB,
    UserInfo,
    Verdict,
)
from popbox.auth.credentials import CredentialSource
from popbox.auth.names import expand_location, normalize_username, valid_username
from popbox.auth.verifier import Verifier
from popbox.pg.pool import DB_ERRORS, Database

log = logging.getLogger("popbox")

_USER_QUERY = """
SELECT u.name, u.password, u.enabled AND coalesce(d.enabled, true) AS enabled,
       u.mail, u.home, u.uid, u.gid, u.login_delay, u.expire_days
FROM users u LEFT JOIN domains d ON d.id = u.domain_id
WHERE u.name = $1"""
_SCHEMES_QUERY = """
SELECT DISTINCT CASE WHEN password LIKE '{%}%' THEN split_part(substr(password, 2), '}', 1)
                     ELSE '' END AS scheme
FROM users WHERE enabled AND password <> ''"""


@dataclass(frozen=True, slots=True)
class _User:
    name: str
    password: str
    enabled: bool
    mail: str | None
    home: str | None
    uid: int | None
    gid: int | None
    login_delay: int | None
    expire_days: int | None


class PostgresUsers:
    """PassDB and UserDB over the ``users`` table."""

    def __init__(
        self,
        db: Database,
        mail_location: str,
        *,
        default_scheme: str = "CRYPT",
        derive: bool = False,
        secret: bytes | None = None,
        scram_iterations: int = pwschemes.DEFAULT_COST.scram_iterations,
        schemes_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        cache_ttl: float = 0.0,
    ) -> None:
        self._db = db
        self._template = mail_location
        self._default_scheme = default_scheme
        self._credentials = CredentialSource(
            default_scheme=default_scheme, derive=derive, secret=secret,
            iterations=scram_iterations,
        )
        self._verifier = Verifier(default_scheme=default_scheme, cache_ttl=cache_ttl, clock=clock)
        self._ttl = schemes_ttl
        self._clock = clock
        self._servable: tuple[float, frozenset[str]] | None = None

    @property
    def db(self) -> Database:
        return self._db

    async def aclose(self) -> None:
        """Close the database pool (shared with a postgres store: closing twice is fine)."""
        await self._db.close()

    async def _user(self, user: str) -> _User | Verdict | None:
        if not valid_username(user):
            return None
        try:
            row = await self._db.run(
                lambda conn: conn.fetchrow(_USER_QUERY, normalize_username(user)))
        except DB_ERRORS as exc:
            log.warning("postgres: user lookup failed: %s", exc)
            return Verdict.TEMPORARY
        return None if row is None else _User(**dict(row.items()))

    async def verify(self, user: str, password: Secret) -> Verdict:
        found = await self._user(user)
        if isinstance(found, Verdict):
            return found
        ok = await self._verifier.check(found.password if found else None, password)
        return Verdict.OK if ok and found else Verdict.REJECTED

    async def plaintext(self, user: str) -> Secret | Verdict | None:
        found = await self._user(user)
        if not isinstance(found, _User):
            return found
        return pwschemes.plaintext(found.password, default_scheme=self._default_scheme)

    async def schemes(self) -> frozenset[str]:
        now = self._clock()
        if self._servable is not None and now < self._servable[0]:
            return self._servable[1]
        try:
            rows = await self._db.run(lambda conn: conn.fetch(_SCHEMES_QUERY))
        except DB_ERRORS as exc:
            log.warning("postgres: password schemes not listed: %s", exc)
            return frozenset()
        found = CREDENTIAL_SCHEMES
        for row in rows:
            found &= self._credentials.servable("{" + row["scheme"] + "}" if row["scheme"] else "")
        self._servable = (now + self._ttl, found)
        return found

    async def credentials(self, user: str, scheme: str) -> Secret | Verdict | None:
        found = await self._user(user)
        if isinstance(found, Verdict):
            return found
        if found is None:
            return await self._credentials.lookup(None, scheme, user)
        return await self._credentials.lookup(found.password, scheme, found.name)

    async def names(self) -> list[str] | Verdict:
        try:
            rows = await self._db.run(lambda conn: conn.fetch(
                "SELECT name FROM users WHERE enabled ORDER BY id"))
        except DB_ERRORS as exc:
            log.warning("postgres: users not listed: %s", exc)
            return Verdict.TEMPORARY
        return [row["name"] for row in rows]

    async def varies(self, field: str) -> bool:
        """Per-user columns: any row may set its own."""
        return field in ("login_delay", "expire_days")

    async def lookup(self, user: str) -> UserInfo | Verdict | None:
        found = await self._user(user)
        if not isinstance(found, _User):
            return found
        location = found.mail or expand_location(self._template, found.name, found.home)
        if location is None:
            return None
        extra: dict[str, str] = {}
        if found.home:
            extra["home"] = found.home
        if found.login_delay is not None:
            extra["login_delay"] = str(found.login_delay)
        if found.expire_days is not None:
            extra["expire_days"] = str(found.expire_days)
        return UserInfo(found.name, location, found.uid, found.gid, extra,
                        disabled=not found.enabled)


if TYPE_CHECKING:  # mypy proves the class implements both contracts

    def _conforms(users: PostgresUsers) -> tuple[PassDB, UserDB, Directory]:
        return users, users, users
