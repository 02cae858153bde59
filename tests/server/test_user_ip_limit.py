"""`limits.max_connections_per_user_ip` (Dovecot's mail_max_userip_connections): sessions
of one user from one address, counted across worker processes. The maildrop lock allows
one session per maildrop already, so the limit is met where the lock is not taken yet:
here, logins queued behind a PostgreSQL table lock, on two workers. The refusal is
`-ERR [SYS/TEMP]` (RFC 3206 §4: temporary, goes away by itself), never `[IN-USE]`."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import time
import uuid
from multiprocessing.connection import Connection

import asyncpg
import pytest

from helpers import Client, MailEnv, ServerProcess
from pg import add_user, pg_config
from popbox.config import ConfigError, from_dict
from popbox.server import userip

pytest_plugins = ["pg"]

LIMITED = b"-ERR [SYS/TEMP] Too many sessions for this user from this address, try again later."


def _other_process(conn: Connection) -> None:
    """A second process over the same inherited file: takes what it is told to."""
    slots = userip.UserIpSlots.shared()
    while (wanted := conn.recv()) is not None:
        user, peer, limit = wanted
        conn.send(slots.take(user, peer, limit) is not None)


def test_slots_are_shared_by_forked_processes_and_die_with_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(userip.FD_ENV, raising=False)
    fd = userip.shared_fd()
    try:
        ours, theirs = multiprocessing.get_context("fork").Pipe()
        child = multiprocessing.get_context("fork").Process(target=_other_process,
                                                             args=(theirs,))
        child.start()
        slots = userip.UserIpSlots()
        first = slots.take("alice", "192.0.2.1", 3)
        assert first is not None and slots.take("alice", "192.0.2.1", 3) is not None
        ours.send(("alice", "192.0.2.1", 3))
        assert ours.recv() is True  # the third
        ours.send(("alice", "192.0.2.1", 3))
        assert ours.recv() is False  # a fourth, in either process: no
        assert slots.take("alice", "192.0.2.1", 3) is None
        assert slots.take("alice", "192.0.2.2", 3) is not None  # another address
        assert slots.take("bob", "192.0.2.1", 3) is not None  # another user
        slots.release(first)
        ours.send(("alice", "192.0.2.1", 3))
        assert ours.recv() is True
        ours.send(None)
        child.join(10)
        assert child.exitcode == 0
        # The child's two slots went with it (the parent holds one).
        assert slots.take("alice", "192.0.2.1", 3) is not None
        assert slots.take("alice", "192.0.2.1", 3) is not None
        assert slots.take("alice", "192.0.2.1", 3) is None
        assert slots.take("alice", "192.0.2.1", 0) is not None  # 0: no limit
    finally:
        monkeypatch.delenv(userip.FD_ENV, raising=False)
        os.close(fd)


def test_a_limit_of_one_is_refused(env: MailEnv) -> None:
    with pytest.raises(ConfigError, match="IN-USE"):
        from_dict(env.config_dict(limits={"max_connections_per_user_ip": 1}))
    assert from_dict(env.config_dict()).limits.max_connections_per_user_ip == 10


def _worker_of_last_connect(server: ServerProcess, seen: int) -> tuple[int, int]:
    """The pid in the newest `connect` line once there are more than `seen`."""
    deadline = time.monotonic() + 10
    while True:
        pids = re.findall(r"popbox\[(\d+)\]: connect ip=", server.read_log())
        if len(pids) > seen or time.monotonic() > deadline:
            assert len(pids) > seen, server.read_log()
            return int(pids[-1]), len(pids)
        time.sleep(0.02)


async def _waiting_on(dsn: str, count: int) -> None:
    """Until `count` backends wait for a lock on mailboxes (the test holds it)."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + 10
        while True:
            found = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database() AND query ILIKE '%mailboxes%'")
            if found >= count or time.monotonic() > deadline:
                assert found >= count
                return
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


async def test_limit_counts_sessions_on_every_worker(env: MailEnv, pg_dsn: str) -> None:
    user = f"u{uuid.uuid4().hex[:8]}@example.org"
    await add_user(pg_dsn, user)
    config = pg_config(env, pg_dsn, server={"workers": 2},
                       limits={"max_connections_per_user_ip": 2})
    server = ServerProcess(config)
    blocker = await asyncpg.connect(pg_dsn)
    clients: list[Client] = []
    try:
        # Two clients on different workers (SO_REUSEPORT spreads connections).
        first = await Client.connect(server.port)
        assert (await first.line()).startswith(b"+OK")
        pid, seen = _worker_of_last_connect(server, 0)
        clients.append(first)
        for _ in range(40):
            other = await Client.connect(server.port)
            assert (await other.line()).startswith(b"+OK")
            other_pid, seen = _worker_of_last_connect(server, seen)
            if other_pid != pid:
                clients.append(other)
                break
            await other.close()
        assert len(clients) == 2, "every connection went to one worker"

        # Both log in while nobody can read mailboxes: they hold their slots, waiting.
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE mailboxes IN ACCESS EXCLUSIVE MODE")
        for client in clients:
            assert await client.cmd(f"USER {user}") == b"+OK"
            client.send("PASS secret")
        await _waiting_on(pg_dsn, 2)

        third = await Client.connect(server.port)
        assert await third.login(user) == LIMITED
        await third.close()

        await tx.rollback()  # the store answers again: one gets the maildrop, one IN-USE
        answers = sorted([await client.line() for client in clients])
        assert answers[0].startswith(b"+OK Logged in.") and b"[IN-USE]" in answers[1], answers
        winner = next(c for c, a in zip(clients, answers, strict=True) if a.startswith(b"+OK"))
        # While one session is open, another login of the user gets [IN-USE], not the
        # limit: the refused ones gave their slots back.
        again = await Client.connect(server.port)
        assert b"[IN-USE]" in await again.login(user)
        await again.close()
        assert (await winner.cmd("QUIT")).startswith(b"+OK")
    finally:
        for client in clients:
            await client.close()
        await blocker.close()
        log = server.stop()
    assert f"login failed user={user} mech=USER ip=127.0.0.1 reason=user-ip-limit" in log
