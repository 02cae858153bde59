"""The commands older than RFC 1939 and the SDPS-style user names, through whole
sessions: LAST (RFC 1460 §5, removed by RFC 1725), XTND (RFC 1082) and
`auth.username_translation` (Dovecot's auth_username_translation)."""

from __future__ import annotations

import base64
import logging

import pytest

from helpers import MailEnv
from memory_transport import MemoryTransport, memory_session
from popbox.backends import build
from popbox.proto import events as ev
from popbox.proto.client import encode
from popbox.proto.commands import parse_command
from popbox.proto.types import State
from popbox.server.context import ServerContext

MESSAGES = [b"Subject: %d\n\nbody %d\n" % (n, n) for n in range(1, 5)]


def context(env: MailEnv, **sections: dict[str, object]) -> ServerContext:
    config = env.config(**sections)
    return ServerContext.create(config, build(config))


async def login(client: MemoryTransport, user: bytes = b"alice") -> bytes:
    client.send(b"USER " + user)
    assert await client.reply() == b"+OK\r\n"
    client.send(b"PASS secret")
    return await client.reply()


async def test_last_counts_retr_and_dele_not_top_and_rset_resets(env: MailEnv) -> None:
    """RFC 1460 §5 LAST: the highest message number accessed in the session; RETR and
    DELE access a message, TOP only peeks; RSET sets it back to 0."""
    for message in MESSAGES:
        env.put("alice", message)
    async with memory_session(context(env, server={"enable_last": True})) as client:
        assert (await login(client)).startswith(b"+OK Logged in. 4 messages")
        client.send(b"LAST")
        assert await client.reply() == b"+OK 0\r\n"
        client.send(b"RETR 2")
        assert (await client.reply(multi=True)).startswith(b"+OK")
        client.send(b"LAST")
        assert await client.reply() == b"+OK 2\r\n"
        client.send(b"TOP 4 0")
        assert (await client.reply(multi=True)).startswith(b"+OK")
        client.send(b"RETR 1")
        await client.reply(multi=True)
        client.send(b"LAST")
        assert await client.reply() == b"+OK 2\r\n"  # TOP 4 and RETR 1 leave it at 2
        client.send(b"DELE 3")
        assert await client.reply() == b"+OK Message 3 deleted.\r\n"
        client.send(b"LAST")
        assert await client.reply() == b"+OK 3\r\n"
        client.send(b"RSET")
        assert (await client.reply()).startswith(b"+OK")
        client.send(b"LAST")
        assert await client.reply() == b"+OK 0\r\n"
        client.send(b"LAST 1")
        assert await client.reply() == b"-ERR Invalid arguments for LAST.\r\n"


async def test_last_is_unknown_unless_enabled(env: MailEnv) -> None:
    """LAST is off by default: an unknown command (RFC 1939 §3 -ERR), counted against the
    bad-command budget like any other, and never listed by CAPA."""
    env.put("alice", MESSAGES[0])
    async with memory_session(context(env)) as client:
        await login(client)
        client.send(b"LAST")
        assert await client.reply() == b"-ERR Unknown command.\r\n"
        client.send(b"CAPA")
        assert b"LAST" not in await client.reply(multi=True)
    # Before login LAST is in the wrong state when enabled, unknown when not.
    assert parse_command(b"LAST", State.TRANSACTION) == ev.Invalid(
        ev.Problem.UNKNOWN_COMMAND, "LAST")
    assert parse_command(b"LAST", State.AUTHORIZATION, {"LAST"}) == ev.Invalid(
        ev.Problem.WRONG_STATE, "LAST")
    assert parse_command(b"last", State.TRANSACTION, {"LAST"}) == ev.Last()


async def test_xtnd_gets_a_clear_error_in_both_states(env: MailEnv) -> None:
    """RFC 1082 XTND (the extended BBOARD service): popbox does not offer it and says so
    in one -ERR line, before and after login, without counting it as a bad command."""
    env.put("alice", MESSAGES[0])
    ctx = context(env, limits={"bad_commands_before_login": 1})
    async with memory_session(ctx) as client:
        for line in (b"XTND", b"XTND XMIT", b"XTND BBOARD news"):
            client.send(line)
            assert await client.reply() == b"-ERR XTND is not supported by this server.\r\n"
        assert (await login(client)).startswith(b"+OK Logged in.")
        client.send(b"xtnd xlst subject 1")
        assert await client.reply() == b"-ERR XTND is not supported by this server.\r\n"
        client.send(b"STAT")
        assert (await client.reply()).startswith(b"+OK 1 ")
    assert encode(ev.Xtnd("XMIT")) == b"XTND XMIT\r\n"
    assert parse_command(b"XTND BBOARD x", State.TRANSACTION) == ev.Xtnd("BBOARD x")


@pytest.mark.parametrize("given", [b"john+example.org", b"john%example.org"])
async def test_username_translation_before_lookup_and_in_the_log(
    env: MailEnv, given: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Dovecot's auth_username_translation ["+@", "%@"]: an SDPS-style name is the
    virtual user john@example.org for USER/PASS, the passdb and the log."""
    env.add_user("john@example.org")
    env.put("john@example.org", MESSAGES[0])
    ctx = context(env, auth={"username_translation": ["+@", "%@"]})
    caplog.set_level(logging.INFO, logger="popbox")
    async with memory_session(ctx) as client:
        assert (await login(client, given)).startswith(b"+OK Logged in. 1 messages")
        client.send(b"QUIT")
        await client.reply()
    logins = [r.getMessage() for r in caplog.records if "login ok" in r.getMessage()]
    assert logins and all("user=john@example.org " in line for line in logins)
    assert not any(given.decode() in r.getMessage() for r in caplog.records)


async def test_username_translation_applies_to_sasl_and_apop_names(env: MailEnv) -> None:
    """RFC 4616 PLAIN: the authcid is translated too; without a translation the same name
    is an unknown user and fails like a wrong password (RFC 3206 [AUTH])."""
    env.add_user("john@example.org")
    plain = base64.b64encode(b"\0john+example.org\0secret")
    ctx = context(env, auth={"username_translation": ["+@"]})
    async with memory_session(ctx) as client:
        client.send(b"AUTH PLAIN " + plain)
        assert (await client.reply()).startswith(b"+OK Logged in.")
    async with memory_session(context(env)) as client:
        client.send(b"AUTH PLAIN " + plain)
        assert await client.reply() == b"-ERR [AUTH] Authentication failed.\r\n"


def test_username_translation_config_is_checked(env: MailEnv) -> None:
    """A broken translation is a clear configuration error, not a silent no-op."""
    from popbox.config import ConfigError, from_dict

    for bad in (["+"], ["+@@"], ["+@", "+%"]):
        with pytest.raises(ConfigError, match="username_translation"):
            from_dict(env.config_dict(auth={"username_translation": bad}))
