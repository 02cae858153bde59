"""Whole sessions over an in-memory transport: the router, its core and both policies on
a real Maildir and password file, without a socket."""

from __future__ import annotations

from helpers import MailEnv, crlf
from memory_transport import memory_session
from popbox.backends import build
from popbox.server.context import ServerContext

MESSAGE = b"Subject: hi\n\n.starts with a dot\nbody\n"


def context(env: MailEnv) -> ServerContext:
    config = env.config()
    return ServerContext.create(config, build(config))


async def test_login_retr_dele_quit(env: MailEnv) -> None:
    """RFC 1939 §§4-6: USER/PASS, STAT, RETR (byte-stuffed, CRLF), DELE, QUIT commits."""
    env.put("alice", MESSAGE)
    env.put("alice", b"Subject: second\n\nx\n")
    async with memory_session(context(env)) as client:
        client.send(b"USER alice")
        assert await client.reply() == b"+OK\r\n"
        client.send(b"PASS secret")
        assert (await client.reply()).startswith(b"+OK Logged in. 2 messages")
        client.send(b"RETR 1")
        size = len(crlf(MESSAGE))
        assert await client.reply(multi=True) == (
            b"+OK %d octets\r\nSubject: hi\r\n\r\n..starts with a dot\r\nbody\r\n.\r\n" % size)
        client.send(b"DELE 2")
        assert await client.reply() == b"+OK Message 2 deleted.\r\n"
        client.send(b"QUIT")
        assert await client.reply() == b"+OK Logging out, 1 messages deleted.\r\n"
    assert env.messages("alice") == [MESSAGE]


async def test_pipelined_commands_answered_in_order(env: MailEnv) -> None:
    """RFC 2449 §6.6: commands sent together are answered in order, one reply each,
    a listing and a message among them."""
    env.put("alice", MESSAGE)
    async with memory_session(context(env)) as client:
        client.protocol.data_received(
            b"USER alice\r\nPASS secret\r\nLIST\r\nTOP 1 0\r\nNOOP\r\nRSET\r\n")
        assert await client.reply() == b"+OK\r\n"
        assert (await client.reply()).startswith(b"+OK Logged in.")
        listing = await client.reply(multi=True)
        assert listing.endswith(b"\r\n1 %d\r\n.\r\n" % len(crlf(MESSAGE)))
        assert await client.reply(multi=True) == (
            b"+OK Top of message follows\r\nSubject: hi\r\n\r\n.\r\n")
        assert await client.reply() == b"+OK\r\n"
        assert (await client.reply()).startswith(b"+OK Maildrop has 1 messages")
    assert env.messages("alice") == [MESSAGE]  # no QUIT: nothing changed


async def test_a_wrong_password_and_a_bad_command(env: MailEnv) -> None:
    """RFC 1939 §7 and RFC 2449 §8: -ERR [AUTH] to a wrong password; an unknown command
    gets -ERR and the session goes on."""
    async with memory_session(context(env)) as client:
        client.send(b"USER alice")
        await client.reply()
        client.send(b"PASS nope")
        assert await client.reply() == b"-ERR [AUTH] Authentication failed.\r\n"
        client.send(b"FROB")
        assert await client.reply() == b"-ERR Unknown command.\r\n"
        client.send(b"CAPA")
        caps = await client.reply(multi=True)
        assert b"\r\nUSER\r\n" in caps and b"\r\nIMPLEMENTATION popbox" in caps
