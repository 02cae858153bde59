"""The password database, user database, mail store and token validator a configuration
names, built from two registries.

`auth.backend` and `store.backend` are names; `USERS` and `STORES` map each name to a
factory that builds the backend from the configuration. A user backend answers both
"is this the password" (PassDB) and "where is the mail" (UserDB). A factory that needs
PostgreSQL asks the `Shared` resources for the database, so the backends of one process
share one pool (popbox.pg.pool). Adding a backend is its module, one entry here, and its
name among the configuration's choices (popbox.config).

The store a configuration names serves the locations without a type prefix; a location
with one (``mbox:/var/mail/alice``, ``maildir:~/Maildir``) goes to that type's store
(`LOCATION_TYPES`, through popbox.store.routing), so mbox users can sit beside Maildir or
PostgreSQL users.

Every backend has ``aclose()`` (part of the PassDB, UserDB and MailStore contracts);
`Backends.aclose` closes each backend once, whatever the combination. Raises ConfigError
for a file named by the configuration that cannot be used.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import jwt

from popbox.auth.base import PassDB, Secret, UserDB
from popbox.auth.oauth import IntrospectionValidator, JwtValidator, TokenValidator
from popbox.auth.passwd_file import PasswdFile
from popbox.auth.postgres import PostgresUsers
from popbox.config import Config, ConfigError, OAuthSection
from popbox.pg.pool import Database
from popbox.store.base import MailStore
from popbox.store.maildir import MaildirStore
from popbox.store.mbox import MboxStore
from popbox.store.postgres import PostgresStore
from popbox.store.routing import LocationRouter


class UserBackend(PassDB, UserDB, Protocol):
    """A backend that is both the password database and the user database."""


@dataclass(frozen=True, slots=True)
class Backends:
    passdb: PassDB
    userdb: UserDB
    store: MailStore
    tokens: TokenValidator | None = None  # OAUTHBEARER / XOAUTH2, when [oauth] is set

    async def aclose(self) -> None:
        """Close every backend once (pools, lock connections)."""
        closed: list[object] = []
        for backend in (self.store, self.passdb, self.userdb):
            if not any(backend is done for done in closed):
                closed.append(backend)
                await backend.aclose()


@dataclass(slots=True)
class Shared:
    """What backends of one configuration share: the PostgreSQL database, made on demand."""

    config: Config
    _database: Database | None = field(default=None, init=False)

    def database(self) -> Database:
        if self._database is None:
            self._database = database(self.config)
        return self._database


def database(config: Config) -> Database:
    """The [postgres] database (one pool, opened on first use)."""
    pg = config.postgres
    return Database(
        pg.dsn.get_secret_value(), min_size=pg.pool_min, max_size=pg.pool_max,
        connect_timeout=pg.connect_timeout, command_timeout=pg.command_timeout,
    )


@functools.cache
def server_secret(path: Path | None) -> bytes:
    """`auth.secret_file`'s bytes (read once), or a random secret for this process."""
    if path is None:
        return os.urandom(32)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"auth.secret_file: cannot read {path}: {exc.strerror}") from None
    if len(data) < 16:
        raise ConfigError(f"auth.secret_file: {path} must hold at least 16 random bytes")
    return data


def users_file(config: Config) -> PasswdFile:
    """The passdb and userdb of `auth.passwd_file` (also what a reload reads again)."""
    auth = config.auth
    return PasswdFile(
        auth.passwd_file, auth.mail_location, derive=auth.derive_credentials,
        secret=server_secret(auth.secret_file), cache_ttl=auth.cache_ttl,
    )


def _passwd_file(config: Config, shared: Shared) -> UserBackend:
    return users_file(config)


def _postgres_users(config: Config, shared: Shared) -> UserBackend:
    auth = config.auth
    return PostgresUsers(
        shared.database(), auth.mail_location, derive=auth.derive_credentials,
        secret=server_secret(auth.secret_file), cache_ttl=auth.cache_ttl,
    )


def _maildir(config: Config, shared: Shared) -> MailStore:
    store = config.store
    return MaildirStore(mark_seen=store.mark_seen, uidl_import=store.uidl_import,
                        follow_symlinks=store.follow_symlinks, deleted=store.deleted)


def _postgres_store(config: Config, shared: Shared) -> MailStore:
    return PostgresStore(shared.database(), mark_seen=config.store.mark_seen,
                         chunk_size=config.postgres.chunk_size, deleted=config.store.deleted,
                         listing_cache=config.postgres.listing_cache)


def _mbox(config: Config, shared: Shared) -> MailStore:
    s = config.store
    return MboxStore(fmt=s.mbox_format, locks=s.mbox_lock, lock_timeout=s.mbox_lock_timeout,
                     dotlock_stale=s.mbox_dotlock_stale, mark_seen=s.mark_seen,
                     index_dir=None if s.mbox_index_dir is None else str(s.mbox_index_dir))


USERS: Mapping[str, Callable[[Config, Shared], UserBackend]] = {
    "passwd-file": _passwd_file,
    "postgres": _postgres_users,
}
STORES: Mapping[str, Callable[[Config, Shared], MailStore]] = {
    "maildir": _maildir,
    "postgres": _postgres_store,
}
# Location prefixes served by a store of their own, whatever `store.backend` is.
LOCATION_TYPES: Mapping[str, Callable[[Config, Shared], MailStore]] = {
    "mbox": _mbox,
}


def file_store(config: Config) -> MailStore:
    """The stores of a mail process (popbox.mailproc): those of files with an
    owner, Maildir and mbox; the PostgreSQL store is always read by the front."""
    shared = Shared(config)
    maildir = _maildir(config, shared)
    return LocationRouter(maildir, {"mbox": _mbox(config, shared), "maildir": maildir})


def build(config: Config) -> Backends:
    shared = Shared(config)
    users = USERS[config.auth.backend](config, shared)
    default = STORES[config.store.backend](config, shared)
    by_type = {kind: factory(config, shared) for kind, factory in LOCATION_TYPES.items()}
    if config.store.backend == "maildir":
        by_type["maildir"] = default
    store = LocationRouter(default, by_type)
    return Backends(passdb=users, userdb=users, store=store, tokens=token_validator(config.oauth))


def token_validator(oauth: OAuthSection) -> TokenValidator | None:
    try:
        if oauth.validator == "jwt":
            assert oauth.issuer is not None and oauth.audience is not None
            return JwtValidator.from_files(
                jwks_file=oauth.jwks_file, public_key_file=oauth.public_key_file,
                issuer=oauth.issuer, audience=oauth.audience, algorithms=oauth.algorithms,
                username_claim=oauth.username_claim or "email", leeway=oauth.leeway,
            )
        if oauth.validator == "introspection":
            assert oauth.introspection_url is not None
            secret = None
            if oauth.client_secret is not None:
                secret = Secret(oauth.client_secret.get_secret_value().encode())
            elif oauth.client_secret_file is not None:
                secret = Secret(oauth.client_secret_file.read_bytes().strip())
            return IntrospectionValidator(
                oauth.introspection_url, client_id=oauth.client_id, client_secret=secret,
                username_claim=oauth.username_claim or "username", issuer=oauth.issuer,
                audience=oauth.audience, leeway=oauth.leeway, timeout=oauth.timeout,
                ca_file=oauth.ca_file,
            )
    except OSError as exc:
        raise ConfigError(f"oauth: cannot read {exc.filename}: {exc.strerror}") from None
    except (ValueError, jwt.PyJWTError) as exc:
        raise ConfigError(f"oauth: unusable key: {exc}") from None
    return None
