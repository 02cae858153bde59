"""Which SASL mechanisms a connection is offered (RFC 5034 §4, RFC 2449 §6.3), and making
one when the client picks it.

The list starts from `auth.mechanisms` (or the default) and keeps, in order, only those
that can work here: a mechanism that sends a password or a bearer token needs TLS or a
local client (RFC 8314 §5.1 spirit; SCRAM and CRAM-MD5 never send the password), -PLUS
needs channel binding data (so TLS), a bearer mechanism needs a token validator, and a
challenge-response mechanism needs a credential scheme the passdb can serve for every
user. CAPA's SASL line and the bare AUTH listing are this list, and AUTH accepts only
what is on it.

The randomness a mechanism needs (CRAM-MD5 challenge, SCRAM nonce) and the server secret
for SCRAM mocks are supplied here, so the mechanisms themselves stay pure.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping

from popbox.backends import server_secret
from popbox.config import Config
from popbox.proto import sasl
from popbox.proto.sasl_cram import CramMd5, challenge
from popbox.proto.sasl_oauth import OAuthBearer, XOAuth2
from popbox.proto.sasl_scram import Scram


def enabled(config: Config) -> tuple[str, ...]:
    """The configured mechanisms, in order (before per-connection filtering)."""
    if config.auth.mechanisms is not None:
        return tuple(config.auth.mechanisms)
    bearer = sasl.BEARER_MECHANISMS if config.oauth.enabled else ()
    return sasl.DEFAULT_MECHANISMS + bearer


def offered(
    names: tuple[str, ...],
    *,
    schemes: frozenset[str],
    cleartext_allowed: bool,
    bindings: Mapping[str, bytes],
    bearer: bool,
) -> tuple[str, ...]:
    """`names` less those that cannot work on this connection."""
    found = []
    for name in names:
        info = sasl.INFO[name]
        if info.cleartext and not cleartext_allowed:
            continue
        if (info.binding and not bindings) or (info.bearer and not bearer):
            continue
        if info.scheme is not None and info.scheme not in schemes:
            continue
        found.append(name)
    return tuple(found)


def create(
    name: str, config: Config, *, bindings: Mapping[str, bytes], plus_offered: bool
) -> sasl.Mechanism:
    """A new exchange of mechanism `name` (one of `sasl.INFO`)."""
    oauth = config.oauth
    match name:
        case "PLAIN":
            return sasl.Plain()
        case "LOGIN":
            return sasl.Login()
        case "CRAM-MD5":
            random = secrets.randbelow(10**12)
            return CramMd5(challenge(random, int(time.time()), config.server.hostname))
        case "OAUTHBEARER":
            return OAuthBearer(oauth.scope, oauth.openid_configuration)
        case "XOAUTH2":
            return XOAuth2(oauth.scope)
        case "SCRAM-SHA-1" | "SCRAM-SHA-1-PLUS" | "SCRAM-SHA-256" | "SCRAM-SHA-256-PLUS":
            secret = server_secret(config.auth.secret_file)
            return Scram(name, nonce=secrets.token_urlsafe(24), secret=secret,
                         bindings=bindings, plus_offered=plus_offered)
        case _:
            raise ValueError(f"unknown SASL mechanism {name!r}")
