"""popbox's OAuth2 client against an authorization server the test runs on 127.0.0.1 (an
asyncio server in the test's loop): the device authorization grant (RFC 8628 §3.4-3.5:
`authorization_pending`, `slow_down`), the authorization code grant with PKCE (RFC 7636
§4.2 S256, §4.5 the verifier) on a loopback redirect (RFC 8252 §7.3) with the test
playing the browser, refresh (RFC 6749 §6) before expiry and after a refused token,
rotation, a revoked grant (`invalid_grant`, §5.2), the secret store (the keyring through a
backend loaded from $PYTHON_KEYRING_BACKEND, and the 0600 file where no keyring exists),
and `popbox fetch oauth login` in a child process."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from keyring.backends import fail

import keyring_file_backend
from helpers import MailEnv, running_server
from oauth_helpers import AuthServer
from popbox.client import oauth
from popbox.client.destinations import MaildirTarget, open_destination
from popbox.client.fetcher import Fetcher, Options, Source
from popbox.client.secret_store import SecretStore, SecretStoreError, oauth_name
from popbox.client.state import StateFile

TESTS = Path(__file__).parent.parent  # tests/, where the shared helpers are


@pytest.fixture
async def idp() -> AsyncIterator[AuthServer]:
    found = AuthServer()
    server = await asyncio.start_server(found.handle, "127.0.0.1", 0)
    found.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield found


def conf(idp: AuthServer) -> oauth.OAuthSettings:
    return oauth.settings(client_id="popbox-test", token_url=f"{idp.url}/token",
                          device_url=f"{idp.url}/device", auth_url=f"{idp.url}/authorize?x=1",
                          scope="mail offline_access")


@pytest.fixture
def keyring_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "keyring.json"
    monkeypatch.setenv("POPBOX_TEST_KEYRING", str(path))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", keyring_file_backend.NAME)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.syspath_prepend(str(TESTS))
    return path


def test_presets_give_the_scopes_and_settings_are_checked() -> None:
    google = oauth.settings("google", client_id="c")
    assert google.scope == "https://mail.google.com/" and not google.two_step
    microsoft = oauth.settings("microsoft", client_id="c", client_secret="s")
    assert microsoft.scope == "https://outlook.office.com/POP.AccessAsUser.All offline_access"
    assert microsoft.two_step and "'s'" not in repr(microsoft)
    assert oauth.settings("google", client_id="c", scope="x").scope == "x"
    with pytest.raises(ValueError, match="client_id"):
        oauth.settings("google")
    with pytest.raises(ValueError, match="unknown OAuth provider"):
        oauth.settings("yahoo", client_id="c")


async def test_device_grant_waits_for_the_user(idp: AuthServer, keyring_file: Path) -> None:
    """RFC 8628 §3.1, §3.3-3.5: the code is shown, `authorization_pending` waited out."""
    idp.pending = 2
    shown: list[tuple[str, str]] = []
    grant = await oauth.OAuthClient(conf(idp)).device_login(lambda u, c: shown.append((u, c)))
    assert shown == [(f"{idp.url}/activate", "WDJB-MJHT")]
    assert (grant.access_token, grant.refresh_token) == ("at-1", "rt-1")
    assert [p for p, _ in idp.requests] == ["/device", "/token", "/token", "/token"]
    assert idp.requests[0][1]["scope"] == "mail offline_access"
    assert idp.requests[1][1] == {"grant_type": oauth.DEVICE_GRANT, "device_code": "dev-1",
                                  "client_id": "popbox-test"}
    store = SecretStore()
    assert type(store.backend).__name__ == "FileKeyring"
    await oauth.save_grant(store, "work", conf(idp), grant)
    assert "rt-1" in keyring_file.read_text()
    assert await oauth.OAuthTokens("work").access_token() == "at-2"  # refreshed from rt-1


async def test_device_grant_refused(idp: AuthServer) -> None:
    client = oauth.OAuthClient(conf(idp))
    idp.answer = lambda path, form: (  # type: ignore[method-assign]
        (200, {"device_code": "d", "user_code": "u", "verification_uri": "v", "interval": 0})
        if path == "/device" else (400, {"error": "access_denied"}))
    with pytest.raises(oauth.OAuthError, match="access_denied"):
        await client.device_login(lambda u, c: None)


async def test_pkce_with_the_loopback_redirect(idp: AuthServer) -> None:
    """RFC 7636 §4.2-4.5, RFC 8252 §7.3: the test is the browser. A request with another
    state is not taken for the answer."""
    browser = httpx.AsyncClient()

    async def play_browser(url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(parts.query))
        assert parts.path == "/authorize" and query["x"] == "1"
        assert query["response_type"] == "code" and query["client_id"] == "popbox-test"
        assert query["code_challenge_method"] == "S256"
        assert len(query["code_challenge"]) == 43  # BASE64URL(SHA-256), no padding
        redirect = query["redirect_uri"]
        assert redirect.startswith("http://127.0.0.1:")
        idp.codes["code-1"] = (query["code_challenge"], redirect)
        forged = await browser.get(redirect, params={"code": "code-9", "state": "forged"})
        assert forged.status_code == 404
        answer = await browser.get(redirect, params={"code": "code-1", "state": query["state"]})
        assert answer.status_code == 200 and "close this window" in answer.text

    async with browser:
        grant = await oauth.OAuthClient(conf(idp)).browser_login(play_browser)
    assert (grant.access_token, grant.refresh_token) == ("at-1", "rt-1")
    assert idp.requests[-1][1]["grant_type"] == "authorization_code"
    assert len(idp.requests[-1][1]["code_verifier"]) >= 43


async def test_pkce_refused_in_the_browser(idp: AuthServer) -> None:
    async def deny(url: str) -> None:
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        async with httpx.AsyncClient() as browser:
            await browser.get(query["redirect_uri"],
                              params={"error": "access_denied", "state": query["state"]})

    with pytest.raises(oauth.OAuthError, match="access_denied"):
        await oauth.OAuthClient(conf(idp)).browser_login(deny)
    assert idp.requests == []  # no code, nothing exchanged


async def test_refresh_before_expiry_rotation_and_revocation(idp: AuthServer,
                                                             tmp_path: Path) -> None:
    """RFC 6749 §5.1 expires_in, §6 refresh (a new refresh token replaces the old),
    §5.2 invalid_grant. Without a keyring the grant is in a 0600 file."""
    store = SecretStore(tmp_path / "state", backend=fail.Keyring())
    assert store.backend is None
    await oauth.save_grant(store, "work", conf(idp), oauth.Grant("at-0", 0, "rt-1"))
    assert stat.S_IMODE(store.file.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.file.parent.stat().st_mode) == 0o700
    now = [1000.0]
    idp.lifetime, idp.rotate = 120, True
    tokens = oauth.OAuthTokens("work", store, clock=lambda: now[0], margin=60)
    assert await tokens.access_token() == "at-1"
    now[0] += 59  # 61 s left: still good
    assert await tokens.access_token() == "at-1"
    assert len(idp.requests) == 1
    now[0] += 2  # 59 s left: within the margin, refreshed
    assert await tokens.access_token() == "at-2"
    assert await tokens.access_token(renew=True) == "at-3"  # what a refused token asks
    assert [f["refresh_token"] for _, f in idp.requests] == ["rt-1", "rt-2", "rt-3"]
    assert json.loads(store.get(oauth_name("work")) or "")["refresh_token"] == "rt-4"
    idp.refresh_tokens = set()  # revoked at the provider
    with pytest.raises(oauth.OAuthGrantRevoked, match="invalid_grant: revoked"):
        await tokens.access_token(renew=True)
    with pytest.raises(oauth.OAuthError, match="popbox fetch oauth login other"):
        await oauth.OAuthTokens("other", store).access_token()
    store.file.chmod(0o644)
    with pytest.raises(SecretStoreError, match="read by others"):
        store.get(oauth_name("work"))


async def test_fetch_renews_a_refused_token_once(idp: AuthServer, env: MailEnv,
                                                 tmp_path: Path) -> None:
    """The first access token is refused by the POP3 server ([AUTH] after the error
    JSON); the fetcher renews it once, on the same connection, and fetches."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "idp.pem"
    pem.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    env.settings["oauth"] = {"validator": "jwt", "issuer": "i", "audience": "pop",
                             "public_key_file": str(pem)}
    env.put("alice", b"Subject: one\r\n\r\nbody\r\n")
    lifetimes = iter([-60, 300])  # the first is already expired when the server checks it
    idp.issue = lambda: jwt.encode({"iss": "i", "aud": "pop", "email": "alice",
                                    "exp": time.time() + next(lifetimes)}, key, "ES256")
    store = SecretStore(tmp_path / "state", backend=fail.Keyring())
    await oauth.save_grant(store, "work", conf(idp), oauth.Grant("x", 0, "rt-1"))
    state = StateFile(tmp_path / "fetch.json")
    async with running_server(env.config()) as (port, _):
        source = Source(server="127.0.0.1", port=port, user="alice", password="", tls="none",
                        auth="auto", token=oauth.OAuthTokens("work", store))
        maildir = tmp_path / "Mail"
        destination = open_destination(MaildirTarget(maildir), state, account="alice",
                                       user="alice")
        state.open()
        try:
            fetcher = Fetcher(source, destination, state, Options())
            fetcher.prepare()
            report = await fetcher.run()
        finally:
            state.close()
    assert report.delivered == 1
    assert len(list((maildir / "new").iterdir())) == 1
    assert [f["grant_type"] for _, f in idp.requests] == ["refresh_token"] * 2


async def test_oauth_login_command(idp: AuthServer, keyring_file: Path) -> None:
    """`popbox fetch oauth login` in a child process: the device grant, the code on
    stderr, the grant in the keyring its $PYTHON_KEYRING_BACKEND names."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "popbox", "fetch", "oauth", "login", "work",
        "--client-id", "popbox-test", "--token-url", f"{idp.url}/token",
        "--device-url", f"{idp.url}/device", "--scope", "mail",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    assert b"enter the code WDJB-MJHT" in err
    assert b"work authorized" in out
    stored = json.loads(json.loads(keyring_file.read_text())["popbox/oauth:work"])
    assert stored["refresh_token"] == "rt-1" and stored["client_id"] == "popbox-test"
    assert b"at-1" not in out + err and b"rt-1" not in out + err
