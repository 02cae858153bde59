"""Migration 3 (bodies in wire form) on a database made by schema version 2 with mail in
it: `popbox db upgrade` converts the rows with `popbox serve` running, and every RETR
gives the same bytes before and after (RFC 1939 §3: CRLF, byte-stuffing, CRLF.CRLF)."""

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
from pg import add_user, fetch, fresh_database, pg_config, run
from popbox.pg import convert as pg_convert
from popbox.pg import schema as pg_schema
from popbox.proto.wire import wire_size

pytest_plugins = ["pg"]

BIG = b"Subject: big\n\n" + b"".join(b".line %d\n" % i for i in range(70_000)) + b"tail"
# Each as stored by popbox before migration 3, and what RETR must send for it.
MAIL: list[tuple[bytes, bytes]] = [
    (b"Subject: dots\n\n.leading dot\n..two\n.\nend\n",
     b"Subject: dots\r\n\r\n..leading dot\r\n...two\r\n..\r\nend\r\n"),
    (b"Subject: no final newline\n\nlast line",
     b"Subject: no final newline\r\n\r\nlast line\r\n"),
    (b"Subject: crlf\r\n\r\nbody\r\n.x\r\n", b"Subject: crlf\r\n\r\nbody\r\n..x\r\n"),
    (b".Subject: lone cr\n\na\rb\r", b"..Subject: lone cr\r\n\r\na\rb\r\r\n"),
    (b"Subject: nul\n\na\0b\n", b"Subject: nul\r\n\r\na\0b\r\n"),
    (BIG, BIG.replace(b"\n.", b"\n..").replace(b"\n", b"\r\n") + b"\r\n"),
]

# The version-2 store's insert (popbox.store.postgres before migration 3).
_OLD_INSERT = """
INSERT INTO messages (mailbox_id, uidl, size, raw_size, body, seen)
VALUES ($1, $2, $3, $4, $5, false)"""


async def _old_database(dsn: str, user: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await pg_schema.upgrade(conn, target=2)
        box = await conn.fetchval("INSERT INTO mailboxes (name) VALUES ($1) RETURNING id", user)
        for n, (raw, _) in enumerate(MAIL):
            await conn.execute(_OLD_INSERT, box, f"old.{n}", wire_size(raw), len(raw), raw)
    finally:
        await conn.close()
    await add_user(dsn, user, "{PLAIN}secret")


@pytest.fixture
def old_dsn(pg_server: str) -> Iterator[str]:
    with fresh_database(pg_server) as dsn:
        yield dsn


async def retr_all(client: Client) -> list[bytes]:
    """Every message's RETR reply, exactly as sent (after the +OK line)."""
    out = []
    for n in range(1, len(MAIL) + 1):
        status = await client.cmd(f"RETR {n}")
        assert status == f"+OK {wire_size(MAIL[n - 1][0])} octets".encode(), status
        body = await asyncio.wait_for(client.reader.readuntil(b"\r\n.\r\n"), 10)
        out.append(body[: -len(b".\r\n")])
    return out


def popbox(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "popbox", *argv], capture_output=True,
                          text=True, timeout=120)


async def test_upgrade_with_the_server_running(old_dsn: str, tmp_path: Path) -> None:
    user = f"old-{uuid.uuid4().hex[:8]}"
    await _old_database(old_dsn, user)
    config = pg_config(MailEnv(tmp_path), old_dsn)
    conn = await asyncpg.connect(old_dsn)
    try:  # only the migrations: the rows are converted below, with sessions going on
        applied = [m.version for m in await pg_schema.upgrade(conn)]
        assert applied == [m.version for m in pg_schema.MIGRATIONS if m.version > 2]
    finally:
        await conn.close()
    server = ServerProcess(config)
    try:
        before = await Client.connect(server.port)
        assert (await before.login(user)).startswith(b"+OK")
        sent_before = await retr_all(before)
        assert sent_before == [wire for _, wire in MAIL]
        # The CLI converts while this session holds the maildrop and reads on.
        upgraded = await asyncio.to_thread(popbox, "db", "upgrade", "--config", str(config))
        assert upgraded.returncode == 0, upgraded.stderr
        assert f"wire form: {len(MAIL)} messages converted" in upgraded.stdout
        assert await retr_all(before) == sent_before
        assert (await before.cmd("QUIT")).startswith(b"+OK")
        await before.close()
        after = await Client.connect(server.port)
        assert (await after.login(user)).startswith(b"+OK")
        assert await retr_all(after) == sent_before
        # TOP reads the message as delivered (RFC 1939 §7): headers, blank line, 1 line.
        assert await after.cmd("TOP 1 1") == b"+OK Top of message follows"
        top = await asyncio.wait_for(after.reader.readuntil(b"\r\n.\r\n"), 10)
        assert top == b"Subject: dots\r\n\r\n..leading dot\r\n.\r\n"
        assert (await after.cmd("QUIT")).startswith(b"+OK")
        await after.close()
    finally:
        server.stop()
    rows = await fetch(old_dsn, "SELECT body, wire FROM messages ORDER BY id")
    assert [(r["body"], r["wire"]) for r in rows] == MAIL  # raw kept, wire as sent
    again = popbox("db", "upgrade", "--config", str(config))
    assert again.returncode == 0 and "converted" not in again.stdout, again.stdout


def test_conversion_resumes_where_it_stopped(old_dsn: str) -> None:
    user = f"old-{uuid.uuid4().hex[:8]}"

    class Stop(Exception):
        pass

    def stop(done: int, total: int) -> None:
        assert total == len(MAIL)
        raise Stop

    async def go() -> tuple[int, int]:
        await _old_database(old_dsn, user)
        conn = await asyncpg.connect(old_dsn)
        try:
            await pg_schema.upgrade(conn)
            with pytest.raises(Stop):  # the first batch is committed, then it stops
                await pg_convert.convert(conn, rows=2, progress=stop)
            left = await pg_convert.pending(conn)
            # the rest, under a byte budget that lets one row through per batch
            done = await pg_convert.convert(conn, rows=500, octets=1)
            return left, done
        finally:
            await conn.close()

    left, done = run(go())
    assert (left, done) == (len(MAIL) - 2, len(MAIL) - 2)
    rows = run(fetch(old_dsn, "SELECT body, wire FROM messages ORDER BY id"))
    assert [(r["body"], r["wire"]) for r in rows] == MAIL
