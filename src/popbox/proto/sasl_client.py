"""Client-side SASL mechanisms as small pure state machines (RFC 4422, RFC 5034).

The shell sends `AUTH <name> [initial]` with `initial()` (None: no initial response),
answers each `+ challenge` with `respond(challenge)`, and on +OK calls `finish()`, which
fails when the mechanism expected the server to prove itself and it did not (SCRAM's
server signature, RFC 5802 §3). Failures raise `SaslClientError`.

- PLAIN (RFC 4616 §2): `authzid NUL authcid NUL password` as the initial response.
- LOGIN (draft-murchison-sasl-login): the user name, then the password, each answering a
  challenge.
- CRAM-MD5 (RFC 2195 §2): `user SP hex(HMAC-MD5(password, challenge))`.
- SCRAM-SHA-1, SCRAM-SHA-256 (RFC 5802, RFC 7677), with scramp's `ScramClient`; no
  channel binding (gs2 flag `n`). The server's final message is verified, then answered
  with an empty response (RFC 5034 §4: the server sends its additional data as a
  challenge, not with +OK).
- XOAUTH2 (Google's and Microsoft's bearer-token form): `user=U %x01 auth=Bearer T %x01
  %x01`, as the initial response or, in the two-step form, answering the server's empty
  challenge (`two_step`; what Microsoft 365 requires).
- OAUTHBEARER (RFC 7628 §3.1): the GS2 header `n,a=U,` (RFC 5801 §4; `,` and `=` in the
  name escaped as `=2C`, `=3D`), then `%x01`-separated `host=`, `port=`, `auth=Bearer T`,
  and a final `%x01`.

For both bearer forms a rejected token comes back as one challenge carrying a JSON error
(RFC 7628 §3.2.2; Google's and Microsoft's XOAUTH2 do the same); the client keeps it
(`server_error`) and answers as the RFC says, with a lone %x01 for OAUTHBEARER (§3.2.3) and
an empty response for XOAUTH2, after which the server sends -ERR.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Protocol

from scramp import ScramClient, ScramException  # type: ignore[import-untyped]

from popbox.proto.sasl import text


class SaslClientError(Exception):
    """The server's challenge made no sense for the mechanism, or it did not prove itself."""


class ClientMechanism(Protocol):
    name: str
    cleartext: bool  # sends the password (or a bearer token) itself: PLAIN, LOGIN, tokens
    server_error: str | None  # what the server said about a refused token, decoded

    def initial(self) -> bytes | None: ...

    def respond(self, challenge: bytes) -> bytes: ...

    def finish(self) -> None: ...


class Plain:
    name = "PLAIN"
    cleartext = True
    server_error: str | None = None

    def __init__(self, user: str, password: str, authzid: str = "") -> None:
        self._message = "\0".join((authzid, user, password)).encode("utf-8")

    def __repr__(self) -> str:
        return "Plain(<redacted>)"

    def initial(self) -> bytes | None:
        return self._message

    def respond(self, challenge: bytes) -> bytes:
        if challenge:
            raise SaslClientError("PLAIN: unexpected challenge")
        return self._message  # a server that ignored the initial response asks with "+ "

    def finish(self) -> None:
        pass


class Login:
    name = "LOGIN"
    cleartext = True
    server_error: str | None = None

    def __init__(self, user: str, password: str) -> None:
        self._answers = [user.encode("utf-8"), password.encode("utf-8")]

    def __repr__(self) -> str:
        return "Login(<redacted>)"

    def initial(self) -> bytes | None:
        return None

    def respond(self, challenge: bytes) -> bytes:
        if not self._answers:
            raise SaslClientError("LOGIN: too many challenges")
        return self._answers.pop(0)

    def finish(self) -> None:
        pass


class CramMd5:
    name = "CRAM-MD5"
    cleartext = False
    server_error: str | None = None

    def __init__(self, user: str, password: str) -> None:
        self._user = user
        self._password = password.encode("utf-8")
        self._done = False

    def __repr__(self) -> str:
        return f"CramMd5({self._user!r}, <redacted>)"

    def initial(self) -> bytes | None:
        return None

    def respond(self, challenge: bytes) -> bytes:
        if self._done or text(challenge) is None or not challenge:
            raise SaslClientError("CRAM-MD5: unexpected challenge")
        self._done = True
        digest = hmac.new(self._password, challenge, hashlib.md5).hexdigest()
        return f"{self._user} {digest}".encode()

    def finish(self) -> None:
        pass


class Scram:
    """SCRAM-SHA-1 or SCRAM-SHA-256: client-first, client-final, verify server-final."""

    cleartext = False
    server_error: str | None = None

    def __init__(self, name: str, user: str, password: str, nonce: str | None = None) -> None:
        """`nonce`: the client nonce, for test vectors; by default scramp makes one."""
        self.name = name
        self._client = ScramClient([name], user, password, c_nonce=nonce)
        self._step = 0

    def __repr__(self) -> str:
        return f"Scram({self.name!r}, <redacted>)"

    def initial(self) -> bytes | None:
        first: str = self._client.get_client_first()
        return first.encode("utf-8")

    def respond(self, challenge: bytes) -> bytes:
        message = challenge.decode("utf-8", "replace")
        self._step += 1
        try:
            if self._step == 1:
                self._client.set_server_first(message)
                final: str = self._client.get_client_final()
                return final.encode("utf-8")
            if self._step == 2:
                self._client.set_server_final(message)
                return b""
        except ScramException as exc:
            raise SaslClientError(f"{self.name}: {exc}") from None
        raise SaslClientError(f"{self.name}: too many challenges")

    def finish(self) -> None:
        if self._step != 2:
            raise SaslClientError(f"{self.name}: the server did not prove it knows the password")


def _json_error(challenge: bytes) -> str:
    """The error a bearer mechanism's server sent, as one line: its JSON fields, else the
    text as it came (at most 200 characters)."""
    raw = challenge.decode("utf-8", "replace")
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict):
        return ", ".join(f"{k}={v}" for k, v in data.items())[:200]
    return raw[:200].encode("unicode_escape").decode("ascii")


class _Bearer:
    """The shared part of XOAUTH2 and OAUTHBEARER: one message with the token; a second
    challenge is the server's error, answered with `_error_answer`."""

    cleartext = True
    name = ""
    _error_answer = b""

    def __init__(self, message: str, *, two_step: bool) -> None:
        self._message = message.encode("utf-8")
        self._sent = not two_step
        self._done = False
        self.server_error: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<redacted>)"

    def initial(self) -> bytes | None:
        return None if not self._sent else self._message

    def respond(self, challenge: bytes) -> bytes:
        if not self._sent and not challenge:
            self._sent = True
            return self._message
        if self._sent and not self._done and challenge:
            self._done = True
            self.server_error = _json_error(challenge)
            return self._error_answer
        raise SaslClientError(f"{self.name}: unexpected challenge")

    def finish(self) -> None:
        if not self._sent or self._done:
            raise SaslClientError(f"{self.name}: +OK before the token was accepted")


class XOAuth2(_Bearer):
    name = "XOAUTH2"

    def __init__(self, user: str, token: str, *, two_step: bool = False) -> None:
        super().__init__(f"user={user}\x01auth=Bearer {token}\x01\x01", two_step=two_step)


class OAuthBearer(_Bearer):
    """RFC 7628 §3.1; `host` and `port` are the server's, as the RFC recommends."""

    name = "OAUTHBEARER"
    _error_answer = b"\x01"  # RFC 7628 §3.2.3

    def __init__(self, user: str, token: str, *, host: str = "", port: int | None = None,
                 two_step: bool = False) -> None:
        authzid = user.replace("=", "=3D").replace(",", "=2C")  # RFC 5801 §4 saslname
        fields = [f"host={host}"] if host else []
        fields += [f"port={port}"] if port is not None else []
        fields.append(f"auth=Bearer {token}")
        message = f"n,a={authzid},\x01" + "".join(f + "\x01" for f in fields) + "\x01"
        super().__init__(message, two_step=two_step)


BEARER_MECHANISMS = ("OAUTHBEARER", "XOAUTH2")
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "PLAIN", "LOGIN")


def mechanism(name: str, user: str, password: str, authzid: str = "") -> ClientMechanism:
    """A client mechanism by its SASL name; ValueError for one we do not implement."""
    match name.upper():
        case "PLAIN":
            return Plain(user, password, authzid)
        case "LOGIN":
            return Login(user, password)
        case "CRAM-MD5":
            return CramMd5(user, password)
        case "SCRAM-SHA-1" | "SCRAM-SHA-256" as scram:
            return Scram(scram, user, password)
        case _:
            raise ValueError(f"unsupported SASL mechanism: {name}")


def bearer_mechanism(name: str, user: str, token: str, *, host: str = "",
                     port: int | None = None, two_step: bool = False) -> ClientMechanism:
    """XOAUTH2 or OAUTHBEARER with an access token; ValueError for another name."""
    match name.upper():
        case "XOAUTH2":
            return XOAuth2(user, token, two_step=two_step)
        case "OAUTHBEARER":
            return OAuthBearer(user, token, host=host, port=port, two_step=two_step)
        case _:
            raise ValueError(f"not a bearer-token SASL mechanism: {name}")
