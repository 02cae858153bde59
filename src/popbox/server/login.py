"""The AUTHORIZATION state's policy: USER/PASS, APOP and SASL AUTH (RFC 1939 §7,
RFC 5034), ending in a locked maildrop (a `Transaction`) or one `-ERR` from `replies`.

Plaintext mechanisms are refused on a connection that is neither TLS nor from
`auth.local_networks` unless `auth.cleartext = "always"` (RFC 8314 §5.1 spirit). An
unknown user and a wrong password are one verdict from the passdb and get one reply. Log
lines name the user, the mechanism and the client address, never a password, a token or
an AUTH payload.

SASL: `mechanisms()` is what this connection is offered (see `server.mechanisms`), AUTH
accepts nothing else. A mechanism's requests are fulfilled here: `NeedCredential` from the
passdb's `credentials()` (an invalid user name is looked up as nobody, so it gets the
mock), `NeedToken` from the token validator, whose user must be the one the client
named. `Authenticated` and a verified `Credentials` lead to the same maildrop opening.
Over TLS the shell calls `tls_started()`, which records the channel binding data.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

from popbox.auth.base import Secret, UserInfo, Verdict
from popbox.auth.names import normalize_username, valid_username
from popbox.config import in_networks
from popbox.proto import apop, sasl
from popbox.proto import events as ev
from popbox.server import mechanisms, replies
from popbox.server.binding import channel_bindings
from popbox.server.context import ServerContext
from popbox.server.logfmt import quote
from popbox.server.transaction import Transaction
from popbox.store.base import Failure

log = logging.getLogger("popbox")

Check = Callable[[], Awaitable[Verdict]]


async def _accepted() -> Verdict:
    return Verdict.OK


def login_delay(info: UserInfo, default: int) -> int:
    """The user's own LOGIN-DELAY (userdb field `login_delay`, seconds), or the default."""
    value = info.extra.get("login_delay", "")
    return int(value) if value.isascii() and value.isdigit() else default


class Login:
    __slots__ = ("_failed_user", "_mechanism", "_mechanism_name", "bindings", "ctx",
                 "failures", "login_delay", "peer", "secure", "timestamp", "user")

    def __init__(self, ctx: ServerContext, peer: str, secure: bool) -> None:
        self.ctx = ctx
        self.peer = peer
        self.secure = secure
        self.bindings: dict[str, bytes] = {}
        self.timestamp = ctx.apop_timestamp() if ctx.config.auth.apop else ""
        self.user: str | None = None
        self._mechanism: sasl.Mechanism | None = None
        self._mechanism_name = ""
        self._failed_user = ""
        self.failures = 0  # failed login attempts on this connection
        self.login_delay = ctx.config.limits.login_delay  # the user's, once logged in

    def tls_started(self, ssl_object: ssl.SSLObject | None) -> None:
        """The connection is TLS now (implicit or after STLS): note the binding data."""
        self.secure = True
        tls = self.ctx.tls
        end_point = tls.end_point(ssl_object) if tls is not None and ssl_object else None
        self.bindings = channel_bindings(ssl_object, end_point)

    @property
    def cleartext_allowed(self) -> bool:
        auth = self.ctx.config.auth
        return self.secure or auth.cleartext == "always" or auth.is_local(self.peer)

    async def mechanisms(self) -> tuple[str, ...]:
        """The SASL mechanisms this connection is offered, in order."""
        return mechanisms.offered(
            mechanisms.enabled(self.ctx.config),
            schemes=await self.ctx.backends.passdb.schemes(),
            cleartext_allowed=self.cleartext_allowed,
            bindings=self.bindings,
            bearer=self.ctx.backends.tokens is not None,
        )

    async def handle(self, event: ev.Command) -> ev.Reply | Transaction:
        result = await self._handle(event)
        if result is replies.AUTH_FAILED:
            await self._penalize()
        elif isinstance(result, Transaction):
            self.ctx.penalties.succeeded(self.ctx.penalties.keys(self.peer, self.user))
        return result

    async def _penalize(self) -> None:
        """Count the failure and wait before answering it (see server.penalty)."""
        self.failures += 1
        config = self.ctx.config
        if in_networks(self.peer, config.limits.penalty_exempt):
            return
        book = self.ctx.penalties
        keys = book.keys(self.peer, normalize_username(self._failed_user) or None)
        now = time.monotonic()
        book.failed(keys, now)
        delay = book.delay(keys, now)
        if delay > 0:
            log.info("login penalty user=%s ip=%s delay=%.0f", quote(self._failed_user),
                     self.peer, delay)
            self.ctx.observe.penalty(delay)
            await asyncio.sleep(delay)

    async def _handle(self, event: ev.Command) -> ev.Reply | Transaction:
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
                return ev.MultiLine("Mechanisms follow", await self.mechanisms())
            case ev.Auth(mechanism, initial):
                assert mechanism is not None
                return await self._auth(mechanism, initial)
            case ev.SaslResponse(data):
                assert self._mechanism is not None
                return await self._sasl_step(self._mechanism.step(data))
            case ev.SaslCancel():
                self._mechanism = None
                return replies.AUTH_CANCELLED
            case _:
                raise AssertionError(f"not a login command: {event!r}")

    async def _auth(self, name: str, initial: bytes | None) -> ev.Reply | Transaction:
        info = sasl.INFO.get(name)
        if info is None or name not in mechanisms.enabled(self.ctx.config):
            return replies.UNKNOWN_MECHANISM
        if info.cleartext and not self.cleartext_allowed:
            return replies.CLEARTEXT_REFUSED
        offered = await self.mechanisms()
        if name not in offered:
            return replies.UNKNOWN_MECHANISM
        plus_offered = any(sasl.INFO[other].binding for other in offered)
        mech = self._mechanism = mechanisms.create(
            name, self.ctx.config, bindings=self.bindings, plus_offered=plus_offered
        )
        self._mechanism_name = name
        return await self._sasl_step(mech.start(initial))

    async def _sasl_step(self, step: sasl.Step) -> ev.Reply | Transaction:
        """Run the mechanism until it needs the client again or is done."""
        name = self._mechanism_name
        while True:
            mech = self._mechanism
            assert mech is not None
            match step:
                case sasl.Challenge(data):
                    return ev.Challenge(data)
                case sasl.NeedCredential(user, scheme):
                    found = await self._credential(user, scheme)
                    if found is Verdict.TEMPORARY:
                        return self._temporary(user)
                    stored = found.value if isinstance(found, Secret) else None
                    step = mech.provide(sasl.StoredCredential(stored))
                case sasl.NeedToken(claimed, token):
                    owner = await self._token_owner(claimed, Secret(token))
                    if owner is Verdict.TEMPORARY:
                        return self._temporary(claimed)
                    step = mech.provide(sasl.TokenOwner(owner if isinstance(owner, str) else None))
                case sasl.Failed(reason, user):
                    self._mechanism = None
                    self._log_failure(user, name, reason.replace(" ", "-"))
                    return replies.AUTH_FAILED
                case sasl.Authenticated(user):
                    self._mechanism = None
                    return await self._login(user, name, _accepted)
                case sasl.Credentials(authcid, password, authzid):
                    self._mechanism = None
                    if authzid and authzid != authcid:
                        self._log_failure(authcid, name, "authzid-not-allowed")
                        return replies.AUTH_FAILED
                    return await self._verify(authcid, Secret(password))

    async def _verify(self, user: str, password: Secret) -> ev.Reply | Transaction:
        passdb = self.ctx.backends.passdb
        return await self._login(
            user, self._mechanism_name, lambda: passdb.verify(user, password)
        )

    async def _credential(self, user: str, scheme: str) -> Secret | Verdict | None:
        if not valid_username(user):
            return None
        return await self.ctx.backends.passdb.credentials(user, scheme)

    async def _token_owner(self, claimed: str, token: Secret) -> str | Verdict:
        validator = self.ctx.backends.tokens
        if validator is None:
            return Verdict.REJECTED
        owner = await validator.validate(token, time.time())
        if isinstance(owner, str) and claimed and (
            normalize_username(claimed) != normalize_username(owner)
        ):
            return Verdict.REJECTED  # a valid token, but someone else's
        return owner

    def _temporary(self, user: str) -> ev.Err:
        self._mechanism = None
        self._log_failure(user, self._mechanism_name, Verdict.TEMPORARY.value)
        return replies.verdict(Verdict.TEMPORARY)

    async def _apop(self, name: str, digest: str) -> ev.Reply | Transaction:
        """RFC 1939 §7: digest = MD5(timestamp + shared secret), in lowercase hex."""
        if not self.ctx.config.auth.apop:
            return replies.APOP_DISABLED

        async def check() -> Verdict:
            secret = await self.ctx.backends.passdb.plaintext(name)
            if isinstance(secret, Verdict):
                return secret
            ok = apop.matches(self.timestamp, secret.value if secret else b"", digest)
            return Verdict.OK if ok and secret is not None else Verdict.REJECTED

        return await self._login(name, "APOP", check)

    async def _login(self, user: str, mechanism: str, check: Check) -> ev.Reply | Transaction:
        verdict = await check() if valid_username(user) else Verdict.REJECTED
        if verdict is not Verdict.OK:
            self._log_failure(user, mechanism, verdict.value)
            return replies.verdict(verdict)
        info = await self.ctx.backends.userdb.lookup(user)
        if not isinstance(info, UserInfo):
            self._log_failure(user, mechanism, "userdb-" + ("temporary" if info else "missing"))
            return replies.failure(Failure.TEMPORARY if info else Failure.PERMANENT)
        now = time.monotonic()
        delay = login_delay(info, self.ctx.config.limits.login_delay)
        if self.ctx.login_too_soon(user, now, delay):
            self._log_failure(user, mechanism, "login-delay")
            return replies.LOGIN_DELAY
        maildrop = await self.ctx.backends.store.open(info.mail_location)
        if isinstance(maildrop, Failure):
            self.ctx.observe.store_error(maildrop)
            self._log_failure(user, mechanism, maildrop.value)
            return replies.failure(maildrop)
        self.ctx.record_login(user, now, delay)
        self.user = user
        self.login_delay = delay
        log.info("login ok user=%s mech=%s ip=%s messages=%d", quote(user), mechanism,
                 self.peer, len(maildrop.messages))
        self.ctx.observe.login(user, mechanism, "ok")
        return Transaction(maildrop)

    def _log_failure(self, user: str, mechanism: str, reason: str) -> None:
        self._failed_user = user
        log.info("login failed user=%s mech=%s ip=%s reason=%s", quote(user), mechanism,
                 self.peer, reason)
        self.ctx.observe.login(user, mechanism, reason)
