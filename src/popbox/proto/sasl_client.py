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
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Protocol

from scramp import ScramClient, ScramException  # type: ignore[import-untyped]

from popbox.proto.sasl import text


class SaslClientError(Exception):
    """The server's challenge made no sense for the mechanism, or it did not prove itself."""


class ClientMechanism(Protocol):
    name: str
    cleartext: bool  # sends the password itself (PLAIN, LOGIN)

    def initial(self) -> bytes | None: ...

    def respond(self, challenge: bytes) -> bytes: ...

    def finish(self) -> None: ...


class Plain:
    name = "PLAIN"
    cleartext = True

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
