"""Bearer token validation for OAUTHBEARER (RFC 7628) and XOAUTH2.

A `TokenValidator` answers one question: whose token is this? It returns the user name,
`Verdict.REJECTED` (not valid, expired, not for this server) or `Verdict.TEMPORARY` (it
cannot tell right now). The current time is passed in, so tests and the server agree on
what "expired" means. Two validators:

- `JwtValidator`: a signed JWT checked locally (RFC 7519; the RFC 8725 best practices):
  the signature with a key from a JWKS file (picked by `kid`) or one PEM public key,
  only with the configured algorithms (never `none`, and a JWK only with its own
  algorithm); `iss` and `aud` must match, `exp` is required and, like `nbf`, checked
  against `now` with a small leeway. The user is one claim (`email` by default).
- `IntrospectionValidator`: the token is POSTed to the authorization server's
  introspection endpoint (RFC 7662 §2.1) with the server's client credentials (HTTP
  Basic, RFC 6749 §2.3.1); `active` must be true, `exp`/`nbf`/`aud`/`iss` are checked
  when present. Network trouble or a non-200 answer is TEMPORARY, and is logged without
  the token.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote_plus

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from popbox.auth.base import Secret, Verdict

log = logging.getLogger("popbox")

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
    | ed448.Ed448PublicKey
)


class TokenValidator(Protocol):
    async def validate(self, token: Secret, now: float) -> str | Verdict:
        """The user `token` was issued to, or REJECTED, or TEMPORARY."""
        ...


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _check_claims(
    claims: Mapping[str, Any], now: float, leeway: float, *, username_claim: str,
    issuer: str | None = None, audience: str | None = None,
) -> str | Verdict:
    """Time, issuer and audience checks shared by both validators; then the user name."""
    if "exp" in claims:
        exp = _number(claims["exp"])
        if exp is None or now >= exp + leeway:
            return Verdict.REJECTED
    if "nbf" in claims:
        nbf = _number(claims["nbf"])
        if nbf is None or now < nbf - leeway:
            return Verdict.REJECTED
    if issuer is not None and claims.get("iss") != issuer:
        return Verdict.REJECTED
    if audience is not None:
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if audience not in audiences:
            return Verdict.REJECTED
    user = claims.get(username_claim)
    return user if isinstance(user, str) and user.isprintable() and user else Verdict.REJECTED


class JwtValidator:
    """Signed JWTs, checked locally. Give `jwks` (a JWK Set) or `public_key`."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks: jwt.PyJWKSet | None = None,
        public_key: PublicKey | None = None,
        algorithms: Sequence[str] = ("RS256", "PS256", "ES256", "ES384", "EdDSA"),
        username_claim: str = "email",
        leeway: float = 30.0,
    ) -> None:
        if (jwks is None) == (public_key is None):
            raise ValueError("give exactly one of jwks and public_key")
        if not algorithms or any(a.lower() == "none" for a in algorithms):
            raise ValueError('algorithms must be listed, and never "none"')
        self._jwks = [k for k in (jwks.keys if jwks else ()) if k.public_key_use in (None, "sig")]
        self._key = public_key
        self._issuer, self._audience = issuer, audience
        self._algorithms = list(algorithms)
        self._claim, self._leeway = username_claim, leeway

    @classmethod
    def from_files(
        cls, *, jwks_file: Path | None = None, public_key_file: Path | None = None,
        **settings: Any,
    ) -> JwtValidator:
        """Read the keys (at startup). Raises OSError or ValueError for a bad file."""
        if jwks_file is not None:
            return cls(jwks=jwt.PyJWKSet.from_json(jwks_file.read_text()), **settings)
        if public_key_file is None:
            raise ValueError("give jwks_file or public_key_file")
        key = load_pem_public_key(public_key_file.read_bytes())
        if not isinstance(key, PublicKey):
            raise ValueError(f"{public_key_file}: not a key type JWTs are signed with")
        return cls(public_key=key, **settings)

    async def validate(self, token: Secret, now: float) -> str | Verdict:
        return self.check(token.value, now)

    def _pick(self, header: Mapping[str, Any]) -> jwt.PyJWK | PublicKey | None:
        if self._key is not None:
            return self._key
        kid = header.get("kid")
        if kid is None:
            return self._jwks[0] if len(self._jwks) == 1 else None
        return next((k for k in self._jwks if k.key_id == kid), None)

    def check(self, token: bytes, now: float) -> str | Verdict:
        try:
            key = self._pick(jwt.get_unverified_header(token))
            if key is None:
                return Verdict.REJECTED
            claims = jwt.decode(
                token, key, algorithms=self._algorithms, audience=self._audience,
                issuer=self._issuer,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "require": ["exp", "iss", "aud"]},
            )
        except (jwt.PyJWTError, ValueError, TypeError):
            return Verdict.REJECTED
        return _check_claims(claims, now, self._leeway, username_claim=self._claim)


class IntrospectionValidator:
    """RFC 7662 token introspection over HTTP(S)."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str | None = None,
        client_secret: Secret | None = None,
        username_claim: str = "username",
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 30.0,
        timeout: float = 10.0,
        ca_file: Path | None = None,
    ) -> None:
        self._url = url
        self._auth: httpx.BasicAuth | None = None
        if client_id is not None:
            secret = client_secret.value.decode("utf-8") if client_secret else ""
            self._auth = httpx.BasicAuth(quote_plus(client_id), quote_plus(secret))
        self._claim, self._issuer, self._audience = username_claim, issuer, audience
        self._leeway, self._timeout = leeway, timeout
        self._tls = ssl.create_default_context(cafile=ca_file)

    async def validate(self, token: Secret, now: float) -> str | Verdict:
        form = {"token": token.value.decode("utf-8", "replace"),
                "token_type_hint": "access_token"}
        try:
            async with httpx.AsyncClient(
                auth=self._auth, verify=self._tls, timeout=self._timeout, trust_env=False
            ) as client:
                response = await client.post(
                    self._url, data=form, headers={"Accept": "application/json"}
                )
        except httpx.HTTPError as exc:
            log.warning("oauth introspection failed: %s", type(exc).__name__)
            return Verdict.TEMPORARY
        if response.status_code != 200:
            log.warning("oauth introspection answered HTTP %d", response.status_code)
            return Verdict.TEMPORARY
        try:
            claims = json.loads(response.content)
        except ValueError:
            claims = None
        if not isinstance(claims, dict):
            log.warning("oauth introspection answered something that is not a JSON object")
            return Verdict.TEMPORARY
        if claims.get("active") is not True:
            return Verdict.REJECTED
        return _check_claims(
            claims, now, self._leeway, username_claim=self._claim,
            issuer=self._issuer, audience=self._audience,
        )
