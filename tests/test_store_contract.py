"""The store contract (popbox.store.base), run against every backend.

Each backend is a `Backend`: a store, a fresh location in it, and `vanish`, a hook that
removes a message behind the store's back (as another agent would). A new backend (e.g.
PostgreSQL) joins by adding a param to the `backend` fixture and a factory below.
`stored` says what a backend gives back for a delivered message: the message itself,
except that an mbox cannot keep a missing final line end (RFC 4155: every message ends
with a line end, then the empty line), so its sizes equal but its last LF is added.
PostgreSQL runs on a fresh database of its own (tests/pg.py), each test on a new mailbox.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import lf_terminated
from pg import fetch
from popbox.pg.pool import Database
from popbox.proto.types import Index, Uidl, is_valid_uidl
from popbox.proto.wire import wire_size
from popbox.store import mbox_index
from popbox.store.base import (
    GONE,
    CommitReport,
    Failure,
    Gone,
    Maildrop,
    MailStore,
    MessageInfo,
    read_message,
)
from popbox.store.maildir import MaildirStore
from popbox.store.maildir_names import base_of
from popbox.store.mbox import MboxStore
from popbox.store.mbox_lock import SpoolLocks
from popbox.store.memory import MemoryStore
from popbox.store.postgres import PostgresStore

pytest_plugins = ["pg"]


@dataclass
class Backend:
    store: MailStore
    location: str
    vanish: Callable[[Uidl], Awaitable[None]]
    close: Callable[[], Awaitable[None]] | None = None
    stored: Callable[[bytes], bytes] = lambda message: message

    def as_stored(self, messages: list[bytes]) -> list[bytes]:
        return [self.stored(m) for m in messages]


def _memory(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    store = MemoryStore(chunk_size=7)  # tiny chunks: streaming is exercised

    async def vanish(uidl: Uidl) -> None:
        assert store.remove("alice", uidl)

    return Backend(store, "alice", vanish)


def _maildir(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    root = tmp_path / "Maildir"

    async def vanish(uidl: Uidl) -> None:
        victims = [
            path
            for sub in ("cur", "new")
            for path in (root / sub).iterdir()
            if base_of(path.name) == uidl
        ]
        assert len(victims) == 1
        victims[0].unlink()

    return Backend(MaildirStore(chunk_size=5), str(root), vanish)


def _mbox(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    spool = tmp_path / "mail" / "alice"
    spool.parent.mkdir()

    async def vanish(uidl: Uidl) -> None:
        # as a mail reader would: rewrite the spool without the message, under its locks
        with spool.open("r+b") as f:
            locks = SpoolLocks(str(spool), f.fileno(), ["dotlock", "fcntl"], timeout=5,
                               stale_after=300)
            locks.acquire()
            try:
                size = os.fstat(f.fileno()).st_size
                entries = mbox_index.scan(f.fileno(), 0, size, "mboxrd", used=set(), known={})
                victims = [e for e in entries if e.uidl == uidl]
                assert len(victims) == 1
                data = f.read()
                f.seek(0)
                f.write(data[: victims[0].start] + data[victims[0].end :])
                f.truncate()
            finally:
                locks.release()

    return Backend(MboxStore(chunk_size=5), str(spool), vanish, stored=lf_terminated)


def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    dsn: str = request.getfixturevalue("pg_dsn")
    store = PostgresStore(Database(dsn, min_size=1, max_size=4), chunk_size=7)
    location = f"alice-{uuid.uuid4().hex}"

    async def vanish(uidl: Uidl) -> None:
        gone = await fetch(
            dsn, "DELETE FROM messages WHERE uidl = $1 AND mailbox_id IN "
            "(SELECT id FROM mailboxes WHERE name = $2) RETURNING id", uidl, location)
        assert len(gone) == 1

    return Backend(store, location, vanish)


FACTORIES = {"memory": _memory, "maildir": _maildir, "mbox": _mbox, "postgres": _postgres}


@pytest.fixture(params=sorted(FACTORIES))
def made(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return FACTORIES[request.param](request, tmp_path)


@pytest.fixture
async def backend(made: Backend) -> AsyncIterator[Backend]:
    yield made
    await made.store.aclose()  # every store can be closed, and a second close is harmless
    await made.store.aclose()


MESSAGES = [
    b"From: a@example.org\nSubject: one\n\nbody\n",
    b"From: b@example.org\r\nSubject: two\r\n\r\n.dot line\r\n..two dots\r\n",
    b"Subject: three\n\nno final newline",
    b"Subject: four\n\n" + bytes(range(256)) * 3 + b"\n",
]


async def _deliver_all(b: Backend, messages: list[bytes] = MESSAGES) -> None:
    for message in messages:
        assert await b.store.deliver(b.location, message) is None


async def _open(b: Backend) -> Maildrop:
    drop = await b.store.open(b.location)
    assert not isinstance(drop, Failure), drop
    return drop


async def _read(drop: Maildrop, index: int) -> bytes | Gone:
    return await read_message(drop, Index(index))


async def _contents(b: Backend) -> list[bytes]:
    drop = await _open(b)
    try:
        return [await _read(drop, i) for i in range(len(drop.messages))]
    finally:
        await drop.release()


async def test_empty_maildrop(backend: Backend) -> None:
    drop = await _open(backend)
    assert list(drop.messages) == []
    assert await drop.commit(set(), set()) == CommitReport(deleted=0, missing=0, flagged=0)


async def test_listing_order_and_sizes(backend: Backend) -> None:
    await _deliver_all(backend)
    drop = await _open(backend)
    assert [m.size for m in drop.messages] == [wire_size(m) for m in MESSAGES]
    assert [await _read(drop, i) for i in range(len(MESSAGES))] == backend.as_stored(MESSAGES)
    await drop.release()


async def test_uidls_valid_unique_and_stable(backend: Backend) -> None:
    await _deliver_all(backend)
    drop = await _open(backend)
    first = list(drop.messages)
    await drop.commit(set(), {0, 1})  # RETR'd ones: flags change, UIDLs must not
    drop = await _open(backend)
    assert list(drop.messages) == first
    uidls = [m.uidl for m in first]
    assert all(is_valid_uidl(u) for u in uidls)
    assert len(set(uidls)) == len(uidls)
    await drop.release()


async def test_snapshot_ignores_later_deliveries(backend: Backend) -> None:
    await _deliver_all(backend, MESSAGES[:2])
    drop = await _open(backend)
    assert await backend.store.deliver(backend.location, MESSAGES[2]) is None
    assert len(drop.messages) == 2
    assert await _read(drop, 1) == MESSAGES[1]
    await drop.commit({0}, set())
    assert await _contents(backend) == backend.as_stored(MESSAGES[1:3])


async def test_second_open_is_refused_until_release(backend: Backend) -> None:
    drop = await _open(backend)
    assert await backend.store.open(backend.location) is Failure.IN_USE
    assert await backend.store.open(backend.location) is Failure.IN_USE
    await drop.release()
    await drop.release()  # idempotent
    again = await _open(backend)
    assert await backend.store.open(backend.location) is Failure.IN_USE
    await again.commit(set(), set())
    third = await _open(backend)
    await third.release()
    await third.release()


async def test_commit_deletes_exactly_the_given_messages(backend: Backend) -> None:
    await _deliver_all(backend)
    drop = await _open(backend)
    before = list(drop.messages)
    report = await drop.commit({0, 2}, {1})
    assert report == CommitReport(deleted=2, missing=0, flagged=1)
    await drop.release()  # harmless after commit
    after = await _open(backend)
    assert list(after.messages) == [before[1], before[3]]
    assert [await _read(after, i) for i in range(2)] == backend.as_stored([MESSAGES[1],
                                                                           MESSAGES[3]])
    await after.release()


async def test_release_without_commit_changes_nothing(backend: Backend) -> None:
    await _deliver_all(backend)
    drop = await _open(backend)
    listing = list(drop.messages)
    await _read(drop, 0)
    await drop.release()
    again = await _open(backend)
    assert list(again.messages) == listing
    await again.release()
    assert await _contents(backend) == backend.as_stored(MESSAGES)


async def test_commit_twice_is_a_programming_error(backend: Backend) -> None:
    drop = await _open(backend)
    await drop.commit(set(), set())
    with pytest.raises(RuntimeError):
        await drop.commit(set(), set())


async def test_message_vanished_underneath(backend: Backend) -> None:
    await _deliver_all(backend)
    drop = await _open(backend)
    await backend.vanish(drop.messages[1].uidl)
    assert await _read(drop, 1) == GONE
    assert await _read(drop, 0) == MESSAGES[0]
    report = await drop.commit({0, 1}, set())
    assert report == CommitReport(deleted=1, missing=1, flagged=0)
    assert await _contents(backend) == backend.as_stored(MESSAGES[2:])


async def test_seen_message_vanished_counts_missing(backend: Backend) -> None:
    await _deliver_all(backend, MESSAGES[:2])
    drop = await _open(backend)
    await backend.vanish(drop.messages[0].uidl)
    report = await drop.commit(set(), {0, 1})
    assert report == CommitReport(deleted=0, missing=1, flagged=1)


async def test_locations_are_independent(backend: Backend, tmp_path: Path) -> None:
    other = (
        backend.location + "-other"
        if isinstance(backend.store, MemoryStore)
        else str(tmp_path / "Other")
    )
    drop = await _open(backend)
    assert await backend.store.deliver(other, MESSAGES[0]) is None
    second = await backend.store.open(other)
    assert not isinstance(second, Failure)
    assert list(second.messages) == [MessageInfo(second.messages[0].uidl, wire_size(MESSAGES[0]))]
    await second.release()
    await drop.release()
