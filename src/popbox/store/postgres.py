"""PostgresStore: maildrops in PostgreSQL, shared by any number of popbox frontends.

Location = a mailbox name (the userdb's mail location for this backend, by default the
user name). The tables are popbox.pg.schema's. The pieces:

* open: find (or make) the mailbox row, take the maildrop lock (popbox.store.pg_lock: an
  advisory lock on this process's lock connection; IN_USE at once when held anywhere),
  then take the snapshot with ONE query over the listing index: (id, UIDL, wire size,
  stored size) in delivery order. Sizes and UIDLs were fixed at delivery, so a login
  never reads a message body.
* read: ``substring(body from N for M)``, one pooled query per chunk (256 KiB): a 50 MB
  message is never in memory at once, and a slow client holds no connection between
  chunks. A row gone before the first chunk is `Gone`; `open_message` fetches that
  first chunk, so the answer is known before +OK.
* commit (after QUIT only): ONE transaction proves the lease still holds (the lock
  connection may have died: then nothing is changed and the answer is TEMPORARY),
  deletes the session's deleted messages and sets ``seen`` (with `mark_seen`) and the
  first ``retrieved_at`` (the store's `clock`) on the retrieved ones; rows already gone
  count as missing. Then the lock is released. The commit is shielded, so
  a cancelled session still finishes it before anyone else can open the maildrop.
  Messages the snapshot found seen get no UPDATE; a session with nothing else to write
  (it retrieved only seen messages and deleted none) runs no transaction at all.
* soft delete (`deleted="trash"`): the commit sets ``deleted_at`` instead of deleting
  the rows; `purge` deletes the rows trashed before a time, `undelete` clears it, each
  in one statement under the maildrop lock.
* deliver: ONE insert (autocommit): the message is stored whole or not at all, with a new
  UIDL (``<unix time>.<16 hex digits>``, unique per mailbox by constraint) and its wire
  size counted by popbox.proto.wire. Never retried: an error means "not stored".

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

from popbox.pg.pool import DB_ERRORS, Connection, Database, disk_full
from popbox.proto.types import Index, Uidl
from popbox.proto.wire import wire_size
from popbox.store.base import (
    GONE,
    CommitReport,
    Dated,
    Failure,
    Gone,
    Maildrop,
    MailStore,
    Reader,
    Snapshot,
    StoreError,
    Times,
    Trash,
)
from popbox.store.last_login import LastLogin
from popbox.store.pg_lock import Lease, LockKeeper, lease_held

log = logging.getLogger("popbox")

CHUNK_SIZE = 256 * 1024
_MAX_LOCATION = 1024

_INSERT = """
INSERT INTO messages (mailbox_id, uidl, size, raw_size, body, seen, delivered_at)
VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, now()))
ON CONFLICT ON CONSTRAINT messages_uidl_unique DO NOTHING
RETURNING id"""


# The commit's deletion: for good, or into the trash ($3: the time).
_DELETE = """
DELETE FROM messages WHERE mailbox_id = $1 AND id = ANY($2::bigint[]) RETURNING id"""
_TRASH = """
UPDATE messages SET deleted_at = to_timestamp($3) WHERE mailbox_id = $1
AND id = ANY($2::bigint[]) AND deleted_at IS NULL RETURNING id"""


@dataclasses.dataclass(frozen=True, slots=True)
class _Row:
    id: int
    raw_size: int
    seen: bool  # as the snapshot found it


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
    """Maildrops in PostgreSQL. `mark_seen`: retrieved messages get ``seen`` at QUIT."""

    def __init__(
        self, db: Database, *, mark_seen: bool = True, chunk_size: int = CHUNK_SIZE,
        clock: Callable[[], float] = time.time, deleted: Literal["remove", "trash"] = "remove",
    ) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.db = db
        self.clock = clock
        self.deleted = deleted
        self.mark_seen = mark_seen
        self.chunk_size = chunk_size
        self.locks = LockKeeper(db)

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
            rows = await self.db.run(lambda conn: conn.fetch(
                "SELECT id, uidl, size, raw_size, seen AND retrieved_at IS NOT NULL AS seen "
                "FROM messages WHERE mailbox_id = $1 AND deleted_at IS NULL ORDER BY id", box))
        except DB_ERRORS as exc:
            await self.locks.release(lease)
            log.warning("postgres: mailbox %r not listed: %s", location, exc)
            return Failure.TEMPORARY
        except BaseException:
            await self.locks.release(lease)
            raise
        infos = Snapshot([Uidl(r["uidl"]) for r in rows], [r["size"] for r in rows])
        entries = tuple(_Row(r["id"], r["raw_size"], r["seen"]) for r in rows)
        return PostgresDrop(self, box, lease, infos, entries)

    async def deliver(self, location: str, message: bytes) -> Failure | None:
        result = await self.store(location, message)
        return result if isinstance(result, Failure) else None

    async def store(
        self, location: str, message: bytes, *, uidl: Uidl | None = None, seen: bool = False,
        delivered_at: datetime | None = None,
    ) -> bool | Failure:
        """Insert one message; with a given `uidl` (import), False if the mailbox already
        has it. Without, a new UIDL is made (and made again in the unlikely clash)."""
        if not valid_location(location):
            return Failure.PERMANENT
        size = wire_size(message)

        async def insert(conn: Connection) -> bool:
            box = await mailbox_id(conn, location, create=True)
            for _ in range(3):
                row = await conn.fetchval(
                    _INSERT, box, uidl or new_uidl(), size, len(message), message, seen,
                    delivered_at)
                if row is not None or uidl is not None:
                    return row is not None
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
        await self.locks.close()
        await self.db.close()


class _RowReader:
    """A message row read a chunk per query (popbox.store.base.Reader); the first chunk
    was fetched by `open_message`."""

    __slots__ = ("_drop", "_entry", "_first", "_offset", "done")

    def __init__(self, drop: PostgresDrop, entry: _Row, first: bytes) -> None:
        self._drop = drop
        self._entry = entry
        self._first: bytes | None = first
        self._offset = 0
        self.done = False

    async def next(self) -> bytes:
        chunk = self._first
        self._first = None
        if chunk is None:
            chunk = await self._drop._chunk(self._entry.id, self._offset)
            if chunk is None:  # deleted while being read
                raise StoreError(Failure.GONE)
        self._offset += len(chunk)
        self.done = not chunk or self._offset >= self._entry.raw_size
        return chunk

    def close(self) -> None:
        self.done = True


class PostgresDrop:
    """One session's locked view of a mailbox (popbox.store.base.Maildrop)."""

    def __init__(
        self, store: PostgresStore, box: int, lease: Lease,
        infos: Snapshot, entries: tuple[_Row, ...],
    ) -> None:
        self._store = store
        self._box = box
        self._lease = lease
        self._messages = infos
        self._entries = entries
        self._state = "open"  # "committing", "done"

    @property
    def messages(self) -> Snapshot:
        return self._messages

    async def _chunk(self, row: int, offset: int) -> bytes | None:
        size = self._store.chunk_size
        try:
            chunk: bytes | None = await self._store.db.run(lambda conn: conn.fetchval(
                "SELECT substring(body FROM $2 FOR $3) FROM messages WHERE id = $1",
                row, offset + 1, size))
        except DB_ERRORS as exc:
            log.warning("postgres: reading message %d failed: %s", row, exc)
            raise StoreError(Failure.TEMPORARY) from exc
        return chunk

    async def times(self) -> Sequence[Times]:
        ids = [entry.id for entry in self._entries]
        try:
            rows = await self._store.db.run(lambda conn: conn.fetch(
                "SELECT id, extract(epoch FROM delivered_at)::float8 AS delivered, "
                "extract(epoch FROM retrieved_at)::float8 AS retrieved FROM messages "
                "WHERE mailbox_id = $1 AND id = ANY($2::bigint[])", self._box, ids))
        except DB_ERRORS as exc:
            log.warning("postgres: mailbox %d: times not read: %s", self._box, exc)
            raise StoreError(Failure.TEMPORARY) from exc
        found = {r["id"]: Times(r["delivered"], r["retrieved"]) for r in rows}
        gone = Times(self._store.clock(), None)  # removed meanwhile: nothing to expire
        return [found.get(i, gone) for i in ids]

    async def open_message(self, index: Index) -> _RowReader | Gone:
        entry = self._entries[index]
        first = await self._chunk(entry.id, 0)
        return GONE if first is None else _RowReader(self, entry, first)

    async def commit(self, delete: Set[Index], seen: Set[Index]) -> CommitReport | Failure:
        if self._state != "open":
            raise RuntimeError("maildrop already committed or released")
        count = len(self._entries)
        if any(not 0 <= i < count for i in (*delete, *seen)):
            raise IndexError("message index out of range")
        self._state = "committing"
        doomed = [self._entries[i].id for i in delete]
        flag: list[int] = []
        already = 0  # seen, and its retrieval recorded, in the snapshot: no UPDATE
        for i in set(seen) - set(delete):
            if self._store.mark_seen and self._entries[i].seen:
                already += 1
            else:
                flag.append(self._entries[i].id)
        try:
            if not doomed and not flag:  # nothing to write: no transaction
                await asyncio.shield(self._store.locks.release(self._lease))
                return CommitReport(deleted=0, missing=0, flagged=already)
            report = await asyncio.shield(self._commit(doomed, flag))
        finally:
            self._state = "done"
        if isinstance(report, Failure) or not already:
            return report
        return dataclasses.replace(report, flagged=report.flagged + already)

    async def _commit(self, doomed: list[int], flag: list[int]) -> CommitReport | Failure:
        store = self._store
        try:
            if not store.locks.valid(self._lease):
                log.warning("postgres: mailbox %d: lock lost, nothing committed", self._box)
                return Failure.TEMPORARY

            async def apply(conn: Connection) -> CommitReport | Failure:
                async with conn.transaction():
                    if not await lease_held(conn, self._lease):
                        return Failure.TEMPORARY
                    if store.deleted == "trash":
                        gone = await conn.fetch(_TRASH, self._box, doomed, store.clock())
                    else:
                        gone = await conn.fetch(_DELETE, self._box, doomed)
                    marked = await conn.fetch(
                        "UPDATE messages SET seen = seen OR $3, "
                        "retrieved_at = coalesce(retrieved_at, to_timestamp($4)) "
                        "WHERE mailbox_id = $1 AND id = ANY($2::bigint[]) RETURNING id",
                        self._box, flag, store.mark_seen, store.clock())
                return CommitReport(
                    deleted=len(gone),
                    missing=len(doomed) - len(gone) + len(flag) - len(marked),
                    flagged=len(marked) if store.mark_seen else 0,
                )

            result = await store.db.run(apply)
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
            await self._store.locks.release(self._lease)


def _failure(exc: BaseException) -> Failure:
    return Failure.FULL if disk_full(exc) else Failure.TEMPORARY


if TYPE_CHECKING:  # mypy proves the classes implement the contract

    def _conforms(
        store: PostgresStore, drop: PostgresDrop, reader: _RowReader
    ) -> tuple[MailStore, Maildrop, Reader, Dated, Trash]:
        return store, drop, reader, drop, store
