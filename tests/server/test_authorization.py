"""The AUTHORIZATION policy on its own: no socket, no session, a clock moved by hand."""

from __future__ import annotations

from dataclasses import dataclass, field

from helpers import MailEnv
from popbox.backends import build
from popbox.proto import events as ev
from popbox.proto.types import State
from popbox.server import replies
from popbox.server.authorization import Authenticated, Authorization
from popbox.server.context import ServerContext
from popbox.store.base import Failure


@dataclass
class HandClock:
    """A clock that moves only when told to, and records every wait."""

    now: float = 1000.0
    wall: float = 1_700_000_000.0
    slept: list[float] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def context(env: MailEnv, clock: HandClock, **limits: object) -> ServerContext:
    config = env.config(limits={"penalty_exempt": [], **limits})
    return ServerContext.create(config, build(config), clock=clock)


async def user_pass(authz: Authorization, user: str, password: bytes) -> object:
    assert await authz.handle(ev.User(user)) == ev.Ok()
    return await authz.handle(ev.Pass(password))


async def test_login_is_a_value_and_opens_no_maildrop(env: MailEnv) -> None:
    """RFC 1939 §7: +OK to PASS is the session's to send once the maildrop is locked; the
    policy only says who logged in and where the mail is, so the lock is still free."""
    ctx = context(env, HandClock())
    authz = Authorization(ctx, "192.0.2.1", secure=True)
    auth = await user_pass(authz, "alice", b"secret")
    assert isinstance(auth, Authenticated)
    assert (auth.user, auth.mechanism) == ("alice", "USER")
    assert auth.info.mail_location == str(env.maildir("alice"))
    maildrop = await ctx.backends.store.open(auth.info.mail_location)
    assert not isinstance(maildrop, Failure)  # nobody holds the lock
    assert authz.opened(auth, maildrop) is None and authz.user == "alice"
    await maildrop.release()


async def test_failed_login_waits_on_the_clock(env: MailEnv) -> None:
    """A wrong password gets -ERR [AUTH] after the penalty, waited on the given clock."""
    clock = HandClock()
    ctx = context(env, clock, penalty_initial=2.0, penalty_cap=8.0)
    authz = Authorization(ctx, "192.0.2.1", secure=True)
    assert await user_pass(authz, "alice", b"wrong") == replies.AUTH_FAILED
    assert await user_pass(authz, "alice", b"wrong") == replies.AUTH_FAILED
    assert clock.slept and all(delay > 0 for delay in clock.slept)
    assert authz.failures == 2


async def test_login_delay_follows_the_clock(env: MailEnv) -> None:
    """RFC 2449 §6.8: a second login within LOGIN-DELAY is refused with [LOGIN-DELAY],
    and allowed once the clock has moved past it."""
    clock = HandClock()
    ctx = context(env, clock, login_delay=300)
    first = Authorization(ctx, "192.0.2.1", secure=True)
    auth = await user_pass(first, "alice", b"secret")
    assert isinstance(auth, Authenticated) and auth.login_delay == 300
    maildrop = await ctx.backends.store.open(auth.info.mail_location)
    assert not isinstance(maildrop, Failure)
    assert first.opened(auth, maildrop) is None
    await maildrop.release()
    clock.now += 299
    again = await user_pass(Authorization(ctx, "192.0.2.1", secure=True), "alice", b"secret")
    assert again == replies.LOGIN_DELAY
    clock.now += 2
    later = await user_pass(Authorization(ctx, "192.0.2.1", secure=True), "alice", b"secret")
    assert isinstance(later, Authenticated)


async def test_a_maildrop_in_use_is_the_login_answer(env: MailEnv) -> None:
    """RFC 2449 §8.1.1: the maildrop's lock failure becomes -ERR [IN-USE]; no login counts."""
    ctx = context(env, HandClock(), login_delay=300)
    authz = Authorization(ctx, "192.0.2.1", secure=True)
    auth = await user_pass(authz, "alice", b"secret")
    assert isinstance(auth, Authenticated)
    refused = authz.opened(auth, Failure.IN_USE)
    assert refused == replies.failure(Failure.IN_USE) and refused.code == "IN-USE"
    assert "alice" not in ctx.last_login


async def test_capabilities_follow_state_and_security(env: MailEnv) -> None:
    """RFC 2449 §5, RFC 8314 §5.1 spirit: USER and plaintext SASL only where cleartext is
    allowed, neither after login; the table's TOP/UIDL/UTF8 in both states."""
    ctx = context(env, HandClock())
    remote = Authorization(ctx, "192.0.2.1", secure=False)
    caps = await remote.capabilities(State.AUTHORIZATION)
    assert "USER" not in caps and not any(c.startswith("SASL") and "PLAIN" in c for c in caps)
    assert {"TOP", "UIDL", "UTF8 USER", "PIPELINING", "RESP-CODES"} <= set(caps)
    secure = Authorization(ctx, "192.0.2.1", secure=True)
    caps = await secure.capabilities(State.AUTHORIZATION)
    assert "USER" in caps and "SASL PLAIN LOGIN" in caps
    after = await secure.capabilities(State.TRANSACTION)
    assert "USER" not in after and "TOP" in after
    assert not any(c.startswith("SASL") for c in after)
