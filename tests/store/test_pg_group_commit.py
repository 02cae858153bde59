"""Group commit of the postgres store's deliveries (popbox.store.pg_batch): concurrent
deliveries are stored in one transaction, each exactly once; a member that the server
refuses gets its own failure and the others are stored."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from pg import fetch
from popbox.pg.pool import Database
from popbox.store.base import Failure, read_message
from popbox.store.postgres import PostgresDrop, PostgresStore

pytest_plugins = ["pg"]

# Refuses rows of a mailbox named "refused-<SQLSTATE>-...", with that SQLSTATE.
_REFUSE = ("""
CREATE FUNCTION popbox_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE box text;
BEGIN
  SELECT name INTO box FROM mailboxes WHERE id = NEW.mailbox_id;
  IF box LIKE 'refused-%' THEN
    RAISE EXCEPTION 'refused by the test' USING ERRCODE = split_part(box, '-', 2);
  END IF;
  RETURN NEW;
END $$
""", """
CREATE TRIGGER popbox_test_refuse BEFORE INSERT ON messages
  FOR EACH ROW EXECUTE FUNCTION popbox_test_refuse()
""")


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    made = PostgresStore(Database(pg_dsn, min_size=1, max_size=4))
    yield made
    await made.aclose()


def message(n: int) -> bytes:
    return b"Subject: %d\n\n.a line starting with a dot\nbody %d\n" % (n, n)


async def contents(store: PostgresStore, location: str) -> list[bytes]:
    drop = await store.open(location)
    assert isinstance(drop, PostgresDrop), drop
    try:
        return [await read_message(drop, i) for i in range(len(drop.messages))]
    finally:
        await drop.release()


async def transactions(dsn: str, location: str) -> list[str]:
    """The inserting transaction of each row of the mailbox, in delivery order."""
    rows = await fetch(dsn, "SELECT m.xmin::text AS x FROM messages m JOIN mailboxes b "
                       "ON b.id = m.mailbox_id WHERE b.name = $1 ORDER BY m.id", location)
    return [row["x"] for row in rows]


async def test_concurrent_deliveries_are_stored_once_in_one_transaction(
    store: PostgresStore, pg_dsn: str,
) -> None:
    boxes = [f"box-{uuid.uuid4().hex}" for _ in range(3)]
    assert await store.deliver(boxes[0], message(0)) is None  # the others are new
    jobs = [(boxes[n % 3], message(n)) for n in range(1, 31)]
    results = await asyncio.gather(*(store.deliver(box, data) for box, data in jobs))
    assert results == [None] * 30
    for box in boxes:  # each once; concurrent deliveries have no order among them, ...
        want = [data for where, data in [(boxes[0], message(0)), *jobs] if where == box]
        assert sorted(await contents(store, box)) == sorted(want)
    assert await contents(store, boxes[0]) == [  # ... but a batch keeps its own
        message(0), *(data for where, data in jobs if where == boxes[0])]
    # the mailbox that existed got its 10 in one transaction, with the one before apart
    first = await transactions(pg_dsn, boxes[0])
    assert len(set(first[1:])) == 1 and first[0] != first[1]


async def test_a_refused_member_fails_alone(store: PostgresStore, pg_dsn: str) -> None:
    for statement in _REFUSE:
        await fetch(pg_dsn, statement)
    try:
        good = f"box-{uuid.uuid4().hex}"
        full = f"refused-53100-{uuid.uuid4().hex}"  # disk_full
        broken = f"refused-23514-{uuid.uuid4().hex}"  # check_violation
        for box in (good, full, broken):  # mailboxes exist: all go in the batch
            drop = await store.open(box)
            assert isinstance(drop, PostgresDrop)
            await drop.release()
        jobs = [good, full, good, broken, good]
        results = await asyncio.gather(*(store.deliver(box, message(n))
                                         for n, box in enumerate(jobs)))
        assert results == [None, Failure.FULL, None, Failure.TEMPORARY, None]
        assert sorted(await contents(store, good)) == [message(0), message(2), message(4)]
        assert await contents(store, full) == []
        assert await contents(store, broken) == []
    finally:
        await fetch(pg_dsn, "DROP TRIGGER popbox_test_refuse ON messages")
        await fetch(pg_dsn, "DROP FUNCTION popbox_test_refuse()")


async def test_a_lost_connection_fails_the_whole_batch(pg_dsn: str) -> None:
    """The connection of a batch killed while its INSERT waits for a lock: whether it
    committed cannot be known, so every member is answered TEMPORARY (none is retried
    alone); and indeed nothing was stored."""
    store = PostgresStore(Database(pg_dsn, min_size=1, max_size=2))
    box = f"box-{uuid.uuid4().hex}"
    blocker = await asyncpg.connect(pg_dsn)
    watcher = await asyncpg.connect(pg_dsn)
    try:
        assert await store.deliver(box, message(0)) is None
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        batch = asyncio.gather(*(store.deliver(box, message(n)) for n in (1, 2, 3)))
        for _ in range(100_000):
            waiting = await watcher.fetch(
                "SELECT pid, query FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO messages%'")
            if waiting:
                break
        assert len(waiting) == 1 and "unnest" in waiting[0]["query"]  # the three together
        await watcher.execute("SELECT pg_terminate_backend($1)", waiting[0]["pid"])
        await transaction.rollback()
        assert await batch == [Failure.TEMPORARY] * 3
        assert await contents(store, box) == [message(0)]
    finally:
        await blocker.close()
        await watcher.close()
        await store.aclose()
