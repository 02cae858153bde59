"""The postgres store's listing cache: a process lists a mailbox again from what it kept
while the mailbox's change counter (``mailboxes.modseq``, schema migration 7) is the same,
and every change, by any frontend or by hand in SQL, moves that counter."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from pg import fetch
from popbox.pg.pool import Database
from popbox.proto.types import Index
from popbox.store.base import CommitReport
from popbox.store.postgres import PostgresDrop, PostgresStore

pytest_plugins = ["pg"]

MESSAGES = [b"Subject: 1\n\none\n", b"Subject: 2\n\n.two\n", b"Subject: 3\n\nno end"]


@pytest.fixture
async def frontends(pg_dsn: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one database, as two frontends: `cached` keeps listings, `other`
    keeps none (so it always reads what the database holds)."""
    cached = PostgresStore(Database(pg_dsn, max_size=2))
    other = PostgresStore(Database(pg_dsn, max_size=2), listing_cache=0)
    yield cached, other
    await cached.aclose()
    await other.aclose()


async def filled(store: PostgresStore, messages: list[bytes] = MESSAGES) -> str:
    location = f"box-{uuid.uuid4().hex}"
    for message in messages:
        assert await store.deliver(location, message) is None
    return location


async def opened(store: PostgresStore, location: str) -> PostgresDrop:
    drop = await store.open(location)
    assert isinstance(drop, PostgresDrop), drop
    return drop


async def listing(store: PostgresStore, location: str) -> tuple[object, ...]:
    """Everything a session of `store` takes from its listing, and the listing itself."""
    drop = await opened(store, location)
    rows = drop._rows
    await drop.release()
    return (rows.snapshot.uidls, rows.snapshot.sizes, rows.ids, rows.raw_sizes, rows.seen,
            rows.wire_sizes, rows.forms)


async def kept(store: PostgresStore, location: str) -> bool:
    """Whether two logins in a row get the very same listing (the kept one)."""
    first = await opened(store, location)
    await first.release()
    second = await opened(store, location)
    await second.release()
    return second.messages is first.messages


async def test_an_unchanged_mailbox_is_listed_from_what_was_kept(
    frontends: tuple[PostgresStore, PostgresStore]
) -> None:
    cached, other = frontends
    location = await filled(other)
    assert await kept(cached, location)
    assert not await kept(other, location)  # listing_cache = 0
    assert await listing(cached, location) == await listing(other, location)


async def _session(store: PostgresStore, location: str, *, delete: set[int] = frozenset(),
                   seen: set[int] = frozenset()) -> None:
    drop = await opened(store, location)
    report = await drop.commit({Index(i) for i in delete}, {Index(i) for i in seen})
    assert isinstance(report, CommitReport), report


async def test_every_change_by_another_frontend_or_in_sql_is_seen(
    frontends: tuple[PostgresStore, PostgresStore], pg_dsn: str
) -> None:
    """After each change, made by the other frontend or by hand, the next login of the
    caching frontend lists exactly what the database holds."""
    cached, other = frontends
    location = await filled(other)
    ids = [r["id"] for r in await fetch(
        pg_dsn, "SELECT m.id FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id "
        "WHERE b.name = $1 ORDER BY m.id", location)]

    def sql(statement: str) -> Callable[[], Awaitable[object]]:
        return lambda: fetch(pg_dsn, statement, ids)

    async def deliver() -> None:
        assert await other.deliver(location, b"Subject: 4\n\nfour\n") is None

    async def retrieve() -> None:
        await _session(other, location, seen={0, 1})

    async def delete() -> None:
        await _session(other, location, delete={0})

    changes: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("a delivery", deliver),
        ("retrievals logged at QUIT", retrieve),
        ("seen taken back by hand", sql(
            "UPDATE messages SET seen = false, retrieved_at = NULL WHERE id = ANY($1)")),
        ("a UIDL changed by hand", sql(
            "UPDATE messages SET uidl = 'renamed' || id WHERE id = ($1::bigint[])[2]")),
        ("a message put in the trash", sql(
            "UPDATE messages SET deleted_at = now() WHERE id = ($1::bigint[])[2]")),
        ("a message taken out of it", sql(
            "UPDATE messages SET deleted_at = NULL WHERE id = ($1::bigint[])[2]")),
        ("a wire form removed", sql(  # the message without a final line end keeps its body
            "UPDATE messages SET wire = NULL WHERE id = ($1::bigint[])[3]")),
        ("a deletion at QUIT", delete),
    ]
    before = await listing(cached, location)
    for what, change in changes:
        assert await kept(cached, location), what  # kept until ...
        await change()
        now = await listing(cached, location)
        assert now != before, what
        assert now == await listing(other, location), what
        before = now


async def test_folding_the_retrieval_log_keeps_the_listing(
    frontends: tuple[PostgresStore, PostgresStore], pg_dsn: str
) -> None:
    """The fold of the retrieval log (seen and retrieved_at set as the log says) changes
    nothing a listing shows: the listing read before it is still the one used after."""
    cached, other = frontends
    location = await filled(other)
    await _session(cached, location, seen={0, 2})  # logged: the counter moves
    first = await opened(cached, location)  # lists anew, and folds the log
    assert first._rows.seen == (True, False, True)
    await first.release()  # (waits for the fold)
    assert await fetch(pg_dsn, "SELECT r.seq FROM retrievals r JOIN mailboxes b "
                       "ON b.id = r.mailbox_id WHERE b.name = $1", location) == []
    second = await opened(cached, location)
    await second.release()
    assert second.messages is first.messages
    assert await listing(cached, location) == await listing(other, location)


async def test_what_is_kept_is_bounded_by_rows(pg_dsn: str) -> None:
    """`listing_cache` rows in all: a larger mailbox is not kept, and the least recently
    used goes first."""
    store = PostgresStore(Database(pg_dsn, max_size=2), listing_cache=5)

    async def snapshot(location: str) -> object:
        drop = await opened(store, location)
        await drop.release()
        return drop.messages

    try:
        big = await filled(store, MESSAGES * 2)
        first, second = await filled(store), await filled(store)
        assert await snapshot(big) is not await snapshot(big)
        one = await snapshot(first)
        assert await snapshot(first) is one
        two = await snapshot(second)  # 3 + 3 > 5: `first` goes
        assert await snapshot(second) is two
        assert await snapshot(first) is not one  # listed anew: now `second` goes
        assert await snapshot(second) is not two
    finally:
        await store.aclose()
