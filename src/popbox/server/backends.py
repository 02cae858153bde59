"""Builds the configured password database, user database, mail store and token validator.
Raises ConfigError for a file named by the configuration that cannot be used."""

from __future__ import annotations

import jwt

from popbox.auth.base import Secret
from popbox.auth.oauth import IntrospectionValidator, JwtValidator, TokenValidator
from popbox.auth.passwd_file import PasswdFile
from popbox.auth.postgres import PostgresUsers
from popbox.config import Config, ConfigError, OAuthSection
from popbox.server.context import Backends
from popbox.server.mechanisms import server_secret
from popbox.store.base import MailStore
from popbox.store.maildir import MaildirStore
from popbox.store.pg_pool import Database
from popbox.store.postgres import PostgresStore


def database(config: Config) -> Database:
    """The [postgres] database (one pool, opened on first use)."""
    pg = config.postgres
    return Database(
        pg.dsn.get_secret_value(), min_size=pg.pool_min, max_size=pg.pool_max,
        connect_timeout=pg.connect_timeout, command_timeout=pg.command_timeout,
    )


def users_file(config: Config) -> PasswdFile:
    """The passdb and userdb of `auth.passwd_file`."""
    return PasswdFile(
        config.auth.passwd_file, config.auth.mail_location,
        derive=config.auth.derive_credentials, secret=server_secret(config.auth.secret_file),
        cache_ttl=config.auth.cache_ttl,
    )


def build(config: Config) -> Backends:
    uses_pg = "postgres" in (config.auth.backend, config.store.backend)
    db = database(config) if uses_pg else None
    users: PasswdFile | PostgresUsers
    if db is not None and config.auth.backend == "postgres":
        users = PostgresUsers(
            db, config.auth.mail_location,
            derive=config.auth.derive_credentials, secret=server_secret(config.auth.secret_file),
            cache_ttl=config.auth.cache_ttl,
        )
    else:
        users = users_file(config)
    store: MailStore
    if db is not None and config.store.backend == "postgres":
        store = PostgresStore(db, mark_seen=config.store.mark_seen,
                              chunk_size=config.postgres.chunk_size)
    else:
        store = MaildirStore(mark_seen=config.store.mark_seen,
                             uidl_import=config.store.uidl_import)
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
