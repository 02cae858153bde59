"""popbox's own OAuth2 client (RFC 6749), for the access tokens of OAUTHBEARER / XOAUTH2.

`popbox fetch oauth login ACCOUNT` gets a grant once, with one of two flows:

- the device authorization grant (RFC 8628): POST to the device endpoint (§3.1), show the
  user the verification URI and the user code (§3.3), then poll the token endpoint every
  `interval` seconds (§3.4, default 5), on `authorization_pending` again, on `slow_down`
  five seconds slower (§3.5), until a token, a refusal, or `expires_in`;
- the authorization code grant with PKCE (RFC 7636) on a loopback redirect (RFC 8252
  §7.3): a listener on 127.0.0.1 at a port the system picks, the browser sent to the
  authorization endpoint with `code_challenge = BASE64URL(SHA256(verifier))` (S256,
  §4.2) and a random `state`; the request that comes back to the loopback address with the
  same `state` carries the code, exchanged at the token endpoint with the verifier (§4.5).

The grant (refresh token, token endpoint, client id and secret, scope) is kept in the
`SecretStore`, so that a later `popbox fetch` needs only the account's name.
`OAuthTokens` is the `TokenSource` that uses it: an access token is kept in memory until
`margin` seconds before it expires (`expires_in`, RFC 6749 §5.1), then refreshed (§6); a
new refresh token in the answer replaces the old one. `invalid_grant` (§5.2: revoked or
expired) is `OAuthGrantRevoked`: log in again.

Presets: `google` (scope `https://mail.google.com/`) and `microsoft` (scope
`https://outlook.office.com/POP.AccessAsUser.All offline_access`; its POP3 server wants
XOAUTH2's two-step form).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import inspect
import json
import secrets
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import httpx

from popbox.client.secret_store import SecretStore, oauth_name
from popbox.client.tokens import TokenError

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass(frozen=True)
class OAuthSettings:
    client_id: str
    token_url: str
    scope: str
    device_url: str | None = None
    auth_url: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    two_step: bool = False  # XOAUTH2 in two steps (Microsoft 365)


PRESETS: dict[str, dict[str, Any]] = {
    "google": {
        "token_url": "https://oauth2.googleapis.com/token",
        "device_url": "https://oauth2.googleapis.com/device/code",
        "auth_url": "https://accounts.google.com/o/oauth2/v2/auth",
        "scope": "https://mail.google.com/",
    },
    "microsoft": {
        "token_url": "https://login.microsoftonline.com/common/oauth2/v2.0/token",
        "device_url": "https://login.microsoftonline.com/common/oauth2/v2.0/devicecode",
        "auth_url": "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        "scope": "https://outlook.office.com/POP.AccessAsUser.All offline_access",
        "two_step": True,
    },
}


def settings(provider: str | None = None, **keys: Any) -> OAuthSettings:
    """A preset completed or overridden by `keys` (None values are ignored); ValueError
    for an unknown provider or a missing client_id/token_url/scope."""
    base: dict[str, Any] = {}
    if provider is not None:
        if provider not in PRESETS:
            raise ValueError(f"unknown OAuth provider {provider!r} (google, microsoft)")
        base = dict(PRESETS[provider])
    base.update({k: v for k, v in keys.items() if v is not None})
    missing = [k for k in ("client_id", "token_url", "scope") if not base.get(k)]
    if missing:
        raise ValueError(f"OAuth settings lack {', '.join(missing)}")
    return OAuthSettings(**base)


class OAuthError(TokenError):
    """The authorization server refused, or answered something unusable. `code`: the
    RFC 6749 §5.2 error code, when there was one."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class OAuthGrantRevoked(OAuthError):
    """`invalid_grant`: the refresh token was revoked or expired; log in again."""


@dataclass(frozen=True)
class Grant:
    access_token: str = field(repr=False)
    expires_at: float  # time.time() scale; inf when the server gave no lifetime
    refresh_token: str | None = field(default=None, repr=False)


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class OAuthClient:
    """The requests of RFC 6749 / 8628 / 7636 against one authorization server."""

    def __init__(self, conf: OAuthSettings, http: httpx.AsyncClient | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.conf = conf
        self._http = http
        self._clock = clock

    async def _post(self, url: str, form: dict[str, str]) -> dict[str, Any]:
        form = {**form, "client_id": self.conf.client_id}
        if self.conf.client_secret:
            form["client_secret"] = self.conf.client_secret
        try:
            if self._http is not None:
                response = await self._http.post(url, data=form)
            else:
                async with httpx.AsyncClient(timeout=30) as http:
                    response = await http.post(url, data=form)
        except httpx.HTTPError as exc:
            raise OAuthError(f"{url}: {type(exc).__name__}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise OAuthError(f"{url} answered HTTP {response.status_code} without a JSON object")
        if "error" in body or response.status_code != 200:
            error = str(body.get("error", f"HTTP {response.status_code}"))
            described = f"{error}: {body['error_description']}" if body.get(
                "error_description") else error
            kind = OAuthGrantRevoked if error == "invalid_grant" else OAuthError
            raise kind(f"{url} refused: {described}"[:300], error)
        return body

    def _grant(self, body: dict[str, Any], old_refresh: str | None = None) -> Grant:
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise OAuthError(f"{self.conf.token_url} gave no access_token")
        lifetime = body.get("expires_in")
        expires = (self._clock() + float(lifetime)
                   if isinstance(lifetime, int | float) else float("inf"))
        refresh = body.get("refresh_token")
        return Grant(token, expires, refresh if isinstance(refresh, str) else old_refresh)

    async def refresh(self, refresh_token: str) -> Grant:
        """RFC 6749 §6."""
        body = await self._post(self.conf.token_url, {"grant_type": "refresh_token",
                                                      "refresh_token": refresh_token})
        return self._grant(body, refresh_token)

    async def device_login(self, show: Callable[[str, str], object]) -> Grant:
        """RFC 8628: `show(verification_uri, user_code)` tells the user where to go."""
        if not self.conf.device_url:
            raise OAuthError("no device_url for the device authorization grant")
        start = await self._post(self.conf.device_url, {"scope": self.conf.scope})
        uri = start.get("verification_uri_complete") or start.get("verification_uri") \
            or start.get("verification_url")  # Google's older name
        device_code, user_code = start.get("device_code"), start.get("user_code")
        if not all(isinstance(v, str) for v in (uri, device_code, user_code)):
            raise OAuthError(f"{self.conf.device_url} gave no device_code, user_code or "
                             "verification_uri")
        shown = show(str(uri), str(user_code))
        if inspect.isawaitable(shown):
            await shown
        interval = float(start.get("interval", 5))
        deadline = self._clock() + float(start.get("expires_in", 1800))
        while True:
            try:
                body = await self._post(self.conf.token_url, {
                    "grant_type": DEVICE_GRANT, "device_code": str(device_code)})
            except OAuthError as exc:
                if exc.code not in ("authorization_pending", "slow_down"):
                    raise
                if exc.code == "slow_down":
                    interval += 5
                if self._clock() + interval > deadline:
                    raise OAuthError("the device code expired before the user "
                                     "approved it") from None
                await asyncio.sleep(interval)
                continue
            return self._grant(body)

    async def browser_login(self, open_url: Callable[[str], object], *,
                            timeout: float = 300.0) -> Grant:  # noqa: ASYNC109
        """RFC 7636 + RFC 8252 §7.3: `open_url(authorization_url)` sends the browser."""
        if not self.conf.auth_url:
            raise OAuthError("no auth_url for the authorization code grant")
        verifier = secrets.token_urlsafe(64)  # 86 characters (RFC 7636 §4.1: 43 to 128)
        state = secrets.token_urlsafe(16)
        arrived: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()

        async def redirected(reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
            try:
                line = await asyncio.wait_for(reader.readline(), 30)
                target = line.split(b" ")[1].decode("ascii") if line.count(b" ") >= 2 else ""
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(target).query))
                ours = query.get("state") == state and not arrived.done()
                if ours:
                    arrived.set_result(query)
                status, text = ("200 OK", "popbox: you may close this window.") if ours \
                    else ("404 Not Found", "not found")
                writer.write(f"HTTP/1.0 {status}\r\nContent-Type: text/plain\r\n"
                             f"Content-Length: {len(text)}\r\nConnection: close\r\n\r\n"
                             f"{text}".encode())
                await writer.drain()
            except (OSError, TimeoutError, UnicodeDecodeError, IndexError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(redirected, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            redirect = f"http://127.0.0.1:{port}/"
            url = self.conf.auth_url + ("&" if "?" in self.conf.auth_url else "?") + \
                urllib.parse.urlencode({
                    "response_type": "code", "client_id": self.conf.client_id,
                    "redirect_uri": redirect, "scope": self.conf.scope, "state": state,
                    "code_challenge": _challenge(verifier), "code_challenge_method": "S256",
                    # Google's way to ask for a refresh token; others must ignore a
                    # parameter they do not know (RFC 6749 §3.1)
                    "access_type": "offline",
                })
            opened = open_url(url)
            if inspect.isawaitable(opened):
                await opened
            try:
                query = await asyncio.wait_for(arrived, timeout)
            except TimeoutError:
                raise OAuthError(f"no answer from the browser within {timeout:g} s") from None
        if "code" not in query:
            why = ": ".join(query[k] for k in ("error", "error_description") if k in query)
            raise OAuthError(f"authorization refused: {why or 'no code'}"[:300], "refused")
        body = await self._post(self.conf.token_url, {
            "grant_type": "authorization_code", "code": query["code"],
            "redirect_uri": redirect, "code_verifier": verifier})
        return self._grant(body)


def _stored(conf: OAuthSettings, refresh_token: str) -> str:
    return json.dumps({**asdict(conf), "refresh_token": refresh_token})


async def save_grant(store: SecretStore, account: str, conf: OAuthSettings,
                     grant: Grant) -> None:
    if not grant.refresh_token:
        raise OAuthError("the authorization server gave no refresh token "
                         "(the scope may lack offline_access)")
    await store.aset(oauth_name(account), _stored(conf, grant.refresh_token))


class OAuthTokens:
    """The `TokenSource` for an account logged in with `popbox fetch oauth login`."""

    renewable = True

    def __init__(self, account: str, store: SecretStore | None = None, *,
                 conf: OAuthSettings | None = None, http: httpx.AsyncClient | None = None,
                 clock: Callable[[], float] = time.time, margin: float = 60.0) -> None:
        """`conf`: the settings to refresh with (an accounts file's); by default those
        stored with the grant."""
        self.account = account
        self.store = store or SecretStore()
        self.conf = conf
        self.two_step = conf.two_step if conf is not None else False
        self._http = http
        self._clock = clock
        self.margin = margin
        self._grant: Grant | None = None

    def __repr__(self) -> str:
        return f"OAuthTokens({self.account!r})"

    async def settings(self) -> tuple[OAuthSettings, str]:
        """The stored settings and refresh token."""
        raw = await self.store.aget(oauth_name(self.account))
        if raw is None:
            raise OAuthError(f"no OAuth2 grant for {self.account} in {self.store.where}: run "
                             f"popbox fetch oauth login {self.account}")
        try:
            data = json.loads(raw)
            refresh = data.pop("refresh_token")
            return OAuthSettings(**data), str(refresh)
        except (ValueError, TypeError, KeyError, AttributeError):
            raise OAuthError(f"the stored OAuth2 grant for {self.account} is damaged: "
                             "log in again") from None

    async def access_token(self, *, renew: bool = False) -> str:
        grant = self._grant
        if grant is not None and not renew and self._clock() < grant.expires_at - self.margin:
            return grant.access_token
        stored, refresh = await self.settings()
        conf = self.conf or stored
        self.two_step = conf.two_step
        grant = await OAuthClient(conf, self._http, self._clock).refresh(refresh)
        if grant.refresh_token and grant.refresh_token != refresh:  # rotated (RFC 6749 §6)
            await save_grant(self.store, self.account, conf, grant)
        self._grant = replace(grant, refresh_token=None)
        return grant.access_token
