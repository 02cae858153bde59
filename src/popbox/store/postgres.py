"""PostgresStore: maildrops in PostgreSQL, shared by any number of popbox frontends.

Location = a mailbox name (the userdb's mail location for this backend, by default the
user name). The tables are popbox.pg.schema's. The pieces:

* open: find (or make) the mailbox row, take the maildrop lock (popbox.store.pg_lock: an
  advisory lock on this process's lock connection; IN_USE at once when held anywhere),
  then take the snapshot (popbox.store.pg_listing): the mailbox's change counter and its
  retrieval log not yet folded (the messages it marks seen are seen in the snapshot) in
  one query, then its rows with ONE query over the listing index, unless this process
  keeps a listing of it at that counter (`listing_cache` rows in all): a login to a
  100,000-message mailbox that has not changed reads one small row. Sizes and UIDLs were
  fixed at delivery, so a login never reads a message body. When there is a log, the
  session folds it into the rows (one statement, on a pooled connection, under the
  session's lock) while the client goes on; the commit, `times` and the release wait
  for that fold first.
* read: ``substring(body from N for M)``, one pooled query per chunk (256 KiB): a 50 MB
  message is never in memory at once, and a slow client holds no connection between
  chunks. A row gone before the first chunk is `Gone`; `open_message` fetches that
  first chunk, so the answer is known before +OK. A row whose ``body`` is left out
  (``body_from_wire``, schema migration 6: most mail) is read the same way from
  ``wire``, each chunk made into the message as delivered by popbox.store.pg_body.
* RETR (`open_wire`, store.base.WireSource) reads ``wire``, the message as sent
  (popbox.pg.schema), the same way, so the session copies it out; a row without one
  (not yet converted by `popbox db upgrade`) is served from ``body``. The query for a
  message's first chunk also reads the messages after it whole, as long as they fit in
  AHEAD_OCTETS together (read-ahead, kept by the session until their RETR): retrieving a
  mailbox of 10 KB messages in order costs a query per 50 messages, not one each (a
  session holds at most 512 KiB so; each query's own cost, in popbox and in
  PostgreSQL, is what this saves: with 128 KiB, a dozen messages a query, a 10 KB RETR
  took 10-25% more time and CPU).
  A message held so whole is given to the session at once (`held_wire`,
  store.base.HeldWire): its RETR is answered without a query, a Reader or a coroutine.
* commit (after QUIT only): ONE statement (so one transaction, one round trip), run on
  the lock connection, which proves the lease still holds at no cost (the lock
  connection may have died: then nothing is changed and the answer is TEMPORARY),
  deletes the session's deleted messages (one ``WHERE id = ANY($n)``) and writes ONE
  row of the retrieval log for the retrieved ones still there (their ids, the store's
  `clock`, and whether to mark them seen: `mark_seen`); rows already gone count as
  missing. No message row is updated: a QUIT after retrieving 1,000 new messages costs
  one small insert, not 1,000 row versions. Then the lock is released. The commit is shielded, so
  a cancelled session still finishes it before anyone else can open the maildrop.
  Messages the snapshot found seen are not logged again; a session with nothing else to write
  (it retrieved only seen messages and deleted none) runs no transaction at all.
* soft delete (`deleted="trash"`): the commit sets ``deleted_at`` instead of deleting
  the rows; `purge` deletes the rows trashed before a time, `undelete` clears it, each
  in one statement under the maildrop lock.
* deliver: deliveries that arrive together are inserted together, ONE multi-row insert
  in one transaction (group commit: one round trip and one WAL flush for the lot,
  popbox.store.pg_batch); each is answered only after that commit. A message over
  ALONE_OCTETS, one whose mailbox does not exist yet, and every `store` (import) take
  the one-message path: ONE insert (autocommit, the mailbox looked up by name inside
  it; a mailbox's first delivery makes it first). Either way the message is stored
  whole or not at all, with a new UIDL (``<unix time>.<16 hex digits>``, unique per
  mailbox by constraint), its wire size counted and its wire form made by
  popbox.proto.wire. Never retried after a lost connection: an error means "not
  stored" (a message may then arrive twice, never get lost).

Errors: any database or connection trouble is Failure.TEMPORARY (logged), except a server
out of disk space (SQLSTATE 53100, popbox.pg.pool.disk_full) when making a mailbox,
delivering, committing or changing the trash: that is Failure.FULL (nothing was applied:
each is one statement or one transaction). A location that cannot name a mailbox (empty,
NUL, over 1024 bytes) is Failure.PERMANENT.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Sequence, Set
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from popbox.pg.pool import DB_ERRORS, Connection, Database, RawConnection, disk_full
from popbox.proto.types import Index, Uidl
from popbox.store import pg_body
from popbox.store.base import (
    GONE,
    CommitReport,
    Dated,
    Failure,
    Gone,
    HeldWire,
    Maildrop,
    MailStore,
    Reader,
    Snapshot,
    StoreError,
    Times,
    Trash,
    WireSource,
)
from popbox.store.last_login import LastLogin
from popbox.store.pg_batch import ALONE_OCTETS, Batcher, Delivery
from popbox.store.pg_listing import LISTING_CACHE_ROWS, Columns, Listings
from popbox.store.pg_lock import Lease, LockKeeper

log = logging.getLogger("popbox")

CHUNK_SIZE = 256 * 1024
_MAX_LOCATION = 1024

# A delivery's one statement: the mailbox found by name ($1) in the same statement, so
# a delivery costs one round trip; no row back: no such mailbox yet, or the UIDL is taken.
_INSERT = """
INSERT INTO messages (mailbox_id, uidl, size, raw_size, body, wire, seen, delivered_at,
    body_from_wire)
SELECT id, $2, $3, $4, $5, $6, $7, coalesce($8, now()), $9 FROM mailboxes WHERE name = $1
ON CONFLICT ON CONSTRAINT messages_uidl_unique DO NOTHING
RETURNING id"""


# The commit, ONE statement (so one transaction and one round trip), run on the lock
# connection (pg_lock.LockKeeper.run_held: that it runs proves the lease): the deletions
# ($2) and the retrievals ($3, to be marked seen with mark_seen $4) as one row of the
# retrieval log, of those still there. $1: the mailbox, $5: the time. The deletion is for
# good, or into the trash.
_COMMIT = """
WITH gone AS ({gone} WHERE mailbox_id = $1 AND id = ANY($2::bigint[]) {only} RETURNING id),
found AS (SELECT array(SELECT m.id FROM messages m JOIN unnest($3::bigint[]) AS u(id)
    ON m.id = u.id WHERE m.mailbox_id = $1) AS ids),
logged AS (INSERT INTO retrievals (mailbox_id, retrieved_at, seen, ids)
    SELECT $1, to_timestamp($5), $4, ids FROM found WHERE cardinality(ids) > 0
    RETURNING cardinality(ids) AS n)
SELECT (SELECT count(*) FROM gone) AS gone, coalesce((SELECT n FROM logged), 0) AS marked"""
_COMMIT_DELETE = _COMMIT.format(gone="DELETE FROM messages", only="")
_COMMIT_TRASH = _COMMIT.format(gone="UPDATE messages SET deleted_at = to_timestamp($5)",
                               only="AND deleted_at IS NULL")

# Read-ahead: opening a message in wire form also reads the following ones whole while
# they fit in AHEAD_OCTETS together (at most AHEAD_MESSAGES), in the same query: a client
# that retrieves its messages in order costs one query per batch of small messages.
AHEAD_OCTETS = 512 * 1024
AHEAD_MESSAGES = 64
_AHEAD = "SELECT id, substring(wire FROM 1 FOR $2) AS wire FROM messages WHERE id = ANY($1)"


_CHUNK_BODY = "SELECT substring(body FROM $2 FOR $3) FROM messages WHERE id = $1"
_CHUNK_WIRE = "SELECT substring(wire FROM $2 FOR $3) FROM messages WHERE id = $1"


# The log's rows up to $2 folded into the messages' rows, and deleted, in one statement.
_FOLD = """
WITH folded AS (DELETE FROM retrievals WHERE mailbox_id = $1 AND seq <= $2
    RETURNING seen, retrieved_at, ids),
each AS (SELECT u.id, bool_or(f.seen) AS seen, min(f.retrieved_at) AS retrieved_at
    FROM folded f CROSS JOIN LATERAL unnest(f.ids) AS u(id) GROUP BY u.id)
UPDATE messages m SET seen = m.seen OR each.seen,
    retrieved_at = coalesce(m.retrieved_at, each.retrieved_at)
FROM each WHERE m.mailbox_id = $1 AND m.id = each.id"""


def valid_location(location: str) -> bool:
    return bool(location) and "\0" not in location and len(location.encode()) <= _MAX_LOCATION


def new_uidl() -> Uidl:
    return Uidl(f"{int(time.time())}.{secrets.token_hex(8)}")


async def mailbox_id(conn: Connection, name: str, *, create: bool) -> int | None:
    """The id of mailbox `name`, made when missing if `create`."""
    found: int | None = await conn.fetchval("SELECT id FROM mailboxes WHERE name = $1", name)
    if found is None and create:
        found = await conn.fetchval(
            "INSERT INTO mailboxes (name) VALUES ($1) ON CONFLICT (name) DO NOTHING "
            "RETURNING id", name)
        if found is None:  # made by someone else just now
            found = await conn.fetchval("SELECT id FROM mailboxes WHERE name = $1", name)
    return found


class PostgresStore:
    """Maildrops in PostgreSQL. `mark_seen`: retrieved messages get ``seen`` at QUIT;
    `listing_cache`: how many rows of listings the process keeps (popbox.store.pg_listing)."""

    def __init__(
        self, db: Database, *, mark_seen: bool = True, chunk_size: int = CHUNK_SIZE,
        clock: Callable[[], float] = time.time, deleted: Literal["remove", "trash"] = "remove",
        listing_cache: int = LISTING_CACHE_ROWS,
    ) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self._listings = Listings(listing_cache)
        self.db = db
        self.clock = clock
        self.deleted = deleted
        self.mark_seen = mark_seen
        self.chunk_size = chunk_size
        self.locks = LockKeeper(db)
        self._batcher: Batcher | None = None

    async def open(self, location: str) -> PostgresDrop | Failure:
        if not valid_location(location):
            return Failure.PERMANENT
        try:
            box = await self.db.run(lambda conn: mailbox_id(conn, location, create=True))
        except DB_ERRORS as exc:
            log.warning("postgres: mailbox %r not opened: %s", location, exc)
            return _failure(exc)
        assert box is not None
        lease = await self.locks.acquire(box)
        if isinstance(lease, Failure):
            return lease
        try:
            columns, logged = await self.db.run(
                lambda conn: self._listings.read(conn, box))
        except DB_ERRORS as exc:
            await self.locks.release(lease)
            log.warning("postgres: mailbox %r not listed: %s", location, exc)
            return Failure.TEMPORARY
        except BaseException:
            await self.locks.release(lease)
            raise
        return PostgresDrop(self, box, lease, columns, logged)

    async def deliver(self, location: str, message: bytes) -> Failure | None:
        """Stored durably, or the failure. Concurrent deliveries are committed together
        (popbox.store.pg_batch); a message over ALONE_OCTETS goes alone."""
        if not valid_location(location):
            return Failure.PERMANENT
        item = Delivery.of(location, message, new_uidl())
        if len(message) > ALONE_OCTETS:
            result = await self._one(item)
        else:
            if self._batcher is None:
                self._batcher = Batcher(self.db, self._one, new_uidl)
            result = await self._batcher.deliver(item)
        return result if isinstance(result, Failure) else None

    async def store(
        self, location: str, message: bytes, *, uidl: Uidl | None = None, seen: bool = False,
        delivered_at: datetime | None = None,
    ) -> bool | Failure:
        """Insert one message; with a given `uidl` (import), False if the mailbox already
        has it. Without, a new UIDL is made (and made again in the unlikely clash)."""
        if not valid_location(location):
            return Failure.PERMANENT
        item = Delivery.of(location, message, uidl or new_uidl())
        return await self._one(item, given=uidl is not None, seen=seen,
                               delivered_at=delivered_at)

    async def _one(
        self, item: Delivery, *, given: bool = False, seen: bool = False,
        delivered_at: datetime | None = None,
    ) -> bool | Failure:
        """One message in its own statement; a mailbox's first delivery makes it first."""
        location, message = item.location, item.message

        async def insert(conn: Connection) -> bool:
            uidl = item.uidl
            for _ in range(3):
                row = await conn.fetchval(
                    _INSERT, location, uidl, item.size, len(message), item.body, item.wire,
                    seen, delivered_at, item.form)
                if row is not None:
                    return True
                if await mailbox_id(conn, location, create=False) is None:
                    await mailbox_id(conn, location, create=True)  # the first delivery
                elif given:
                    return False  # the mailbox has this message already
                else:
                    uidl = new_uidl()
            raise RuntimeError("could not make a unique UIDL")

        try:
            return await self.db.run(insert, retry=False)
        except DB_ERRORS as exc:
            log.warning("postgres: delivery to %r failed: %s", location, exc)
            return _failure(exc)

    async def purge(self, location: str, before: float) -> int | Failure:
        return await self._in_trash(
            location, "DELETE FROM messages WHERE mailbox_id = $1 "
            "AND deleted_at <= to_timestamp($2) RETURNING id", before)

    async def undelete(self, location: str, since: float | None) -> int | Failure:
        return await self._in_trash(
            location, "UPDATE messages SET deleted_at = NULL WHERE mailbox_id = $1 "
            "AND deleted_at >= to_timestamp($2) RETURNING id", since or 0.0)

    async def _in_trash(self, location: str, statement: str, when: float) -> int | Failure:
        """One statement over a mailbox's trashed rows, under its maildrop lock."""
        if not valid_location(location):
            return Failure.PERMANENT
        try:
            box = await self.db.run(lambda conn: mailbox_id(conn, location, create=False))
        except DB_ERRORS as exc:
            log.warning("postgres: mailbox %r: trash: %s", location, exc)
            return Failure.TEMPORARY
        if box is None:
            return 0
        lease = await self.locks.acquire(box)
        if isinstance(lease, Failure):
            return lease
        try:
            rows = await self.db.run(lambda conn: conn.fetch(statement, box, when))
        except DB_ERRORS as exc:
            log.warning("postgres: mailbox %r: trash: %s", location, exc)
            return _failure(exc)
        finally:
            await self.locks.release(lease)
        return len(rows)

    async def uidls(self, location: str) -> set[Uidl]:
        """The UIDLs of a mailbox now (for import). Raises DB_ERRORS."""
        rows = await self.db.run(lambda conn: conn.fetch(
            "SELECT m.uidl FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id "
            "WHERE b.name = $1", location))
        return {Uidl(r["uidl"]) for r in rows}

    async def record_login(self, location: str, login: LastLogin) -> Failure | None:
        """The mailbox row's last_login columns (schema migration 4)."""
        try:
            await self.db.run(lambda conn: conn.execute(
                "UPDATE mailboxes SET last_login = to_timestamp($2), last_login_ip = $3 "
                "WHERE name = $1", location, login.when, login.address))
        except DB_ERRORS as exc:
            log.warning("postgres: last login of %r not recorded: %s", location, exc)
            return Failure.TEMPORARY
        return None

    async def last_login(self, location: str) -> LastLogin | Failure | None:
        try:
            row = await self.db.run(lambda conn: conn.fetchrow(
                "SELECT extract(epoch FROM last_login)::float8 AS at, last_login_ip "
                "FROM mailboxes WHERE name = $1 AND last_login IS NOT NULL", location))
        except DB_ERRORS as exc:
            log.warning("postgres: last login of %r not read: %s", location, exc)
            return Failure.TEMPORARY
        return None if row is None else LastLogin(row["at"], row["last_login_ip"] or "")

    async def aclose(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        await self.locks.close()
        await self.db.close()


class _RowReader:
    """A message row's `body` (or `wire`) read a chunk per query (popbox.store.base.Reader);
    the first chunk was fetched by `open_message` (`open_wire`). In wire form (RETR) the
    query for the next chunk is sent while the session sends this one, so the database
    and the client are busy at once; two chunks at most are held. With a `decoder`
    (popbox.store.pg_body) the row's ``wire`` is read and the message as delivered is
    made from it chunk by chunk (a row whose ``body`` is derived); `size` is then the
    length of ``wire``."""

    __slots__ = ("_column", "_decoder", "_drop", "_first", "_id", "_next", "_offset",
                 "_size", "done")

    def __init__(self, drop: PostgresDrop, row: int, size: int, first: bytes, *,
                 column: Literal["body", "wire"] = "body",
                 decoder: pg_body.Decoder | None = None) -> None:
        self._drop = drop
        self._id = row
        self._size = size
        self._column: Literal["body", "wire"] = "wire" if decoder else column
        self._decoder = decoder
        self._first: bytes | None = first
        self._next: asyncio.Future[bytes | None] | None = None
        self._offset = 0
        self.done = False

    async def next(self) -> bytes:
        while True:
            chunk = await self._read()
            if self._decoder is None:
                return chunk
            data = self._decoder.feed(chunk)
            if self.done:
                return data + self._decoder.finish()
            if data:
                return data

    async def _read(self) -> bytes:
        chunk = self._first
        self._first = None
        if chunk is None:
            pending, self._next = self._next, None
            if pending is not None:
                chunk = await pending
            else:
                chunk = await self._drop._chunk(self._id, self._offset, self._column)
            if chunk is None:  # deleted while being read
                raise StoreError(Failure.GONE)
        self._offset += len(chunk)
        self.done = not chunk or self._offset >= self._size
        if not self.done and self._column == "wire":
            self._next = asyncio.ensure_future(
                self._drop._chunk(self._id, self._offset, self._column))
            self._next.add_done_callback(_retrieved)
            # One turn of the loop, so that the query is on its way before this chunk is
            # written to the client (a write that does not block gives no turn).
            await asyncio.sleep(0)
        return chunk

    def close(self) -> None:
        self.done = True
        if self._next is not None:
            self._next.cancel()
            self._next = None


def _retrieved(future: asyncio.Future[bytes | None]) -> None:
    """A read-ahead given up by `close` may have failed: its error was logged already."""
    if not future.cancelled():
        future.exception()


class PostgresDrop:
    """One session's locked view of a mailbox (popbox.store.base.Maildrop)."""

    def __init__(
        self, store: PostgresStore, box: int, lease: Lease,
        columns: Columns, logged: int | None = None,
    ) -> None:
        self._store = store
        self._box = box
        self._lease = lease
        self._messages = columns.snapshot
        self._rows = columns
        self._ahead: dict[int, bytes] = {}  # row id -> wire form, read with an earlier one
        self._state = "open"  # "committing", "done"
        # The retrieval log up to row `logged` folded into the rows, while the session
        # goes on; the commit and the release wait for it (it runs under this lease).
        self._fold: asyncio.Task[None] | None = None
        if logged is not None:
            self._fold = asyncio.ensure_future(self._folded(logged))

    async def _folded(self, upto: int) -> None:
        """The log's rows up to `upto` applied to the messages' rows. A failure leaves the
        log as it was (it is read with the rows until a later session folds it)."""
        try:
            await self._store.db.run(
                lambda conn: conn.execute(_FOLD, self._box, upto), retry=False)
        except DB_ERRORS as exc:
            log.warning("postgres: mailbox %d: retrieval log not folded: %s", self._box, exc)

    async def _settled(self) -> None:
        """The fold started at open, finished (it never raises DB errors)."""
        fold, self._fold = self._fold, None
        if fold is not None:
            await asyncio.shield(fold)

    @property
    def messages(self) -> Snapshot:
        return self._messages

    async def _chunk(
        self, row: int, offset: int, column: Literal["body", "wire"] = "body",
    ) -> bytes | None:
        size = self._store.chunk_size
        query = _CHUNK_WIRE if column == "wire" else _CHUNK_BODY
        try:
            chunk: bytes | None = await self._store.db.run(
                lambda conn: conn.fetchval(query, row, offset + 1, size))
        except DB_ERRORS as exc:
            log.warning("postgres: reading message %d failed: %s", row, exc)
            raise StoreError(Failure.TEMPORARY) from exc
        return chunk

    async def times(self) -> Sequence[Times]:
        ids = list(self._rows.ids)
        await self._settled()
        try:
            rows = await self._store.db.run(lambda conn: conn.fetch(
                "SELECT id, extract(epoch FROM delivered_at)::float8 AS delivered, "
                "extract(epoch FROM retrieved_at)::float8 AS retrieved FROM messages_state "
                "WHERE mailbox_id = $1 AND id = ANY($2::bigint[])", self._box, ids))
        except DB_ERRORS as exc:
            log.warning("postgres: mailbox %d: times not read: %s", self._box, exc)
            raise StoreError(Failure.TEMPORARY) from exc
        found = {r["id"]: Times(r["delivered"], r["retrieved"]) for r in rows}
        gone = Times(self._store.clock(), None)  # removed meanwhile: nothing to expire
        return [found.get(i, gone) for i in ids]

    async def open_message(self, index: Index) -> _RowReader | Gone:
        row, form = self._rows.ids[index], self._rows.forms[index]
        if form is not None:  # derived from the wire form (popbox.store.pg_body)
            size = self._rows.wire_sizes[index]
            first = self._ahead.pop(row, None)
            if first is None:
                first = await self._chunk(row, 0, "wire")
            if first is None or size is None:
                return GONE
            return _RowReader(self, row, size, first, decoder=pg_body.Decoder(form))
        first = await self._chunk(row, 0)
        if first is None:
            return GONE
        return _RowReader(self, row, self._rows.raw_sizes[index], first)

    async def open_wire(self, index: Index) -> _RowReader | Gone | None:
        row, size = self._rows.ids[index], self._rows.wire_sizes[index]
        if size is None:
            return None
        first = self._ahead.pop(row, None)
        if first is None:
            following = self._following(index)
            if following:
                first = await self._read_ahead(row, following)
            else:
                first = await self._chunk(row, 0, "wire")
        if first is None:
            return GONE
        return _RowReader(self, row, size, first, column="wire")

    def held_wire(self, index: Index) -> bytes | None:
        """The wire form of message `index` if the read-ahead holds all of it
        (store.base.HeldWire): RETR sends it at once, no query, no Reader."""
        row = self._rows.ids[index]
        data = self._ahead.get(row)
        if data is None or len(data) != self._rows.wire_sizes[index]:
            return None  # not held, or only its first chunk: open_wire takes that
        del self._ahead[row]
        return data

    def _following(self, index: Index) -> list[int]:
        """The ids of the messages after `index` that the read-ahead takes."""
        budget = AHEAD_OCTETS - min(self._rows.wire_sizes[index] or 0, self._store.chunk_size)
        end = index + 1 + AHEAD_MESSAGES
        ids: list[int] = []
        for row, size in zip(self._rows.ids[index + 1:end],
                             self._rows.wire_sizes[index + 1:end], strict=True):
            if size is None or size > budget:
                break
            ids.append(row)
            budget -= size
        return ids

    async def _read_ahead(self, row: int, following: list[int]) -> bytes | None:
        """The first chunk of `row`; the wire forms of `following` are kept for later."""
        ids = [row, *following]
        try:
            rows = await self._store.db.run(
                lambda conn: conn.fetch(_AHEAD, ids, self._store.chunk_size))
        except DB_ERRORS as exc:
            log.warning("postgres: reading message %d failed: %s", row, exc)
            raise StoreError(Failure.TEMPORARY) from exc
        found: dict[int, bytes] = {r["id"]: r["wire"] for r in rows if r["wire"] is not None}
        first = found.pop(row, None)
        self._ahead = found
        return first

    async def commit(self, delete: Set[Index], seen: Set[Index]) -> CommitReport | Failure:
        if self._state != "open":
            raise RuntimeError("maildrop already committed or released")
        count = len(self._messages)
        if any(not 0 <= i < count for i in (*delete, *seen)):
            raise IndexError("message index out of range")
        self._state = "committing"
        self._ahead = {}
        ids, was_seen = self._rows.ids, self._rows.seen
        doomed = [ids[i] for i in delete]
        flag: list[int] = []
        already = 0  # seen, and its retrieval recorded, in the snapshot: not logged again
        for i in set(seen) - set(delete):
            if self._store.mark_seen and was_seen[i]:
                already += 1
            else:
                flag.append(ids[i])
        try:
            report = await asyncio.shield(self._commit(doomed, flag))
        finally:
            self._state = "done"
        if isinstance(report, Failure) or not already:
            return report
        return dataclasses.replace(report, flagged=report.flagged + already)

    async def _commit(self, doomed: list[int], flag: list[int]) -> CommitReport | Failure:
        store = self._store
        try:
            await self._settled()
            if not doomed and not flag:  # nothing to write: no transaction
                return CommitReport(deleted=0, missing=0, flagged=0)
            if not store.locks.valid(self._lease):
                log.warning("postgres: mailbox %d: lock lost, nothing committed", self._box)
                return Failure.TEMPORARY

            statement = _COMMIT_TRASH if store.deleted == "trash" else _COMMIT_DELETE

            async def apply(conn: RawConnection) -> CommitReport:
                row = await conn.fetchrow(
                    statement, self._box, doomed, flag, store.mark_seen, store.clock())
                assert row is not None
                gone, marked = row["gone"], row["marked"]
                return CommitReport(
                    deleted=gone,
                    missing=len(doomed) - gone + len(flag) - marked,
                    flagged=marked if store.mark_seen else 0,
                )

            result = await store.locks.run_held(self._lease, apply)
            if isinstance(result, Failure):
                log.warning("postgres: mailbox %d: lock lost, nothing committed", self._box)
            return result
        except DB_ERRORS as exc:
            log.warning("postgres: mailbox %d: commit failed: %s", self._box, exc)
            return _failure(exc)
        finally:
            await store.locks.release(self._lease)

    async def release(self) -> None:
        if self._state == "open":
            self._state = "done"
            self._ahead = {}
            try:
                await self._settled()
            finally:
                await self._store.locks.release(self._lease)


def _failure(exc: BaseException) -> Failure:
    return Failure.FULL if disk_full(exc) else Failure.TEMPORARY


if TYPE_CHECKING:  # mypy proves the classes implement the contract

    def _conforms(
        store: PostgresStore, drop: PostgresDrop, reader: _RowReader
    ) -> tuple[MailStore, Maildrop, Reader, Dated, Trash, WireSource, HeldWire]:
        return store, drop, reader, drop, store, drop, drop
