"""An OAuth2 authorization server for the tests, on 127.0.0.1: token, device and (for
the record) authorization endpoints (RFC 6749 §3.2, §5; RFC 8628 §3.1-3.5; RFC 7636 §4.5);
and the POP3 server's side of OAUTHBEARER: a key pair whose public half popbox's `[oauth]`
JWT validator trusts, and access tokens signed with the private half."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from helpers import MailEnv
from popbox.client import oauth


class AuthServer:
    """Token, device and (for the record) authorization endpoints, one request per
    connection. `issue()` makes each access token; `refresh_tokens` are those it honours."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.pending = 1  # device polls answered authorization_pending before success
        self.slow_down = 0
        self.refresh_tokens = {"rt-1"}
        self.rotate = False
        self.lifetime = 3600
        self.codes: dict[str, tuple[str, str]] = {}  # code -> (challenge, redirect_uri)
        self.tokens: list[str] = []
        self.issue = lambda: f"at-{len(self.tokens) + 1}"

    def _token(self, **extra: Any) -> tuple[int, dict[str, Any]]:
        token = self.issue()
        self.tokens.append(token)
        return 200, {"access_token": token, "token_type": "Bearer",
                     "expires_in": self.lifetime, **extra}

    def answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("client_id") != "popbox-test":
            return 401, {"error": "invalid_client"}
        if path == "/device":
            return 200, {"device_code": "dev-1", "user_code": "WDJB-MJHT",
                         "verification_uri": f"{self.url}/activate", "interval": 0,
                         "expires_in": 60}
        grant = form.get("grant_type")
        if grant == oauth.DEVICE_GRANT:
            if self.slow_down:
                self.slow_down -= 1
                return 400, {"error": "slow_down"}
            if self.pending:
                self.pending -= 1
                return 400, {"error": "authorization_pending"}
            return self._token(refresh_token="rt-1")
        if grant == "authorization_code":
            challenge, redirect = self.codes.pop(form.get("code", ""), ("", ""))
            verifier = form.get("code_verifier", "")
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            if not challenge or digest.rstrip(b"=").decode() != challenge \
                    or form.get("redirect_uri") != redirect:
                return 400, {"error": "invalid_grant", "error_description": "bad verifier"}
            return self._token(refresh_token="rt-1")
        if grant == "refresh_token":
            if form.get("refresh_token") not in self.refresh_tokens:
                return 400, {"error": "invalid_grant", "error_description": "revoked"}
            if self.rotate:
                new = f"rt-{len(self.tokens) + 2}"
                self.refresh_tokens = {new}
                return self._token(refresh_token=new)
            return self._token()
        return 400, {"error": "unsupported_grant_type"}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, _, v in (h.partition(": ") for h in head[1:] if h)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        path = head[0].split(" ")[1]
        form = dict(urllib.parse.parse_qsl(body.decode()))
        self.requests.append((path, form))
        status, answer = self.answer(path, form)
        payload = json.dumps(answer).encode()
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-"
                     f"Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
        await writer.drain()
        writer.close()


def trust_jwts(env: MailEnv, folder: Path) -> ec.EllipticCurvePrivateKey:
    """Set up the server's `[oauth]` JWT validator; the key that signs tokens it accepts."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = folder / "idp.pem"
    pem.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    env.settings["oauth"] = {"validator": "jwt", "issuer": "i", "audience": "pop",
                             "public_key_file": str(pem)}
    return key


def access_token(key: ec.EllipticCurvePrivateKey, user: str, lifetime: float = 300) -> str:
    return jwt.encode({"iss": "i", "aud": "pop", "email": user,
                       "exp": time.time() + lifetime}, key, "ES256")
