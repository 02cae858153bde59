"""A PostgreSQL server out of disk space loses no mail and answers as a full Maildir does.

A throwaway cluster of the test's own keeps the `messages` table in a tablespace on a
small tmpfs that the test mounts (as root) and fills to the last page; its WAL stays on
the ordinary disk (a full WAL disk makes PostgreSQL stop, not answer). PostgreSQL then
reports ENOSPC as SQLSTATE 53100 disk_full, which popbox maps to Failure.FULL:

* LMTP answers 452 4.3.1 (RFC 2033 §4.2, RFC 3463 §3.4 X.3.1 mail system full) and
  `popbox deliver` exits 75 (sysexits.h EX_TEMPFAIL): the MTA keeps the message.
* QUIT whose changes need room answers `-ERR [SYS/TEMP]` (RFC 1939 §6, RFC 3206 §4) and
  applies nothing: the commit is one transaction.

With room again, the same delivery and the same QUIT succeed.
"""

from __future__ import annotations

import asyncio
import base64
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import Client, MailEnv, ServerProcess
from pg import (
    LmtpClient,
    LmtpProcess,
    add_user,
    fetch,
    fresh_database_async,
    migrate,
    pg_config,
    throwaway_cluster,
)
from popbox.pg.pool import Database
from popbox.store.postgres import PostgresStore
from tmpfs import Disk, mounted

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None,
    reason="mounting a tmpfs for PostgreSQL's tablespace needs root")

STORED = 300  # enough rows that marking them all deleted needs new heap pages
BIG = b"Subject: big\n\n" + base64.encodebytes(os.urandom(30_000))  # TOASTed, barely
# compressible: storing it needs new pages of the TOAST table


@pytest.fixture
def site() -> Iterator[tuple[Path, Disk]]:
    base = Path(tempfile.mkdtemp(prefix="popbox-pgfull-"))
    base.chmod(0o755)  # the postgres user reaches the tablespace below
    try:
        with mounted(base / "disk", "2m", pwd.getpwnam("postgres").pw_uid) as disk:
            yield base, disk
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def _count(dsn: str, where: str = "TRUE") -> int:
    rows = await fetch(dsn, f"SELECT count(*) AS n FROM messages WHERE {where}")  # noqa: S608
    return int(rows[0]["n"])


async def _lmtp(port: int, message: bytes) -> list[tuple[int, str]]:
    client = await LmtpClient.connect(port)
    try:
        return await client.transaction("s@example.org", ["alice"], message)
    finally:
        await client.close()


def _deliver(config: Path, message: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "popbox", "deliver", "--config", str(config), "alice"],
        input=message, capture_output=True, timeout=60, check=False)


async def _delete_stored(port: int, held: int = STORED) -> bytes:
    """A session that finds `held` messages and DELEs the first STORED; the QUIT answer."""
    client = await Client.connect(port)
    try:
        reply = await client.login("alice")
        assert reply.startswith(f"+OK Logged in. {held} messages".encode()), reply
        for n in range(1, STORED + 1):
            client.send(f"DELE {n}")
        for _ in range(STORED):
            assert (await client.line()).startswith(b"+OK")
        return await client.cmd("QUIT")
    finally:
        await client.close()


async def test_a_full_postgresql_disk_is_452_75_and_a_quit_that_applies_nothing(
    site: tuple[Path, Disk],
) -> None:
    base, disk = site
    tablespace = disk.path / "ts"
    tablespace.mkdir()
    shutil.chown(tablespace, "postgres", "postgres")
    with throwaway_cluster() as server:
        async with fresh_database_async(server) as dsn:
            await migrate(dsn)
            await fetch(server, f"CREATE TABLESPACE popbox_small LOCATION '{tablespace}'")
            try:
                await _scenario(base, disk, dsn)
            finally:
                await fetch(dsn, "DROP TABLE messages CASCADE")  # and the view on it
                await fetch(server, "DROP TABLESPACE popbox_small")


async def _scenario(base: Path, disk: Disk, dsn: str) -> None:
    await fetch(dsn, "ALTER TABLE messages SET TABLESPACE popbox_small")
    await add_user(dsn, "alice")
    store = PostgresStore(Database(dsn, min_size=1, max_size=2))
    try:
        for n in range(STORED):
            assert await store.deliver("alice", f"Subject: {n}\n\nbody {n}\n".encode()) is None
    finally:
        await store.aclose()
    (base / "env").mkdir()
    env = MailEnv(base / "env")
    config = pg_config(env, dsn, lmtp={"listen": ["127.0.0.1:0"]},
                       store={"deleted": "trash"}, limits={"penalty_exempt": ["127.0.0.0/8"]})
    disk.fill()
    lmtp = LmtpProcess(config)
    pop3 = ServerProcess(config)
    try:
        assert await _lmtp(lmtp.port, BIG) == [
            (452, "4.3.1 <alice> Insufficient system storage")]
        result = await asyncio.to_thread(_deliver, config, BIG)
        assert result.returncode == 75, result.stderr
        assert b"No space left on device" in result.stderr, result.stderr
        assert await _count(dsn) == STORED
        quit_reply = await _delete_stored(pop3.port)
        assert quit_reply == b"-ERR [SYS/TEMP] Mail storage is full, try again later.", (
            quit_reply, pop3.read_log())
        assert await _count(dsn, "deleted_at IS NULL") == STORED  # nothing applied
        disk.free()
        assert await _lmtp(lmtp.port, BIG) == [(250, "2.0.0 <alice> Saved")]
        result = await asyncio.to_thread(_deliver, config, BIG)
        assert result.returncode == 0, result.stderr
        assert await _count(dsn, "deleted_at IS NULL") == STORED + 2
        assert (await _delete_stored(pop3.port, STORED + 2)).startswith(b"+OK")
        assert await _count(dsn, "deleted_at IS NULL") == 2
    finally:
        lmtp_log, pop3_log = lmtp.stop(), pop3.stop()
    assert "Traceback" not in lmtp_log + pop3_log, lmtp_log + pop3_log
    assert "No space left on device" in lmtp_log, lmtp_log
