"""The postgres store beyond the common contract (tests/store/test_store_contract.py): the
cluster-wide maildrop lock, chunked streaming, and what happens when the database or the
lock connection goes away."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from pg import fetch, free_port, fresh_database_async
from popbox.pg import schema as pg_schema
from popbox.pg.pool import Database
from popbox.pg.schema import LOCK_NAMESPACE
from popbox.proto.types import Index
from popbox.proto.wire import to_wire, wire_size
from popbox.store.base import GONE, CommitReport, Failure, Gone, Reader, read_message
from popbox.store.postgres import PostgresDrop, PostgresStore

MESSAGE = b"Subject: hello\n\nbody\n"

pytest_plugins = ["pg"]


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    made = PostgresStore(Database(pg_dsn, min_size=1, max_size=4))
    yield made
    await made.aclose()


def mailbox() -> str:
    return f"box-{uuid.uuid4().hex}"


async def opened(store: PostgresStore, location: str) -> PostgresDrop:
    drop = await store.open(location)
    assert isinstance(drop, PostgresDrop), drop
    return drop


async def all_chunks(reader: Reader) -> list[bytes]:
    """Every chunk of an opened message, in order; the reader closed."""
    chunks = [await reader.next()]
    while not reader.done:
        chunks.append(await reader.next())
    reader.close()
    return chunks


async def lock_holders(dsn: str, location: str) -> list[int]:
    rows = await fetch(
        dsn, "SELECT l.pid FROM pg_locks l, mailboxes b WHERE b.name = $2 AND "
        "l.locktype = 'advisory' AND l.classid = $1 AND l.objid = b.id AND l.granted",
        LOCK_NAMESPACE, location)
    return [row["pid"] for row in rows]


async def seen_flags(dsn: str, location: str) -> list[bool]:
    """Each message's seen flag, in delivery order, with the retrieval log applied."""
    rows = await fetch(dsn, "SELECT m.seen FROM messages_state m JOIN mailboxes b "
                       "ON b.id = m.mailbox_id WHERE b.name = $1 ORDER BY m.id", location)
    return [row["seen"] for row in rows]


async def test_two_sessions_of_one_process(store: PostgresStore, pg_dsn: str) -> None:
    location = mailbox()
    drop = await opened(store, location)
    assert await store.open(location) is Failure.IN_USE
    other = await opened(store, mailbox())  # other maildrops share the lock connection
    assert len(await lock_holders(pg_dsn, location)) == 1
    await drop.release()
    assert await lock_holders(pg_dsn, location) == []
    await other.release()


async def test_two_stores_exclude_each_other(store: PostgresStore, pg_dsn: str) -> None:
    location = mailbox()
    second = PostgresStore(Database(pg_dsn, max_size=2))
    try:
        drop = await opened(store, location)
        assert await second.open(location) is Failure.IN_USE
        await drop.commit(set(), set())
        again = await opened(second, location)
        assert await store.open(location) is Failure.IN_USE
        await again.release()
    finally:
        await second.aclose()


CHILD = """
import asyncio, sys
from popbox.pg.pool import Database
from popbox.store.postgres import PostgresStore

async def main():
    store = PostgresStore(Database(sys.argv[1]))
    drop = await store.open(sys.argv[2])
    print("locked" if hasattr(drop, "commit") else drop, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_lock_dies_with_its_process(store: PostgresStore, pg_dsn: str) -> None:
    location = mailbox()
    assert await store.deliver(location, MESSAGE) is None
    child = subprocess.Popen([sys.executable, "-c", CHILD, pg_dsn, location],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "locked"
        assert await store.open(location) is Failure.IN_USE
        child.kill()  # SIGKILL: no chance to unlock anything
        child.wait(10)
        started = time.monotonic()
        while (drop := await store.open(location)) is Failure.IN_USE:
            assert time.monotonic() - started < 2, "the dead process's lock lingered"
        assert isinstance(drop, PostgresDrop)
        assert len(drop.messages) == 1  # and nothing was changed
        await drop.release()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


async def test_lost_lock_connection_means_no_commit(store: PostgresStore, pg_dsn: str) -> None:
    location = mailbox()
    for _ in range(2):
        assert await store.deliver(location, MESSAGE) is None
    drop = await opened(store, location)
    (pid,) = await lock_holders(pg_dsn, location)
    await fetch(pg_dsn, "SELECT pg_terminate_backend($1)", pid)
    elsewhere = await store.open(mailbox())  # a new lock connection, at the first try
    assert isinstance(elsewhere, PostgresDrop)
    await elsewhere.release()
    # the lock is gone: another session (here: of the same process) may take the maildrop
    started = time.monotonic()
    while (newer := await store.open(location)) is Failure.IN_USE:
        assert time.monotonic() - started < 5
    assert isinstance(newer, PostgresDrop)
    assert await drop.commit({0}, {1}) is Failure.TEMPORARY  # the first may not commit
    assert await newer.commit({0}, set()) == CommitReport(deleted=1, missing=0, flagged=0)
    assert await seen_flags(pg_dsn, location) == [False]


async def test_commit_proves_the_lease_in_its_transaction(
    store: PostgresStore, pg_dsn: str
) -> None:
    """Even when this process has not noticed yet that its lock connection died."""
    location = mailbox()
    assert await store.deliver(location, MESSAGE) is None
    drop = await opened(store, location)
    (pid,) = await lock_holders(pg_dsn, location)
    other = PostgresStore(Database(pg_dsn, max_size=2))
    try:
        await fetch(pg_dsn, "SELECT pg_terminate_backend($1)", pid)
        started = time.monotonic()
        while (taken := await other.open(location)) is Failure.IN_USE:
            assert time.monotonic() - started < 5
        assert isinstance(taken, PostgresDrop)
        assert await drop.commit({0}, set()) is Failure.TEMPORARY
        await taken.release()
    finally:
        await other.aclose()
    assert len((await opened(store, location)).messages) == 1


async def test_a_failed_commit_on_the_lock_connection_keeps_the_other_locks(
    store: PostgresStore, pg_dsn: str
) -> None:
    """The commit runs on the lock connection: an error the database answers there (here
    a trigger refusing the DELETE) fails that commit only, changing nothing; the
    connection and the other sessions' locks stay, and they commit."""
    first, second = mailbox(), mailbox()
    for location in (first, second):
        assert await store.deliver(location, MESSAGE) is None
    one, two = await opened(store, first), await opened(store, second)
    holder = await lock_holders(pg_dsn, second)
    (box,) = [r["id"] for r in await fetch(pg_dsn, "SELECT id FROM mailboxes WHERE name = $1",
                                           first)]
    await fetch(pg_dsn, f"CREATE FUNCTION refuse_{box}() RETURNS trigger LANGUAGE plpgsql "
                "AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$")
    await fetch(pg_dsn, f"CREATE TRIGGER refuse_{box} BEFORE DELETE ON messages FOR EACH ROW "
                f"WHEN (OLD.mailbox_id = {box}) EXECUTE FUNCTION refuse_{box}()")
    try:
        assert await one.commit({0}, set()) is Failure.TEMPORARY
    finally:
        await fetch(pg_dsn, f"DROP TRIGGER refuse_{box} ON messages")
        await fetch(pg_dsn, f"DROP FUNCTION refuse_{box}()")
    assert await lock_holders(pg_dsn, second) == holder
    assert await two.commit({0}, set()) == CommitReport(deleted=1, missing=0, flagged=0)
    assert len((await opened(store, first)).messages) == 1  # nothing deleted


async def test_large_message_streams_in_chunks(pg_dsn: str) -> None:
    """A stored body, and one derived from the wire form (popbox.store.pg_body), are both
    read a chunk per query: the one in chunks of its own, the other in chunks of the wire
    form, each made into the message as delivered on its own."""
    store = PostgresStore(Database(pg_dsn, max_size=2), chunk_size=256 * 1024)
    try:
        location = mailbox()
        line = b"x" * 998 + b"\n"
        big = b"Subject: big\n\n" + line * 5000  # about 5 MB
        kept = big + b"no final line end"
        for message in (kept, big):
            assert await store.deliver(location, message) is None
        rows = await fetch(pg_dsn, "SELECT m.body IS NULL AS derived FROM messages m JOIN "
                           "mailboxes b ON b.id = m.mailbox_id WHERE b.name = $1 "
                           "ORDER BY m.id", location)
        assert [r["derived"] for r in rows] == [False, True]
        drop = await opened(store, location)
        for index, message, read_size in ((0, kept, len(kept)), (1, big, len(to_wire(big)))):
            assert drop.messages[index].size == wire_size(message)
            reader = await drop.open_message(Index(index))
            assert not isinstance(reader, Gone)
            chunks = await all_chunks(reader)
            assert b"".join(chunks) == message
            assert len(chunks) == -(-read_size // (256 * 1024))
            largest = max(len(chunk) for chunk in chunks)
            assert largest == 256 * 1024 if message is kept else largest <= 256 * 1024
        await drop.release()
    finally:
        await store.aclose()


async def test_wire_form_streams_in_chunks(pg_dsn: str) -> None:
    """RETR's form (RFC 1939 §3: CRLF, dot-stuffed, a final CRLF), kept beside the message
    as delivered: `open_wire` reads the one, `open_message` the other."""
    store = PostgresStore(Database(pg_dsn, max_size=2), chunk_size=1000)
    try:
        location = mailbox()
        message = b"Subject: w\n\n" + b".dot\nplain\n" * 300 + b"no end"
        assert await store.deliver(location, message) is None
        drop = await opened(store, location)
        wire = await drop.open_wire(Index(0))
        assert wire is not None and not isinstance(wire, Gone)
        chunks = await all_chunks(wire)
        expected = b"Subject: w\r\n\r\n" + b"..dot\r\nplain\r\n" * 300 + b"no end\r\n"
        assert b"".join(chunks) == expected
        assert len(chunks) == -(-len(expected) // 1000)
        assert drop.messages[0].size == len(expected) - 300  # less the stuffed dots
        assert await read_message(drop, Index(0)) == message
        given_up = await drop.open_wire(Index(0))  # closed with the next chunk's query out
        assert given_up is not None and not isinstance(given_up, Gone)
        assert await given_up.next() == expected[:1000]
        given_up.close()
        assert await read_message(drop, Index(0)) == message  # the pool is still fine
        await drop.release()
    finally:
        await store.aclose()


async def test_read_ahead_serves_each_message_once_and_as_sent(
    store: PostgresStore, pg_dsn: str
) -> None:
    """RETR in order over more messages than one read-ahead takes: each arrives in its
    wire form (RFC 1939 §3); one removed by another agent before the read-ahead reached it
    is Gone, one removed after is still served from the session's read-ahead."""
    location = mailbox()
    messages = [b"Subject: %d\n\n.%d\n" % (n, n) + b"x" * (n * 500) for n in range(60)]
    for message in messages:
        assert await store.deliver(location, message) is None
    drop = await opened(store, location)
    ids = [r["id"] for r in await fetch(
        pg_dsn, "SELECT m.id FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id "
        "WHERE b.name = $1 ORDER BY m.id", location)]
    await fetch(pg_dsn, "DELETE FROM messages WHERE id = $1", ids[40])
    got: list[bytes | Gone] = []
    for n in range(60):
        reader = await drop.open_wire(Index(n))
        assert reader is not None
        if n == 1:  # read ahead with message 0: deleted now, served anyway
            await fetch(pg_dsn, "DELETE FROM messages WHERE id = $1", ids[2])
        if isinstance(reader, Gone):
            got.append(reader)
            continue
        chunks = await all_chunks(reader)
        got.append(b"".join(chunks))
    expected: list[bytes | Gone] = [to_wire(m) for m in messages]
    expected[40] = GONE
    assert got == expected
    assert await drop.commit(set(), set()) == CommitReport(deleted=0, missing=0, flagged=0)


async def test_held_wire_gives_a_read_ahead_message_once_and_only_whole(pg_dsn: str) -> None:
    """`held_wire` (store.base.HeldWire) gives the wire form (RFC 1939 §3) of a message the
    read-ahead holds whole, once; not one it has not read, nor one of which it holds only
    the first chunk (`open_wire` then sends that chunk and reads the rest)."""
    store = PostgresStore(Database(pg_dsn, max_size=2), chunk_size=1000)
    try:
        location = mailbox()
        messages = [b"Subject: 0\n\n.a\n", b"Subject: 1\n\n" + b"y\n" * 900,
                    b"Subject: 2\n\nb"]
        for message in messages:
            assert await store.deliver(location, message) is None
        drop = await opened(store, location)
        assert drop.held_wire(Index(0)) is None  # nothing read yet
        first = await drop.open_wire(Index(0))  # reads 1 (its first chunk) and 2 ahead
        assert first is not None and not isinstance(first, Gone)
        assert await first.next() == to_wire(messages[0])
        first.close()
        assert drop.held_wire(Index(1)) is None  # over one chunk: only its start is held
        assert drop.held_wire(Index(2)) == to_wire(messages[2])
        assert drop.held_wire(Index(2)) is None  # given once
        second = await drop.open_wire(Index(1))
        assert second is not None and not isinstance(second, Gone)
        chunks = await all_chunks(second)
        assert b"".join(chunks) == to_wire(messages[1])
        await drop.release()
    finally:
        await store.aclose()


async def test_mark_seen_off(pg_dsn: str) -> None:
    store = PostgresStore(Database(pg_dsn, max_size=2), mark_seen=False)
    try:
        location = mailbox()
        assert await store.deliver(location, MESSAGE) is None
        drop = await opened(store, location)
        assert await drop.commit(set(), {0}) == CommitReport(deleted=0, missing=0, flagged=0)
        assert await seen_flags(pg_dsn, location) == [False]
        await (await opened(store, location)).release()  # folds the log
        rows = await fetch(pg_dsn, "SELECT m.seen, m.retrieved_at FROM messages m JOIN "
                           "mailboxes b ON b.id = m.mailbox_id WHERE b.name = $1", location)
        assert [(r["seen"], r["retrieved_at"] is not None) for r in rows] == [(False, True)]
        assert await fetch(pg_dsn, "SELECT r.seq FROM retrievals r JOIN mailboxes b ON "
                           "b.id = r.mailbox_id WHERE b.name = $1", location) == []
    finally:
        await store.aclose()


async def test_database_down_is_temporary() -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    store = PostgresStore(Database(dead, connect_timeout=2))
    assert await store.open("alice") is Failure.TEMPORARY
    assert await store.deliver("alice", MESSAGE) is Failure.TEMPORARY
    await store.aclose()


async def test_unusable_location_is_permanent(store: PostgresStore) -> None:
    assert await store.open("") is Failure.PERMANENT
    assert await store.deliver("a\0b", MESSAGE) is Failure.PERMANENT


async def test_a_migration_missing_below_the_newest_is_applied(pg_server: str) -> None:
    """A database that has migration 6 but not 5 (made by a popbox that numbered them
    otherwise) is at version 4: the store refuses it, and `upgrade` applies 5 alone."""
    async with fresh_database_async(pg_server) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await pg_schema.upgrade(conn)
            await conn.execute("DROP VIEW messages_state; DROP TABLE retrievals; "
                               "DELETE FROM schema_migrations WHERE version = 5")
            assert await pg_schema.current_version(conn) == 4
            store = PostgresStore(Database(dsn))
            assert await store.open("alice") is Failure.TEMPORARY
            await store.aclose()
            assert [m.version for m in await pg_schema.upgrade(conn)] == [5]
            assert await pg_schema.current_version(conn) == pg_schema.LATEST
            assert await conn.fetchval("SELECT to_regclass('retrievals')") is not None
        finally:
            await conn.close()


async def test_old_schema_is_refused(pg_server: str) -> None:
    async with fresh_database_async(pg_server) as empty:
        store = PostgresStore(Database(empty))
        assert await store.open("alice") is Failure.TEMPORARY
        assert await store.deliver("alice", MESSAGE) is Failure.TEMPORARY
        await store.aclose()



async def test_messages_already_seen_get_no_update(store: PostgresStore, pg_dsn: str) -> None:
    """RFC 1939 §6: a QUIT writes one row of the retrieval log for the messages it
    retrieved that were not seen yet, and no message row (its xmin, the transaction that
    wrote it, stays); the next session folds the log into the rows; a QUIT after
    retrieving only messages already seen writes nothing; a message not seen yet among
    them is still logged."""
    location = mailbox()
    for _ in range(3):
        assert await store.deliver(location, MESSAGE) is None

    async def versions() -> list[tuple[str, bool]]:
        rows = await fetch(pg_dsn, "SELECT m.xmin::text AS x, m.seen FROM messages m "
                           "JOIN mailboxes b ON b.id = m.mailbox_id WHERE b.name = $1 "
                           "ORDER BY m.id", location)
        return [(row["x"], row["seen"]) for row in rows]

    async def logged() -> list[list[int]]:
        rows = await fetch(pg_dsn, "SELECT r.ids FROM retrievals r JOIN mailboxes b "
                           "ON b.id = r.mailbox_id WHERE b.name = $1 ORDER BY r.seq", location)
        return [list(row["ids"]) for row in rows]

    delivered = await versions()
    ids = [row["id"] for row in await fetch(
        pg_dsn, "SELECT m.id FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id "
        "WHERE b.name = $1 ORDER BY m.id", location)]
    drop = await opened(store, location)
    assert await drop.commit(set(), {0, 1}) == CommitReport(deleted=0, missing=0, flagged=2)
    assert await versions() == delivered  # no row written
    assert await logged() == [ids[:2]]
    assert await seen_flags(pg_dsn, location) == [True, True, False]

    drop = await opened(store, location)  # folds the log while the session goes on
    assert await drop.commit(set(), {0, 1}) == CommitReport(deleted=0, missing=0, flagged=2)
    folded = await versions()
    assert [seen for _, seen in folded] == [True, True, False]
    assert folded[2] == delivered[2] and folded[0] != delivered[0]
    assert await logged() == []

    drop = await opened(store, location)
    assert await drop.commit(set(), {0, 1}) == CommitReport(deleted=0, missing=0, flagged=2)
    assert await versions() == folded
    assert await logged() == []
    assert await lock_holders(pg_dsn, location) == []  # the lock is released all the same
    drop = await opened(store, location)
    assert await drop.commit(set(), {0, 1, 2}) == CommitReport(deleted=0, missing=0, flagged=3)
    assert await versions() == folded
    assert await logged() == [ids[2:]]


_RAISE = ("""
CREATE FUNCTION popbox_test_raise() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE box text;
BEGIN
  SELECT name INTO box FROM mailboxes WHERE id = NEW.mailbox_id;
  IF box LIKE TG_OP || '-%' OR box LIKE TG_TABLE_NAME || '-%' THEN
    RAISE EXCEPTION 'raised by the test' USING ERRCODE = split_part(box, '-', 2);
  END IF;
  RETURN NEW;
END $$
""", """
CREATE TRIGGER popbox_test_raise BEFORE INSERT OR UPDATE ON messages
  FOR EACH ROW EXECUTE FUNCTION popbox_test_raise()
""", """
CREATE TRIGGER popbox_test_raise BEFORE INSERT ON retrievals
  FOR EACH ROW EXECUTE FUNCTION popbox_test_raise()
""")


async def test_a_fold_that_fails_keeps_the_log(store: PostgresStore, pg_dsn: str) -> None:
    """The retrieval log is folded into the rows by the next session; when that fails
    (here: the UPDATE raises), the log stays and is read with the rows: the messages are
    still seen, the session goes on and commits, and a later session folds it all."""
    location = f"UPDATE-53200-{uuid.uuid4().hex}"  # popbox_test_raise: every UPDATE fails
    for _ in range(2):
        assert await store.deliver(location, MESSAGE) is None
    for statement in _RAISE:
        await fetch(pg_dsn, statement)
    try:
        drop = await opened(store, location)
        assert await drop.commit(set(), {0}) == CommitReport(deleted=0, missing=0, flagged=1)
        drop = await opened(store, location)  # its fold fails
        assert await drop.commit(set(), {0, 1}) == CommitReport(deleted=0, missing=0, flagged=2)
        assert await seen_flags(pg_dsn, location) == [True, True]
        logged = await fetch(pg_dsn, "SELECT r.ids FROM retrievals r JOIN mailboxes b ON "
                             "b.id = r.mailbox_id WHERE b.name = $1 ORDER BY seq", location)
        assert len(logged) == 2
    finally:
        await fetch(pg_dsn, "DROP TRIGGER popbox_test_raise ON messages")
        await fetch(pg_dsn, "DROP TRIGGER popbox_test_raise ON retrievals")
        await fetch(pg_dsn, "DROP FUNCTION popbox_test_raise()")
    drop = await opened(store, location)
    assert await drop.commit(set(), {0, 1}) == CommitReport(deleted=0, missing=0, flagged=2)
    rows = await fetch(pg_dsn, "SELECT m.seen FROM messages m JOIN mailboxes b "
                       "ON b.id = m.mailbox_id WHERE b.name = $1", location)
    assert [row["seen"] for row in rows] == [True, True]
    assert await fetch(pg_dsn, "SELECT r.seq FROM retrievals r JOIN mailboxes b ON "
                       "b.id = r.mailbox_id WHERE b.name = $1", location) == []


async def test_disk_full_from_the_server_is_full_and_out_of_memory_is_not(
    store: PostgresStore, pg_dsn: str,
) -> None:
    """The server's own errors, raised by a trigger with a chosen SQLSTATE for mailboxes
    named after it: 53100 disk_full (what PostgreSQL reports for ENOSPC) on the INSERT of
    a delivery, or on a commit's INSERT into the retrieval log, is Failure.FULL; 53200
    out_of_memory and 53000 insufficient_resources are Failure.TEMPORARY. Nothing is
    stored or changed.
    (tests/process/test_postgres_full_disk.py fills a real disk.)"""
    for statement in _RAISE:
        await fetch(pg_dsn, statement)
    try:
        for state, expected in (("53100", Failure.FULL), ("53200", Failure.TEMPORARY),
                                ("53000", Failure.TEMPORARY)):
            location = f"INSERT-{state}-{uuid.uuid4().hex}"
            assert await store.deliver(location, MESSAGE) is expected, state
            location = f"retrievals-{state}-{uuid.uuid4().hex}"
            assert await store.deliver(location, MESSAGE) is None
            drop = await opened(store, location)
            assert await drop.commit(set(), {Index(0)}) is expected, state
            drop = await opened(store, location)  # the lock was released
            assert len(drop.messages) == 1
            await drop.release()
            assert await seen_flags(pg_dsn, location) == [False]
    finally:
        await fetch(pg_dsn, "DROP TRIGGER popbox_test_raise ON messages")
        await fetch(pg_dsn, "DROP TRIGGER popbox_test_raise ON retrievals")
        await fetch(pg_dsn, "DROP FUNCTION popbox_test_raise()")
