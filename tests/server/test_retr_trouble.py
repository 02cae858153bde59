"""One bad message costs only itself at RETR/TOP time: a message removed after login, or
whose file no longer has the size the snapshot gave, answers -ERR with its code and the
session goes on (QUIT included); a file that changes while it streams hangs the
connection up before the terminating ".", without UPDATE.

RFC 1939 §7 (RETR, TOP: "+OK" then the message, or "-ERR"), §6 (no UPDATE without QUIT),
RFC 2449 §8 / RFC 3206 (SYS/TEMP, SYS/PERM).
"""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from helpers import Client, MailEnv, running_server

SMALL = b"Subject: small\n\nshort body\n"
OTHER = b"Subject: other\n\nthe other body\n"
BIG = b"Subject: big\n\n" + (b"y" * 99 + b"\n") * 6000  # 600 KB: several chunks


def _named(env: MailEnv, text: bytes) -> os.PathLike[str]:
    """A message whose name carries its sizes, so the snapshot never reads the file."""
    wire = len(text) + text.count(b"\n")
    return env.put("alice", text, suffix=f",S={len(text)},W={wire}")


async def _login(port: int, count: int) -> Client:
    client = await Client.connect(port)
    reply = await client.login()
    assert reply.startswith(f"+OK Logged in. {count} messages".encode()), reply
    return client


async def test_vanished_and_changed_messages_answer_err_and_the_session_goes_on(
    env: MailEnv, caplog: pytest.LogCaptureFixture,
) -> None:
    """Message 1 is removed after login, message 2 truncated (its size no longer matches
    the snapshot's): RETR and TOP of each answer -ERR with [SYS/PERM] (gone) and
    [SYS/TEMP] (changed), logged with the user; message 3 is served; DELE 3 and QUIT
    work."""
    gone = _named(env, SMALL)
    changed = _named(env, OTHER)
    _named(env, SMALL)
    caplog.set_level(logging.WARNING)
    async with running_server(env.config()) as (port, _ctx):
        client = await _login(port, 3)
        os.unlink(gone)
        with open(changed, "r+b") as f:
            f.truncate(10)
        for command in ("RETR 1", "TOP 1 0"):
            assert (await client.cmd(command)).startswith(b"-ERR [SYS/PERM]")
        for command in ("RETR 2", "TOP 2 0"):
            reply = await client.cmd(command)
            assert reply == b"-ERR [SYS/TEMP] Message has changed since the session began."
        status, lines = await client.multi("RETR 3")
        wire = len(SMALL) + SMALL.count(b"\n")
        assert status == f"+OK {wire} octets".encode()
        assert b"short body" in lines
        assert (await client.cmd("DELE 3")).startswith(b"+OK")
        assert (await client.cmd("QUIT")).startswith(b"+OK")
        await client.close()
    assert "message not sent user=alice msg=1" in caplog.text
    assert "reason=gone" in caplog.text
    assert "message not sent user=alice msg=2" in caplog.text
    assert "reason=size-changed" in caplog.text
    assert env.messages("alice") == [b"Subject: o"]


async def test_a_file_that_changes_mid_stream_is_not_ended_and_nothing_is_deleted(
    env: MailEnv, caplog: pytest.LogCaptureFixture,
) -> None:
    """A 600 KB message is truncated after login: its first chunk passes (and the +OK is
    sent), the rest is short, so the server hangs up before the terminating "." rather
    than end a wrong body, and the DELE of that session is not applied."""
    _named(env, SMALL)
    big = _named(env, BIG)
    caplog.set_level(logging.WARNING)
    async with running_server(env.config()) as (port, _ctx):
        client = await _login(port, 2)
        assert (await client.cmd("DELE 1")).startswith(b"+OK")
        with open(big, "r+b") as f:
            f.truncate(len(BIG) // 2)
        client.send("RETR 2")
        status = await client.line()
        assert status.startswith(b"+OK"), status
        received = await asyncio.wait_for(client.reader.read(), 10)  # to the hang-up
        assert not received.endswith(b"\r\n.\r\n")
        assert len(received) < len(BIG)
        await client.close()
    assert "reason=size-changed-mid-stream" in caplog.text
    assert len(env.messages("alice")) == 2  # no UPDATE: message 1 is still there
