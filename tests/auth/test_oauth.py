"""OAUTHBEARER (RFC 7628) and XOAUTH2: the pure mechanisms, the token validators (JWTs
signed at test time with keys made here; an RFC 7662 introspection endpoint served by
the test on 127.0.0.1), and logins over real sockets."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from helpers import Client, MailEnv, running_server
from popbox.auth.base import Secret, Verdict
from popbox.auth.oauth import IntrospectionValidator, JwtValidator
from popbox.config import ConfigError, from_dict
from popbox.proto import sasl
from popbox.proto.sasl_oauth import OAuthBearer, XOAuth2

ISSUER, AUDIENCE = "https://idp.example", "pop.example"
NOW = 1_700_000_000.0

# --- the mechanisms, pure ----------------------------------------------------------------

RFC7628_TOKEN = b"vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="
RFC7628_MESSAGE = (
    b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer "
    + RFC7628_TOKEN + b"\x01\x01"
)


def test_oauthbearer_rfc7628_success() -> None:
    """RFC 7628 §4.1."""
    mech = OAuthBearer()
    assert mech.start(RFC7628_MESSAGE) == sasl.NeedToken("user@example.com", RFC7628_TOKEN)
    assert mech.provide(sasl.TokenOwner("user@example.com")) == sasl.Authenticated(
        "user@example.com"
    )


def test_oauthbearer_rfc7628_failure() -> None:
    """RFC 7628 §4.3: the error JSON as a challenge, the client's %x01, then failure."""
    mech = OAuthBearer("example_scope", "https://example.com/.well-known/openid-configuration")
    assert mech.start(None) == sasl.Challenge(b"")
    assert isinstance(mech.step(RFC7628_MESSAGE), sasl.NeedToken)
    step = mech.provide(sasl.TokenOwner(None))
    assert isinstance(step, sasl.Challenge)
    assert json.loads(step.data) == {
        "status": "invalid_token", "scope": "example_scope",
        "openid-configuration": "https://example.com/.well-known/openid-configuration",
    }
    assert mech.step(b"\x01") == sasl.Failed("invalid token", "user@example.com")


@pytest.mark.parametrize(
    ("message", "user"),
    [
        (b"n,,\x01auth=Bearer abc\x01\x01", ""),
        (b"y,a=a=2Cb,\x01auth=bearer abc\x01\x01", "a,b"),
        (b"n,,\x01auth=Bearer abc\x01", None),
        (b"n,,auth=Bearer abc\x01\x01", None),
        (b"p=tls-unique,,\x01auth=Bearer abc\x01\x01", None),
        (b"n,,\x01auth=Basic abc\x01\x01", None),
        (b"n,,\x01auth=Bearer \x01\x01", None),
        (b"n,,\x01host=x\x01\x01", None),
        (b"n,a=u=,\x01auth=Bearer abc\x01\x01", None),
        (b"n,,\x01auth=Bearer abc\x01auth=Bearer def\x01\x01", None),
        (b"\x01", None),
        (b"\xff", None),
    ],
)
def test_oauthbearer_messages(message: bytes, user: str | None) -> None:
    step = OAuthBearer().start(message)
    if user is None:
        assert isinstance(step, sasl.Failed)
    else:
        assert step == sasl.NeedToken(user, b"abc")


def test_xoauth2_one_and_two_steps_and_error() -> None:
    message = b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3\x01\x01"
    expected = sasl.NeedToken("someuser@example.com", b"ya29.vF9dft4qmTc2Nvb3")
    assert XOAuth2().start(message) == expected
    two = XOAuth2("https://mail.google.com/")
    assert two.start(None) == sasl.Challenge(b"")
    assert two.step(message) == expected
    error = two.provide(sasl.TokenOwner(None))
    assert isinstance(error, sasl.Challenge)
    assert json.loads(error.data) == {
        "status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"
    }
    assert isinstance(two.step(b""), sasl.Failed)
    for bad in (b"user=u\x01auth=Bearer t\x01", b"auth=Bearer t\x01\x01", b"user=u\x01\x01"):
        assert isinstance(XOAuth2().start(bad), sasl.Failed)


# --- JWTs ------------------------------------------------------------------------------


def pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def token(key: Any, algorithm: str = "ES256", headers: dict[str, Any] | None = None,
          **claims: Any) -> str:
    body = {"iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 300, "iat": NOW, "email": "alice"}
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key,
                      algorithm=algorithm, headers=headers)


def hs256_with_public_key(secret: bytes) -> str:
    """The algorithm-confusion forgery: HS256 "signed" with the verifier's public key."""

    def part(data: dict[str, Any]) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=")

    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 300, "email": "alice"}
    signing_input = part({"alg": "HS256", "typ": "JWT"}) + b"." + part(claims)
    signature = hmac.digest(secret, signing_input, "sha256")
    return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


def validator(public_key: Any, **settings: Any) -> JwtValidator:
    return JwtValidator(issuer=ISSUER, audience=AUDIENCE, public_key=public_key, **settings)


def check(v: JwtValidator, jwt_text: str, now: float = NOW) -> str | Verdict:
    return v.check(jwt_text.encode(), now)


def test_jwt_valid_and_every_way_to_be_invalid(key: ec.EllipticCurvePrivateKey) -> None:
    v = validator(key.public_key())
    assert check(v, token(key)) == "alice"
    assert check(v, token(key, email="bob")) == "bob"
    assert check(v, token(key), now=NOW + 300 + 29) == "alice"  # within the leeway
    other = ec.generate_private_key(ec.SECP256R1())
    rejected = [
        check(v, token(key), now=NOW + 300 + 30),  # expired
        check(v, token(key, exp=None)),  # no expiry at all
        check(v, token(key, nbf=NOW + 100)),  # not yet valid
        check(v, token(key, aud="other.example")),  # wrong audience
        check(v, token(key, aud=None)),
        check(v, token(key, iss="https://evil.example")),  # wrong issuer
        check(v, token(key, email=None)),  # no user name claim
        check(v, token(key, email=["alice"])),
        check(v, token(other)),  # signed by someone else
        check(v, jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 300,
                             "email": "alice"}, "", algorithm="none")),
        check(v, hs256_with_public_key(pem(key))),  # RFC 8725 §2.1 confusion
        check(v, "not.a.jwt"),
        check(v, ""),
    ]
    assert rejected == [Verdict.REJECTED] * len(rejected)
    lax = validator(key.public_key(), algorithms=["ES256", "HS256"])
    assert check(lax, hs256_with_public_key(pem(key))) is Verdict.REJECTED


def test_jwt_algorithms_and_claims_are_configurable() -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    v = validator(ed.public_key(), algorithms=["EdDSA"], username_claim="sub", leeway=0)
    assert check(v, token(ed, algorithm="EdDSA", sub="carol")) == "carol"
    assert check(v, token(ed, algorithm="EdDSA", sub="carol"), now=NOW + 300) is Verdict.REJECTED
    es = ec.generate_private_key(ec.SECP256R1())
    assert check(validator(es.public_key(), algorithms=["ES384"]), token(es)) is Verdict.REJECTED
    with pytest.raises(ValueError, match="none"):
        validator(es.public_key(), algorithms=["none"])


def test_jwks_file_picks_the_key_by_kid(tmp_path: Path) -> None:
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(2)]
    jwks: dict[str, list[dict[str, Any]]] = {"keys": []}
    for number, private in enumerate(keys):
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
        jwks["keys"].append({**jwk, "kid": f"k{number}", "alg": "ES256", "use": "sig"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    v = JwtValidator.from_files(jwks_file=path, issuer=ISSUER, audience=AUDIENCE)
    assert check(v, token(keys[1], headers={"kid": "k1"})) == "alice"
    assert check(v, token(keys[1], headers={"kid": "k0"})) is Verdict.REJECTED
    assert check(v, token(keys[1], headers={"kid": "k9"})) is Verdict.REJECTED
    assert check(v, token(keys[1])) is Verdict.REJECTED  # no kid, several keys


def test_oauth_config_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="jwks_file"):
        from_dict({"oauth": {"validator": "jwt", "issuer": ISSUER, "audience": AUDIENCE}})
    with pytest.raises(ConfigError, match="issuer"):
        from_dict({"oauth": {"validator": "jwt", "public_key_file": "/k.pem"}})
    with pytest.raises(ConfigError, match="introspection_url"):
        from_dict({"oauth": {"validator": "introspection"}})
    with pytest.raises(ConfigError, match="oauth"):
        from_dict({"auth": {"mechanisms": ["PLAIN", "XOAUTH2"]}})
    with pytest.raises(ConfigError, match="unknown SASL mechanism"):
        from_dict({"auth": {"mechanisms": ["PLAIN", "GSSAPI"]}})
    config = from_dict({"oauth": {"validator": "introspection", "introspection_url": "https://x",
                                  "client_secret": "hush"}})
    assert "hush" not in repr(config)


# --- introspection (RFC 7662), against an endpoint served here -----------------------------


class Endpoint:
    """A tiny HTTP/1.1 introspection endpoint: one request per connection."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, dict[str, Any]]] = {}
        self.requests: list[tuple[str, dict[str, str], dict[str, list[str]]]] = []
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in head[1:] if line)
        headers = {name.lower(): value for name, value in headers.items()}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        form = urllib.parse.parse_qs(body.decode())
        self.requests.append((head[0], headers, form))
        status, answer = self.answers.get(form.get("token", [""])[0], (200, {"active": False}))
        payload = json.dumps(answer).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload
        )
        await writer.drain()
        writer.close()


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    found = Endpoint()
    server = await asyncio.start_server(found.handle, "127.0.0.1", 0)
    found.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/introspect"
    async with server:
        yield found


async def test_introspection(endpoint: Endpoint) -> None:
    endpoint.answers = {
        "good": (200, {"active": True, "username": "alice", "exp": NOW + 60, "aud": [AUDIENCE]}),
        "old": (200, {"active": True, "username": "alice", "exp": NOW - 60}),
        "elsewhere": (200, {"active": True, "username": "alice", "aud": "other"}),
        "nameless": (200, {"active": True}),
        "broken": (500, {}),
        "odd": (200, ["active"]),  # type: ignore[dict-item]
    }
    v = IntrospectionValidator(endpoint.url, client_id="pop box", client_secret=Secret(b"s3:cr"),
                               audience=AUDIENCE)
    results = [await v.validate(Secret(t.encode()), NOW)
               for t in ("good", "old", "elsewhere", "nameless", "unknown", "broken", "odd")]
    assert results == ["alice", *[Verdict.REJECTED] * 4, Verdict.TEMPORARY, Verdict.TEMPORARY]
    line, headers, form = endpoint.requests[0]
    assert line == "POST /introspect HTTP/1.1"
    assert form == {"token": ["good"], "token_type_hint": ["access_token"]}
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    credentials = base64.b64encode(b"pop+box:s3%3Acr").decode()  # RFC 6749 §2.3.1
    assert headers["authorization"] == f"Basic {credentials}"


async def test_introspection_endpoint_down_is_temporary() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    v = IntrospectionValidator(f"http://127.0.0.1:{port}/", timeout=2)
    assert await v.validate(Secret(b"t"), NOW) is Verdict.TEMPORARY


# --- logins over sockets -----------------------------------------------------------------


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def bearer_message(user: str, jwt_text: str) -> str:
    return b64(f"n,a={user},\x01host=127.0.0.1\x01port=110\x01auth=Bearer {jwt_text}\x01\x01")


@pytest.fixture
def jwt_env(env: MailEnv, key: ec.EllipticCurvePrivateKey, tmp_path: Path) -> MailEnv:
    path = tmp_path / "idp.pem"
    path.write_bytes(pem(key))
    env.settings["oauth"] = {"validator": "jwt", "issuer": ISSUER, "audience": AUDIENCE,
                             "public_key_file": str(path), "scope": "pop"}
    return env


async def connect(port: int) -> Client:
    client = await Client.connect(port)
    assert (await client.line()).startswith(b"+OK")
    return client


async def test_oauthbearer_and_xoauth2_logins(
    jwt_env: MailEnv, key: ec.EllipticCurvePrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="popbox")
    now = time.time()
    good = token(key, exp=now + 300)
    async with running_server(jwt_env.config()) as (port, _):
        client = await connect(port)
        assert (await client.multi("AUTH"))[1] == [b"PLAIN", b"LOGIN", b"OAUTHBEARER", b"XOAUTH2"]
        assert (await client.cmd(f"AUTH OAUTHBEARER {bearer_message('alice', good)}")).startswith(
            b"+OK Logged in"
        )
        await client.cmd("QUIT")
        await client.close()

        client = await connect(port)
        assert await client.cmd("AUTH XOAUTH2") == b"+ "
        reply = await client.cmd(b64(f"user=alice\x01auth=Bearer {good}\x01\x01"))
        assert reply.startswith(b"+OK Logged in")
        await client.close()

        # Expired, or someone else's: the error JSON, then -ERR after the client's answer.
        expired = token(key, exp=now - 3600)
        client = await connect(port)
        reply = await client.cmd(f"AUTH OAUTHBEARER {bearer_message('alice', expired)}")
        assert json.loads(base64.b64decode(reply[2:])) == {"status": "invalid_token",
                                                           "scope": "pop"}
        assert await client.cmd(b64("\x01")) == b"-ERR [AUTH] Authentication failed."
        bobs = token(key, exp=now + 300, email="bob")
        xoauth2 = b64(f"user=alice\x01auth=Bearer {bobs}\x01\x01")
        reply = await client.cmd(f"AUTH XOAUTH2 {xoauth2}")
        assert json.loads(base64.b64decode(reply[2:]))["status"] == "401"
        assert await client.cmd("") == b"-ERR [AUTH] Authentication failed."
        elsewhere = token(key, exp=now + 300, aud="other.example")
        reply = await client.cmd(f"AUTH OAUTHBEARER {bearer_message('alice', elsewhere)}")
        assert reply.startswith(b"+ ")
        assert await client.cmd("*") == b"-ERR Authentication cancelled."
        assert (await client.cmd(f"AUTH OAUTHBEARER {bearer_message('alice', good)}")).startswith(
            b"+OK Logged in"
        )
        await client.close()
    text = caplog.text
    assert "login ok user=alice mech=OAUTHBEARER" in text
    assert "login failed user=alice mech=XOAUTH2" in text
    for secret in (good, expired, bobs, elsewhere):
        assert secret not in text and secret.split(".")[2] not in text


async def test_bearer_mechanisms_need_tls_from_remote_clients(jwt_env: MailEnv) -> None:
    config = jwt_env.config(auth={"local_networks": ["127.0.0.1/32"]})
    async with running_server(config) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=("127.0.0.2", 0))
        client = Client(reader, writer)
        await client.line()
        assert (await client.multi("AUTH"))[1] == []
        assert (await client.cmd("AUTH XOAUTH2")).startswith(b"-ERR [AUTH] Plaintext")
        await client.close()


async def test_introspection_login(env: MailEnv, endpoint: Endpoint) -> None:
    endpoint.answers = {"opaque-1": (200, {"active": True, "username": "alice"}),
                        "boom": (503, {})}
    env.settings["oauth"] = {"validator": "introspection", "introspection_url": endpoint.url,
                             "client_id": "popbox", "client_secret": "hush"}
    async with running_server(env.config()) as (port, _):
        client = await connect(port)
        reply = await client.cmd(f"AUTH OAUTHBEARER {bearer_message('alice', 'boom')}")
        assert reply == b"-ERR [SYS/TEMP] Temporary authentication failure."
        reply = await client.cmd(f"AUTH OAUTHBEARER {bearer_message('alice', 'opaque-1')}")
        assert reply.startswith(b"+OK Logged in")
        await client.close()
