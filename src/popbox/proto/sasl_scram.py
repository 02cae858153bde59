"""SCRAM-SHA-1, SCRAM-SHA-256 and their -PLUS variants (RFC 5802, RFC 7677), server side.

The exchange (RFC 5802 §3, §5), as POP3 carries it (RFC 5034 §4):

    C: AUTH SCRAM-SHA-256 [client-first]   gs2-header, n=user, r=client-nonce
    S: + server-first                       r=client-nonce+server-nonce, s=salt, i=count
    C: client-final                         c=base64(gs2-header + binding), r=..., p=proof
    S: + server-final                       v=server-signature
    C: (empty)                              RFC 5034 §4: no additional data with +OK
    S: +OK

After client-first, the mechanism asks for the user's stored credential (Dovecot's
`{SCRAM-SHA-256}` data: `iterations,salt,storedkey,serverkey`, base64 fields); the proof
is checked by scramp's `ScramServer` against those keys, so the password is never needed.
An unknown user (the answer is None) gets a mock (RFC 5802 §5.1): a salt and keys derived
with HMAC from the server's secret and the user name, so the same name always sees the
same salt, the same iteration count as a default account, and a failure only after its
proof, like a wrong password.

Channel binding (RFC 5802 §6, RFC 5056): the shell passes the binding data available on
this connection by type name (`tls-server-end-point`, RFC 5929 §4; `tls-unique`, RFC 5929
§3, TLS 1.2 only as RFC 9266 §3 requires). `tls-exporter` (RFC 9266) needs a keying
material exporter that Python's `ssl` module lacks, and scramp refuses it. The gs2 flag
is checked here before scramp sees the message: a -PLUS mechanism needs `p=<type>` with
a type we have; a plain one refuses `p=`, and refuses `y` (the client could bind but
thinks we cannot) when -PLUS was advertised: that is a downgrade (RFC 5802 §6).
An authorization identity (`a=` in the gs2 header) is not supported.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from scramp import ScramException, ScramMechanism  # type: ignore[import-untyped]

from popbox.proto.sasl import (
    Answer,
    Authenticated,
    Challenge,
    Failed,
    NeedCredential,
    Step,
    StoredCredential,
)

ALGORITHMS = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}
MOCK_ITERATIONS = 4096  # the iteration count a default account has (RFC 7677 §4)
_MIN_ITERATIONS, _MAX_ITERATIONS = 4096, 10_000_000  # what scramp accepts
_Keys = tuple[bytes, bytes, bytes, int]  # salt, stored key, server key, iterations


def _saslname(name: str) -> str | None:
    """RFC 5802 §5.1: `=2C` is ",", `=3D` is "="; any other "=" is an error."""
    if name.replace("=2C", "").replace("=3D", "").count("="):
        return None
    return name.replace("=2C", ",").replace("=3D", "=")


def parse_credential(data: bytes, algorithm: str) -> _Keys | None:
    """`iterations,salt,storedkey,serverkey` (base64 fields) → keys, or None."""
    try:
        count, salt, stored, server = data.decode("ascii").split(",")
        iterations = int(count)
        keys = [base64.b64decode(x, validate=True) for x in (salt, stored, server)]
    except (UnicodeDecodeError, ValueError, binascii.Error):
        return None
    size = hashlib.new(algorithm).digest_size
    if not _MIN_ITERATIONS <= iterations <= _MAX_ITERATIONS or len(keys[0]) < 12:
        return None
    if len(keys[1]) != size or len(keys[2]) != size:
        return None
    return keys[0], keys[1], keys[2], iterations


def mock_keys(secret: bytes, scheme: str, user: str) -> _Keys:
    """Deterministic, secret-keyed salt and keys for a user that does not exist."""
    algorithm = ALGORITHMS[scheme]
    seed = hmac.digest(secret, f"scram-mock\0{scheme}\0{user}".encode(), "sha256")
    salt = hmac.digest(seed, b"salt", "sha256")[:16]
    stored = hmac.digest(seed, b"stored", algorithm)
    server = hmac.digest(seed, b"server", algorithm)
    return salt, stored, server, MOCK_ITERATIONS


class Scram:
    """One SCRAM exchange. `nonce`: the server's part of the nonce (printable ASCII
    without ","); `bindings`: channel binding data by type; `plus_offered`: whether a
    -PLUS mechanism was advertised on this connection; `secret` keys the mock."""

    def __init__(
        self,
        name: str,
        *,
        nonce: str,
        secret: bytes,
        bindings: Mapping[str, bytes] | None = None,
        plus_offered: bool = False,
    ) -> None:
        self.name = name
        self.scheme = name.removesuffix("-PLUS")
        self._plus = name.endswith("-PLUS")
        self._nonce = nonce
        self._secret = secret
        self._bindings = dict(bindings or {})
        self._plus_offered = plus_offered
        self._first = ""
        self._user = ""
        self._binding: tuple[str, bytes] | None = None
        self._server: Any = None
        self._mock = False
        self._state = "first"

    def start(self, initial: bytes | None) -> Step:
        return Challenge(b"") if initial is None else self.step(initial)

    def step(self, response: bytes) -> Step:
        match self._state:
            case "first":
                return self._client_first(response)
            case "final":
                return self._client_final(response)
            case "done" if response == b"":
                self._state = "over"
                return Authenticated(self._user)
            case _:
                return self._fail("unexpected response")

    def provide(self, answer: Answer) -> Step:
        if self._state != "credential" or not isinstance(answer, StoredCredential):
            return self._fail("unexpected answer")
        keys = None
        if answer.data is not None:
            keys = parse_credential(answer.data, ALGORITHMS[self.scheme])
        if keys is None:
            self._mock = True
            keys = mock_keys(self._secret, self.scheme, self._user)
        try:
            mechanism = ScramMechanism(self.name)
            self._server = mechanism.make_server(
                lambda _user: keys, channel_binding=self._binding, s_nonce=self._nonce
            )
            self._server.set_client_first(self._first)
            server_first = str(self._server.get_server_first())
        except (ScramException, ValueError):
            return self._fail("malformed client-first message")
        self._state = "final"
        return Challenge(server_first.encode())

    def _fail(self, reason: str) -> Failed:
        self._state = "over"
        return Failed(reason, self._user)

    def _client_first(self, response: bytes) -> Step:
        try:
            message = response.decode("utf-8")
        except UnicodeDecodeError:
            return self._fail("malformed client-first message")
        flag, _, rest = message.partition(",")
        authzid, _, bare = rest.partition(",")
        attributes = bare.split(",")
        user = _saslname(attributes[0][2:]) if attributes[0].startswith("n=") else None
        if not user or len(attributes) < 2:
            return self._fail("malformed client-first message")
        self._user = user
        if authzid:
            return self._fail("authorization identity not supported")
        if flag.startswith("p="):
            data = self._bindings.get(flag[2:])
            if not self._plus or data is None:
                return self._fail("channel binding type not offered")
            self._binding = (flag[2:], data)
        elif self._plus:
            return self._fail("-PLUS without channel binding")
        elif flag == "y" and self._plus_offered:
            return self._fail("channel binding downgrade")
        elif flag not in ("n", "y"):
            return self._fail("malformed client-first message")
        self._first = message
        self._state = "credential"
        return NeedCredential(user, self.scheme)

    def _client_final(self, response: bytes) -> Step:
        try:
            self._server.set_client_final(response.decode("utf-8"))
            server_final = str(self._server.get_server_final())
        except (ScramException, ValueError):
            return self._fail("rejected")
        if self._mock:
            return self._fail("rejected")
        self._state = "done"
        return Challenge(server_final.encode())
