"""OAUTHBEARER (RFC 7628) and XOAUTH2 (Google's older form), server side, pure.

OAUTHBEARER (RFC 7628 §3.1): one client message,

    gs2-header %x01 *(key "=" value %x01) %x01
    e.g. "n,a=user@example.com,\\x01host=mail.example.com\\x01port=110\\x01auth=Bearer T\\x01\\x01"

No channel binding (`p=` is refused). `a=` names the user; without it the token's owner
is the user. On a bad token the server sends an error JSON as a challenge (§3.2.2:
`status`, and `scope` / `openid-configuration` when configured), the client answers with
a lone %x01 (§3.2.3), and the server fails the exchange.

XOAUTH2: `user=<u> %x01 auth=Bearer <t> %x01 %x01`, as the initial response or after an
empty challenge. On a bad token the server sends a base64 JSON challenge
(`{"status":"401","schemes":"bearer",...}`); the client answers with an empty response
and gets `-ERR`.

The token itself is validated by the shell (`NeedToken` → `TokenOwner`), which also
checks that it belongs to the user the client named.
"""

from __future__ import annotations

import json

from popbox.proto.sasl import (
    Answer,
    Authenticated,
    Challenge,
    Failed,
    NeedToken,
    Step,
    TokenOwner,
)

_KVSEP = "\x01"


def _bearer(value: str) -> str | None:
    """`Bearer <token>` (the scheme is case-insensitive, RFC 6750 §2.1) → the token."""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token or not token.isprintable() or " " in token:
        return None
    return token


def _pairs(body: str) -> dict[str, str] | None:
    """`key=value` pairs separated by %x01, no duplicates."""
    pairs: dict[str, str] = {}
    for item in body.split(_KVSEP) if body else ():
        key, sep, value = item.partition("=")
        if not sep or not key.isalpha() or not key.isascii() or key in pairs:
            return None
        pairs[key] = value
    return pairs


def _saslname(name: str) -> str | None:
    if name.replace("=2C", "").replace("=3D", "").count("="):
        return None
    return name.replace("=2C", ",").replace("=3D", "=")


class _Bearer:
    """The shared part: one message, a token check, success or an error round."""

    def __init__(self, error: dict[str, str]) -> None:
        self._error = json.dumps(error, separators=(",", ":")).encode()
        self._user = ""
        self._state = "message"

    def _parse(self, message: str) -> tuple[str, str] | None:
        raise NotImplementedError

    def _error_response_ok(self, response: bytes) -> bool:
        raise NotImplementedError

    def start(self, initial: bytes | None) -> Step:
        return Challenge(b"") if initial is None else self.step(initial)

    def step(self, response: bytes) -> Step:
        if self._state == "error":
            self._state = "over"
            ok = self._error_response_ok(response)
            return Failed("invalid token" if ok else "malformed error response", self._user)
        if self._state != "message":
            return self._fail("unexpected response")
        try:
            parsed = self._parse(response.decode("utf-8"))
        except UnicodeDecodeError:
            parsed = None
        if parsed is None:
            return self._fail("malformed message")
        self._user, token = parsed
        self._state = "token"
        return NeedToken(self._user, token.encode())

    def provide(self, answer: Answer) -> Step:
        if self._state != "token" or not isinstance(answer, TokenOwner):
            return self._fail("unexpected answer")
        if answer.user is None:
            self._state = "error"
            return Challenge(self._error)
        self._state = "over"
        return Authenticated(answer.user)

    def _fail(self, reason: str) -> Failed:
        self._state = "over"
        return Failed(reason, self._user)


class OAuthBearer(_Bearer):
    """RFC 7628. `scope` and `openid_configuration` go into the error JSON (§3.2.2)."""

    def __init__(
        self, scope: str | None = None, openid_configuration: str | None = None
    ) -> None:
        error = {"status": "invalid_token"}
        if scope:
            error["scope"] = scope
        if openid_configuration:
            error["openid-configuration"] = openid_configuration
        super().__init__(error)

    def _parse(self, message: str) -> tuple[str, str] | None:
        header, sep, rest = message.partition(_KVSEP)
        flag, _, after = header.partition(",")
        authzid, comma, trailer = after.partition(",")
        if not sep or not comma or trailer or flag not in ("n", "y"):
            return None  # `p=`: OAUTHBEARER has no channel binding
        user = ""
        if authzid:
            name = _saslname(authzid[2:]) if authzid.startswith("a=") else None
            if not name:
                return None
            user = name
        inner = rest.removesuffix(_KVSEP)  # the final kvsep; each pair ends with one too
        if inner == rest or (inner and not inner.endswith(_KVSEP)):
            return None
        pairs = _pairs(inner[:-1])
        if pairs is None:
            return None
        token = _bearer(pairs.get("auth", ""))
        return (user, token) if token else None

    def _error_response_ok(self, response: bytes) -> bool:
        return response == _KVSEP.encode()


class XOAuth2(_Bearer):
    """XOAUTH2: `user=` and `auth=Bearer` pairs."""

    def __init__(self, scope: str | None = None) -> None:
        error = {"status": "401", "schemes": "bearer"}
        if scope:
            error["scope"] = scope
        super().__init__(error)

    def _parse(self, message: str) -> tuple[str, str] | None:
        if not message.endswith(_KVSEP * 2):
            return None
        pairs = _pairs(message[:-2])
        if pairs is None:
            return None
        user, token = pairs.get("user", ""), _bearer(pairs.get("auth", ""))
        return (user, token) if user and user.isprintable() and token else None

    def _error_response_ok(self, response: bytes) -> bool:
        return response == b""
