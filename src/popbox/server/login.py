"""The AUTHORIZATION state's policy: USER/PASS, APOP and SASL AUTH (RFC 1939 §7,
RFC 5034), ending in a locked maildrop (a `Transaction`) or one `-ERR` from `replies`.

Plaintext mechanisms are refused on a connection that is neither TLS nor from
`auth.local_networks` unless `auth.cleartext = "always"` (RFC 8314 §5.1 spirit). An
unknown user and a wrong password are one verdict from the passdb and get one reply. Log
lines name the user, the mechanism and the client address, never a password.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable

from popbox.auth.base import Secret, UserInfo, Verdict
from popbox.auth.names import valid_username
from popbox.proto import events as ev
from popbox.proto import sasl
from popbox.server import replies
from popbox.server.context import ServerContext
from popbox.server.logfmt import quote
from popbox.server.transaction import Transaction
from popbox.store.base import Failure

log = logging.getLogger("popbox")

Check = Callable[[], Awaitable[Verdict]]


class Login:
    __slots__ = ("_mechanism", "_mechanism_name", "ctx", "peer", "secure", "timestamp", "user")

    def __init__(self, ctx: ServerContext, peer: str, secure: bool) -> None:
        self.ctx = ctx
        self.peer = peer
        self.secure = secure
        self.timestamp = ctx.apop_timestamp() if ctx.config.auth.apop else ""
        self.user: str | None = None
        self._mechanism: sasl.Mechanism | None = None
        self._mechanism_name = ""

    @property
    def cleartext_allowed(self) -> bool:
        auth = self.ctx.config.auth
        return self.secure or auth.cleartext == "always" or auth.is_local(self.peer)

    @property
    def mechanisms(self) -> tuple[str, ...]:
        return tuple(sasl.PLAINTEXT_MECHANISMS) if self.cleartext_allowed else ()

    async def handle(self, event: ev.Command) -> ev.Reply | Transaction:
        match event:
            case ev.User(name):
                if not self.cleartext_allowed:
                    return replies.CLEARTEXT_REFUSED
                self.user = name
                return ev.Ok()
            case ev.Pass(secret):
                assert self.user is not None
                user, password = self.user, Secret(secret)
                return await self._login(
                    user, "USER", lambda: self.ctx.backends.passdb.verify(user, password)
                )
            case ev.Apop(name, digest):
                return await self._apop(name, digest)
            case ev.Auth(None):
                return ev.MultiLine("Mechanisms follow", self.mechanisms)
            case ev.Auth(mechanism, initial):
                assert mechanism is not None
                factory = sasl.PLAINTEXT_MECHANISMS.get(mechanism)
                if factory is None:
                    return replies.UNKNOWN_MECHANISM
                if not self.cleartext_allowed:
                    return replies.CLEARTEXT_REFUSED
                mech = self._mechanism = factory()
                self._mechanism_name = mechanism
                return await self._sasl_step(mech.start(initial))
            case ev.SaslResponse(data):
                assert self._mechanism is not None
                return await self._sasl_step(self._mechanism.step(data))
            case ev.SaslCancel():
                self._mechanism = None
                return replies.AUTH_CANCELLED
            case _:
                raise AssertionError(f"not a login command: {event!r}")

    async def _sasl_step(self, step: sasl.Step) -> ev.Reply | Transaction:
        match step:
            case sasl.Challenge(data):
                return ev.Challenge(data)
            case sasl.Failed(reason):
                self._mechanism = None
                self._log_failure("", self._mechanism_name, reason.replace(" ", "-"))
                return replies.AUTH_FAILED
            case sasl.Credentials(authcid, password, authzid):
                self._mechanism = None
                if authzid and authzid != authcid:
                    return replies.AUTH_FAILED
                secret = Secret(password)
                return await self._login(
                    authcid, self._mechanism_name,
                    lambda: self.ctx.backends.passdb.verify(authcid, secret),
                )

    async def _apop(self, name: str, digest: str) -> ev.Reply | Transaction:
        """RFC 1939 §7: digest = MD5(timestamp + shared secret), in lowercase hex."""
        if not self.ctx.config.auth.apop:
            return replies.APOP_DISABLED

        async def check() -> Verdict:
            secret = await self.ctx.backends.passdb.plaintext(name)
            if isinstance(secret, Verdict):
                return secret
            expected = hashlib.md5(  # noqa: S324 - APOP is defined with MD5
                self.timestamp.encode() + (secret.value if secret else b"")
            ).hexdigest()
            ok = hmac.compare_digest(expected, digest)
            return Verdict.OK if ok and secret is not None else Verdict.REJECTED

        return await self._login(name, "APOP", check)

    async def _login(self, user: str, mechanism: str, check: Check) -> ev.Reply | Transaction:
        verdict = await check() if valid_username(user) else Verdict.REJECTED
        if verdict is not Verdict.OK:
            self._log_failure(user, mechanism, verdict.value)
            return replies.verdict(verdict)
        now = time.monotonic()
        if self.ctx.login_too_soon(user, now):
            self._log_failure(user, mechanism, "login-delay")
            return replies.LOGIN_DELAY
        info = await self.ctx.backends.userdb.lookup(user)
        if not isinstance(info, UserInfo):
            self._log_failure(user, mechanism, "userdb-" + ("temporary" if info else "missing"))
            return replies.failure(Failure.TEMPORARY if info else Failure.PERMANENT)
        maildrop = await self.ctx.backends.store.open(info.mail_location)
        if isinstance(maildrop, Failure):
            self._log_failure(user, mechanism, maildrop.value)
            return replies.failure(maildrop)
        self.ctx.record_login(user, now)
        self.user = user
        log.info("login ok user=%s mech=%s ip=%s messages=%d", quote(user), mechanism,
                 self.peer, len(maildrop.messages))
        return Transaction(maildrop)

    def _log_failure(self, user: str, mechanism: str, reason: str) -> None:
        log.info("login failed user=%s mech=%s ip=%s reason=%s", quote(user), mechanism,
                 self.peer, reason)
