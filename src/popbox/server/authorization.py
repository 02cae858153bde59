"""The AUTHORIZATION state's policy: USER/PASS, APOP and SASL AUTH (RFC 1939 §7,
RFC 5034), ending in `Authenticated(user, info)` or one `-ERR` from `replies`. Opening
the maildrop is the session's next step; `opened()` hears how it went.

Plaintext mechanisms are refused on a connection that is neither TLS nor from
`auth.local_networks` unless `auth.cleartext = "always"` (RFC 8314 §5.1 spirit). An
unknown user and a wrong password are one verdict from the passdb and get one reply. Log
lines name the user, the mechanism and the client address, never a password, a token or
an AUTH payload.

SASL: `mechanisms()` is what this connection is offered (see `server.mechanisms`), AUTH
accepts nothing else. A mechanism's requests are fulfilled here: `NeedCredential` from the
passdb's `credentials()` (an invalid user name is looked up as nobody, so it gets the
mock), `NeedToken` from the token validator, whose user must be the one the client
named. A mechanism's `Authenticated` and a verified `Credentials` lead to the same
userdb lookup, the check that the account may use POP3 (`UserInfo.disabled`: `-ERR [AUTH]`
saying so, RFC 3206 §4, with no penalty, since only a client that proved who it is hears
it) and the LOGIN-DELAY check (RFC 2449 §6.8). Every user name a client gives is
first translated (`auth.username_translation`): lookups and logs see the translated one.
Over TLS the shell calls `tls_started()`, which records the channel binding data. Time
comes from the context's clock (`server.clock`): the penalty book and LOGIN-DELAY read
it, token checks use its wall time, and the penalty wait sleeps on it.

`capabilities(state)` is what CAPA says on this connection (RFC 2449 §5): the table's
capabilities this connection may use (`commands.capabilities`), then the server's.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from scramp import ScramException  # type: ignore[import-untyped]
from scramp.core import saslprep  # type: ignore[import-untyped]

from popbox import __version__
from popbox.auth.base import Directory, Secret, UserInfo, Verdict
from popbox.auth.names import normalize_username, translation, valid_username
from popbox.config import in_networks
from popbox.proto import apop, commands, sasl
from popbox.proto import events as ev
from popbox.proto.types import State
from popbox.server import mechanisms, replies
from popbox.server.binding import channel_bindings
from popbox.server.context import ServerContext
from popbox.server.logfmt import quote
from popbox.store import expire
from popbox.store.base import Failure, Maildrop

log = logging.getLogger("popbox")

Check = Callable[[], Awaitable[Verdict]]


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The client proved who it is; the userdb says where its mail is."""

    user: str
    info: UserInfo
    mechanism: str  # USER, APOP or the SASL mechanism: for the log
    login_delay: int  # the user's LOGIN-DELAY (RFC 2449 §6.8), seconds
    expire_days: int | None = None  # the user's EXPIRE (RFC 2449 §6.7); None: NEVER


Answer = ev.Ok | ev.Err | ev.Continuation | replies.Listing | Authenticated


async def _accepted() -> Verdict:
    return Verdict.OK


def utf8_password(secret: bytes) -> bytes | None:
    """A PASS argument after UTF8 (RFC 6856 §2, "UTF8 USER"): UTF-8 text, prepared with
    SASLprep (RFC 4013) as SCRAM prepares passwords, so that one password typed in
    different Unicode forms is one password. None if it is not UTF-8 or SASLprep refuses
    it. ASCII passwords come out unchanged; before UTF8 the octets are used as sent."""
    if secret.isascii():
        return secret
    try:
        prepared: str = saslprep(secret.decode("utf-8"))
    except (UnicodeDecodeError, ScramException):
        return None
    return prepared.encode("utf-8")


def login_delay(info: UserInfo, default: int) -> int:
    """The user's own LOGIN-DELAY (userdb field `login_delay`, seconds), or the default."""
    value = info.extra.get("login_delay", "")
    return int(value) if value.isascii() and value.isdigit() else default


class Authorization:
    __slots__ = ("_failed_user", "_mechanism", "_mechanism_name", "_translation", "bindings",
                 "ctx", "expire_days", "failures", "login_delay", "peer", "secure", "timestamp",
                 "user", "utf8")

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
        self.expire_days = ctx.config.store.expire_days  # the user's, once logged in
        self._translation = translation(ctx.config.auth.username_translation)
        self.utf8 = False  # RFC 6856 §2: the client said UTF8

    def _name(self, given: str) -> str:
        """The user name as looked up: `auth.username_translation` applied."""
        return given.translate(self._translation) if self._translation else given

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

    async def capabilities(self, state: State) -> tuple[str, ...]:
        """RFC 2449 §5: the CAPA lines for this connection in `state`."""
        offered = {"TOP": "", "UIDL": "", "UTF8": "USER", "LANG": ""}
        if state is State.AUTHORIZATION:
            if self.ctx.tls is not None and not self.secure:
                offered["STLS"] = ""
            if self.cleartext_allowed:
                offered["USER"] = ""
            sasl_mechanisms = await self.mechanisms()
            if sasl_mechanisms:  # SCRAM and CRAM-MD5 may be offered without TLS
                offered["SASL"] = " ".join(sasl_mechanisms)
        # RFC 2449 §§6.7, 6.8: the global values before login, with USER where a user
        # may have their own; the user's own after login. LOGIN-DELAY 0 says nothing.
        expires = f"EXPIRE {expire.capability(self.expire_days)}"
        delay = f"LOGIN-DELAY {self.login_delay}" if self.login_delay else None
        if state is State.AUTHORIZATION:
            userdb = self.ctx.backends.userdb
            if isinstance(userdb, Directory):
                if await userdb.varies("expire_days"):
                    expires += " USER"
                if delay and await userdb.varies("login_delay"):
                    delay += " USER"
        return (
            *commands.capabilities(state, offered),
            "RESP-CODES",
            "AUTH-RESP-CODE",
            "PIPELINING",
            expires,
            *((delay,) if delay else ()),
            f"IMPLEMENTATION popbox-{__version__}",
        )

    async def handle(self, event: ev.Command) -> Answer:
        result = await self._handle(event)
        if result is replies.AUTH_FAILED:
            await self._penalize()
        elif result is replies.POP3_DISABLED:
            self.failures += 1  # counts for max_auth_failures, without a penalty
        return result

    def opened(self, auth: Authenticated, maildrop: Maildrop | Failure) -> ev.Err | None:
        """The session opened (or failed to open) the maildrop of `auth`: on success the
        login counts (LOGIN-DELAY, the penalty book, the log) and None is returned."""
        if isinstance(maildrop, Failure):
            self.ctx.observe.store_error(maildrop)
            self._log_failure(auth.user, auth.mechanism, maildrop.value)
            return replies.failure(maildrop)
        self.ctx.record_login(auth.user, self.ctx.clock.monotonic(), auth.login_delay)
        self.user = auth.user
        self.login_delay = auth.login_delay
        self.expire_days = auth.expire_days
        self.ctx.penalties.succeeded(self.ctx.penalties.keys(self.peer, self.user))
        log.info("login ok user=%s mech=%s ip=%s messages=%d", quote(auth.user),
                 auth.mechanism, self.peer, len(maildrop.messages))
        self.ctx.observe.login(auth.user, auth.mechanism, "ok")
        return None

    def limited(self, auth: Authenticated) -> ev.Err:
        """`auth`'s user has `limits.max_connections_per_user_ip` sessions from this
        address already (server.userip)."""
        self._log_failure(auth.user, auth.mechanism, "user-ip-limit")
        return replies.TOO_MANY_USER_IP

    async def _penalize(self) -> None:
        """Count the failure and wait before answering it (see server.penalty)."""
        self.failures += 1
        config = self.ctx.config
        if in_networks(self.peer, config.limits.penalty_exempt):
            return
        book = self.ctx.penalties
        keys = book.keys(self.peer, normalize_username(self._failed_user) or None)
        clock = self.ctx.clock
        now = clock.monotonic()
        book.failed(keys, now)
        delay = book.delay(keys, now)
        if delay > 0:
            log.info("login penalty user=%s ip=%s delay=%.0f", quote(self._failed_user),
                     self.peer, delay)
            self.ctx.observe.penalty(delay)
            await clock.sleep(delay)

    async def _handle(self, event: ev.Command) -> Answer:
        match event:
            case ev.User(name):
                if not self.cleartext_allowed:
                    return replies.CLEARTEXT_REFUSED
                self.user = self._name(name)
                return ev.Ok()
            case ev.Pass(secret):
                assert self.user is not None
                prepared = utf8_password(secret) if self.utf8 else secret
                if prepared is None:
                    self._log_failure(self.user, "USER", "password-not-utf8")
                    return replies.AUTH_FAILED
                user, password = self.user, Secret(prepared)
                return await self._login(
                    user, "USER", lambda: self.ctx.backends.passdb.verify(user, password)
                )
            case ev.Apop(name, digest):
                return await self._apop(self._name(name), digest)
            case ev.Auth(None):
                return replies.Listing("Mechanisms follow", await self.mechanisms())
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

    async def _auth(self, name: str, initial: bytes | None) -> Answer:
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

    async def _sasl_step(self, step: sasl.Step) -> Answer:
        """Run the mechanism until it needs the client again or is done."""
        name = self._mechanism_name
        while True:
            mech = self._mechanism
            assert mech is not None
            match step:
                case sasl.Challenge(data):
                    return ev.Continuation(data)
                case sasl.NeedCredential(user, scheme):
                    found = await self._credential(self._name(user), scheme)
                    if found is Verdict.TEMPORARY:
                        return self._temporary(user)
                    stored = found.value if isinstance(found, Secret) else None
                    step = mech.provide(sasl.StoredCredential(stored))
                case sasl.NeedToken(claimed, token):
                    owner = await self._token_owner(self._name(claimed), Secret(token))
                    if owner is Verdict.TEMPORARY:
                        return self._temporary(claimed)
                    step = mech.provide(sasl.TokenOwner(owner if isinstance(owner, str) else None))
                case sasl.Failed(reason, user):
                    self._mechanism = None
                    self._log_failure(user, name, reason.replace(" ", "-"))
                    return replies.AUTH_FAILED
                case sasl.Authenticated(user):
                    self._mechanism = None
                    return await self._login(self._name(user), name, _accepted)
                case sasl.Credentials(authcid, password, authzid):
                    self._mechanism = None
                    authcid, authzid = self._name(authcid), self._name(authzid or "")
                    if authzid and authzid != authcid:
                        self._log_failure(authcid, name, "authzid-not-allowed")
                        return replies.AUTH_FAILED
                    return await self._verify(authcid, Secret(password))

    async def _verify(self, user: str, password: Secret) -> Answer:
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
        owner = await validator.validate(token, self.ctx.clock.time())
        if isinstance(owner, str) and claimed and (
            normalize_username(claimed) != normalize_username(owner)
        ):
            return Verdict.REJECTED  # a valid token, but someone else's
        return owner

    def _temporary(self, user: str) -> ev.Err:
        self._mechanism = None
        self._log_failure(user, self._mechanism_name, Verdict.TEMPORARY.value)
        return replies.verdict(Verdict.TEMPORARY)

    async def _apop(self, name: str, digest: str) -> Answer:
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

    async def _login(self, user: str, mechanism: str, check: Check) -> Answer:
        verdict = await check() if valid_username(user) else Verdict.REJECTED
        if verdict is not Verdict.OK:
            self._log_failure(user, mechanism, verdict.value)
            return replies.verdict(verdict)
        info = await self.ctx.backends.userdb.lookup(user)
        if not isinstance(info, UserInfo):
            self._log_failure(user, mechanism, "userdb-" + ("temporary" if info else "missing"))
            return replies.failure(Failure.TEMPORARY if info else Failure.PERMANENT)
        if info.disabled:
            self._log_failure(user, mechanism, "disabled")
            return replies.POP3_DISABLED
        delay = login_delay(info, self.ctx.config.limits.login_delay)
        if self.ctx.login_too_soon(user, self.ctx.clock.monotonic(), delay):
            self._log_failure(user, mechanism, "login-delay")
            return replies.LOGIN_DELAY
        days = expire.user_days(info.extra, self.ctx.config.store.expire_days)
        return Authenticated(user, info, mechanism, delay, days)

    def _log_failure(self, user: str, mechanism: str, reason: str) -> None:
        self._failed_user = user
        log.info("login failed user=%s mech=%s ip=%s reason=%s", quote(user), mechanism,
                 self.peer, reason)
        self.ctx.observe.login(user, mechanism, reason)
