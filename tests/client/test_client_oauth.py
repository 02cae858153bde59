"""The client's bearer-token logins: XOAUTH2 (both forms) and OAUTHBEARER (RFC 7628 §3.1),
against popbox's own server with `[oauth]` set up here (JWTs signed with a key made here;
opaque tokens checked at an RFC 7662 introspection endpoint the test serves), and the
error JSON of a refused token (RFC 7628 §3.2.2) shown in the client's error."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from helpers import MailEnv, running_server
from popbox import client
from popbox.client import login as strategy
from popbox.proto.sasl_client import OAuthBearer, SaslClientError, XOAuth2

ISSUER, AUDIENCE = "https://idp.example", "pop.example"
RFC7628_MESSAGE = (
    b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer "
    b"vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
)


def test_oauthbearer_message_is_rfc7628s() -> None:
    """RFC 7628 §4.1: the client's message, byte for byte; §3.2.3: the answer to an error."""
    mech = OAuthBearer("user@example.com", "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==",
                       host="server.example.com", port=143)
    assert mech.initial() == RFC7628_MESSAGE
    assert mech.respond(b'{"status":"invalid_token","scope":"mail"}') == b"\x01"
    assert mech.server_error == "status=invalid_token, scope=mail"
    with pytest.raises(SaslClientError):
        mech.finish()
    assert "vF9d" not in repr(mech)
    assert OAuthBearer("a,b=c", "t").initial() == b"n,a=a=2Cb=3Dc,\x01auth=Bearer t\x01\x01"


def test_xoauth2_one_line_and_two_step_forms() -> None:
    message = b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3\x01\x01"
    one = XOAuth2("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3")
    assert one.initial() == message
    one.finish()
    two = XOAuth2("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3", two_step=True)
    assert two.initial() is None
    assert two.respond(b"") == message
    assert two.respond(b'{"status":"401","schemes":"bearer"}') == b""
    assert two.server_error == "status=401, schemes=bearer"
    with pytest.raises(SaslClientError):
        two.respond(b"again")


def test_choose_prefers_bearer_mechanisms_with_a_token() -> None:
    caps = {"SASL": ["SCRAM-SHA-256", "XOAUTH2", "OAUTHBEARER"], "USER": []}
    kwargs: dict[str, Any] = {"plaintext_ok": True, "server": "s"}
    assert strategy.choose(caps, bearer=True, **kwargs) == "OAUTHBEARER"
    assert strategy.choose(caps, **kwargs) == "SCRAM-SHA-256"
    assert strategy.choose({"SASL": ["XOAUTH2"]}, bearer=True, password=False,
                           **kwargs) == "XOAUTH2"
    assert strategy.choose({"SASL": ["PLAIN"], "USER": []}, bearer=True, **kwargs) == "PLAIN"
    with pytest.raises(client.PopUnsupportedError, match="OAUTHBEARER nor XOAUTH2"):
        strategy.choose({"SASL": ["PLAIN"], "USER": []}, bearer=True, password=False, **kwargs)
    with pytest.raises(client.PopPlaintextRefused):
        strategy.choose(caps, bearer=True, password=False, plaintext_ok=False, server="s")


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def token(key: ec.EllipticCurvePrivateKey, **claims: Any) -> str:
    body = {"iss": ISSUER, "aud": AUDIENCE, "exp": time.time() + 300, "email": "alice"}
    body.update(claims)
    return jwt.encode(body, key, algorithm="ES256")


class Introspection:
    """An RFC 7662 endpoint: `active` for the tokens in `owners`."""

    def __init__(self) -> None:
        self.owners: dict[str, str] = {}
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        length = int(head.split("content-length: ", 1)[1].split("\r\n", 1)[0])
        form = urllib.parse.parse_qs((await reader.readexactly(length)).decode())
        owner = self.owners.get(form["token"][0])
        body = json.dumps({"active": True, "username": owner} if owner else {"active": False})
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                     f"{len(body)}\r\nConnection: close\r\n\r\n{body}".encode())
        await writer.drain()
        writer.close()


@pytest.fixture
def jwt_env(env: MailEnv, key: ec.EllipticCurvePrivateKey, tmp_path: Path) -> MailEnv:
    path = tmp_path / "idp.pem"
    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    env.settings["oauth"] = {"validator": "jwt", "issuer": ISSUER, "audience": AUDIENCE,
                             "public_key_file": str(path), "scope": "pop"}
    env.put("alice", b"Subject: hi\r\n\r\nhello\r\n")
    return env


async def test_bearer_logins_against_popbox(jwt_env: MailEnv,
                                            key: ec.EllipticCurvePrivateKey) -> None:
    """A JWT is longer than an AUTH line may be (RFC 5034 §4: 255 octets), so it always
    answers the server's empty challenge, whatever the form asked for."""
    good = token(key)
    async with running_server(jwt_env.config()) as (port, _):
        async with client.connect("127.0.0.1", port, tls="none") as pop:
            assert await pop.login("alice", token=good) == "OAUTHBEARER"
            assert await pop.stat() == (1, 22)
        async with client.connect("127.0.0.1", port, tls="none") as pop:
            await pop.auth("XOAUTH2", "alice", token=good, two_step=True)
            assert (await pop.stat())[0] == 1
        async with client.connect("127.0.0.1", port, tls="none") as pop:
            await pop.auth("XOAUTH2", "alice", token=good)
            assert (await pop.stat())[0] == 1
        # A password as well: the token still comes first.
        async with client.connect("127.0.0.1", port, tls="none") as pop:
            assert await pop.login("alice", "secret", token=good) == "OAUTHBEARER"


async def test_refused_tokens_show_the_servers_error(jwt_env: MailEnv,
                                                     key: ec.EllipticCurvePrivateKey) -> None:
    """RFC 7628 §3.2.2: the error JSON comes as a challenge; the client answers %x01
    (OAUTHBEARER) or an empty line (XOAUTH2), then -ERR. AUTH failing leaves the session
    in AUTHORIZATION, so a good token can follow on the same connection."""
    expired = token(key, exp=time.time() - 3600)
    async with (running_server(jwt_env.config()) as (port, _),
                client.connect("127.0.0.1", port, tls="none") as pop):
        with pytest.raises(client.PopAuthError) as refused:
            await pop.auth("OAUTHBEARER", "alice", token=expired)
        assert "the server said: status=invalid_token, scope=pop" in str(refused.value)
        assert refused.value.code == "AUTH"
        with pytest.raises(client.PopAuthError) as refused:
            await pop.auth("XOAUTH2", "alice", token=token(key, email="bob"), two_step=True)
        assert "status=401" in str(refused.value)
        assert expired not in str(refused.value)
        await pop.auth("OAUTHBEARER", "alice", token=token(key))
        assert (await pop.stat())[0] == 1


@pytest.fixture
async def introspection() -> AsyncIterator[Introspection]:
    found = Introspection()
    server = await asyncio.start_server(found.handle, "127.0.0.1", 0)
    found.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/introspect"
    async with server:
        yield found


async def test_short_tokens_ride_on_the_auth_line(env: MailEnv,
                                                  introspection: Introspection) -> None:
    """An opaque token short enough for one AUTH line goes on it (RFC 5034 §4), unless the
    two-step form is asked for; the server sees both (its log names no token)."""
    introspection.owners = {"opaque-7": "alice"}
    env.settings["oauth"] = {"validator": "introspection",
                             "introspection_url": introspection.url}
    async with running_server(env.config()) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        pop = await client.open_streams(reader, writer, server_hostname="127.0.0.1")
        seen: list[bytes] = []
        real_write = writer.write

        def spy(data: bytes) -> None:
            seen.append(bytes(data))
            real_write(data)

        writer.write = spy  # type: ignore[method-assign]
        await pop.auth("XOAUTH2", "alice", token="opaque-7")
        assert seen[0].startswith(b"AUTH XOAUTH2 dXNlcj1hbGljZQFhdXRoPUJlYXJlciBvcGFxdWUtNwEB")
        await pop.quit()
        async with client.connect("127.0.0.1", port, tls="none") as two:
            with pytest.raises(client.PopAuthError, match="status=401"):
                await two.auth("XOAUTH2", "alice", token="opaque-8", two_step=True)
            await two.auth("XOAUTH2", "alice", token="opaque-7", two_step=True)
