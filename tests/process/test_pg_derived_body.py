"""Migration 6 (bodies derived from the wire form) on a database made by schema version 4
with mail in it: after `popbox db upgrade`, the rows stored before (body and wire) and
the same messages delivered afterwards (body left out where the wire form gives it back)
are sent byte for byte alike by RETR and by TOP."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from helpers import Client, MailEnv, ServerProcess
from pg import add_user, fetch, fresh_database, pg_config
from popbox.pg import schema as pg_schema
from popbox.pg.pool import Database
from popbox.proto.wire import to_wire, wire_size
from popbox.store.postgres import PostgresStore

pytest_plugins = ["pg"]

# (message as delivered, whether its body follows from its wire form)
MAIL: list[tuple[bytes, bool]] = [
    (b"Subject: dots\n\n.leading dot\n..two\n.\nend\n", True),
    (b".Subject: a dot first\n\nbody\n", True),
    (b"Subject: no final newline\n\nlast line", False),
    (b"Subject: crlf\r\n\r\nbody\r\n.x\r\n..y\r\n", True),
    (b"Subject: mixed\r\n\r\nlf\n.crlf\r\nlf\n", False),
    (b"Subject: lone cr\n\na\rb\n", True),
    (b"Subject: big\n\n" + b"".join(b".line %d\n" % i for i in range(70_000)), True),
]

# The version-4 store's insert (popbox.store.postgres before migration 6).
_V4_INSERT = """
INSERT INTO messages (mailbox_id, uidl, size, raw_size, body, wire, seen)
VALUES ($1, $2, $3, $4, $5, $6, false)"""


@pytest.fixture
def v4_dsn(pg_server: str) -> Iterator[str]:
    with fresh_database(pg_server) as dsn:
        yield dsn


async def _v4_database(dsn: str, user: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await pg_schema.upgrade(conn, target=4)
        box = await conn.fetchval("INSERT INTO mailboxes (name) VALUES ($1) RETURNING id", user)
        for n, (raw, _) in enumerate(MAIL):
            await conn.execute(_V4_INSERT, box, f"v4.{n}", wire_size(raw), len(raw), raw,
                               to_wire(raw))
    finally:
        await conn.close()
    await add_user(dsn, user, "{PLAIN}secret")


async def _answer(client: Client, command: str) -> bytes:
    status = await client.cmd(command)
    assert status.startswith(b"+OK"), (command, status)
    return await asyncio.wait_for(client.reader.readuntil(b"\r\n.\r\n"), 30)


async def test_old_and_new_rows_are_sent_alike(v4_dsn: str, tmp_path: Path) -> None:
    user = f"v4-{uuid.uuid4().hex[:8]}"
    await _v4_database(v4_dsn, user)
    config = pg_config(MailEnv(tmp_path), v4_dsn)
    upgraded = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "popbox", "db", "upgrade", "--config",
                         str(config)], capture_output=True, text=True, timeout=120)
    assert upgraded.returncode == 0, upgraded.stderr
    rows = await fetch(v4_dsn, "SELECT max(version) AS v FROM schema_migrations")
    assert rows[0]["v"] == pg_schema.LATEST
    store = PostgresStore(Database(v4_dsn, max_size=2))
    try:
        for raw, _ in MAIL:
            assert await store.deliver(user, raw) is None
    finally:
        await store.aclose()
    rows = await fetch(v4_dsn, "SELECT body IS NULL AS derived FROM messages ORDER BY id")
    assert [r["derived"] for r in rows] == [False] * len(MAIL) + [d for _, d in MAIL]
    server = ServerProcess(config)
    try:
        client = await Client.connect(server.port)
        assert (await client.login(user)).startswith(b"+OK")
        count = len(MAIL)
        for n, (raw, _) in enumerate(MAIL, start=1):
            old = await _answer(client, f"RETR {n}")
            assert old == to_wire(raw) + b".\r\n"
            assert await _answer(client, f"RETR {n + count}") == old
            for lines in (0, 1, 2, 99999999):
                top = await _answer(client, f"TOP {n} {lines}")
                assert await _answer(client, f"TOP {n + count} {lines}") == top, (n, lines)
            if n == 1:
                assert top == old  # TOP n 99999999: the whole message
        assert (await client.cmd("QUIT")).startswith(b"+OK")
        await client.close()
    finally:
        server.stop()
