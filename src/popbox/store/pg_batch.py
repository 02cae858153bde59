"""Group commit for the postgres store's deliveries (popbox.store.postgres).

A delivery's cost in PostgreSQL is mostly its commit: the WAL flush (an fdatasync of a
few milliseconds) that makes it durable. Deliveries that arrive together (from several
LMTP connections, or one message's several recipients) are therefore inserted together:
ONE multi-row INSERT over arrays (``unnest``), so one statement, one transaction, one
round trip and one WAL flush for the lot. Each delivery is answered only after that
statement returned, that is after its commit (with the server's ``synchronous_commit``):
a batch is stored whole or not at all, and nothing is reported stored before it is.

How a batch is formed: one batch is in flight at a time; deliveries that arrive meanwhile
wait and form the next one, which is sent as soon as the one in flight has committed. A
delivery that finds nothing in flight goes at once: nothing ever waits for deliveries
that might come (measured: waiting up to 2 or 4 ms after a commit for the connections
just answered gave larger batches but about 10% fewer deliveries a second with 4 LMTP
clients, three runs each, taking turns). A batch holds at most `max_rows` messages
and, beyond its first, `max_octets`; a message larger than ALONE_OCTETS is not batched
(the store sends it in its own statement, beside the batches).

Outcomes, per delivery: a row came back: stored. No row for it (its mailbox does not
exist yet, or its new UIDL was taken): it is delivered alone by the store's one-message
path, which makes the mailbox. The statement failed with an error of the server (a
constraint, a trigger, out of disk space) and the batch had more than one message: the
transaction stored nothing, so each is delivered alone and gets its own outcome. The
connection was lost or timed out: whether the commit happened is unknown, so every
member is answered "not stored" (the MTA retries; a message may then be stored twice,
never lost), exactly as a lone delivery would be.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg

from popbox.pg.pool import CONNECTION_LOST, DB_ERRORS, Connection, Database
from popbox.proto.types import Uidl
from popbox.proto.wire import to_wire, wire_size
from popbox.store import pg_body
from popbox.store.base import Failure

log = logging.getLogger("popbox")

# The messages of a batch in order, the mailbox of each found by name; rows come back
# for the messages stored (by UIDL, new and distinct within the batch).
_INSERT_MANY = """
INSERT INTO messages (mailbox_id, uidl, size, raw_size, body, wire, body_from_wire)
SELECT b.id, d.uidl, d.size, d.raw_size, d.body, d.wire, d.form
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bytea[], $6::bytea[],
            $7::smallint[])
    WITH ORDINALITY AS d (name, uidl, size, raw_size, body, wire, form, n)
JOIN mailboxes b ON b.name = d.name
ORDER BY d.n
ON CONFLICT ON CONSTRAINT messages_uidl_unique DO NOTHING
RETURNING uidl"""

MAX_ROWS = 64
MAX_OCTETS = 8 * 1024 * 1024
ALONE_OCTETS = 1024 * 1024


@dataclass(slots=True, eq=False)
class Delivery:
    """One message on its way into a mailbox: `size` its wire size, `wire` its wire
    form, `form` how it follows from that (popbox.store.pg_body; None: stored too)."""

    location: str
    message: bytes
    size: int
    wire: bytes
    form: int | None
    uidl: Uidl
    done: asyncio.Future[bool | Failure] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())

    @classmethod
    def of(cls, location: str, message: bytes, uidl: Uidl) -> Delivery:
        wire = to_wire(message)
        return cls(location, message, wire_size(message), wire, pg_body.form(message, wire),
                   uidl)

    @property
    def body(self) -> bytes | None:
        """What the row's ``body`` holds: nothing when it is derived from ``wire``."""
        return None if self.form is not None else self.message


# The store's one-message path: (delivery) -> stored, or the failure.
Single = Callable[[Delivery], Awaitable[bool | Failure]]


class Batcher:
    """Collects concurrent deliveries into multi-row INSERTs, one in flight at a time."""

    def __init__(
        self, db: Database, single: Single, new_uidl: Callable[[], Uidl], *,
        max_rows: int = MAX_ROWS, max_octets: int = MAX_OCTETS,
    ) -> None:
        self._db = db
        self._single = single
        self._new_uidl = new_uidl
        self.max_rows = max_rows
        self.max_octets = max_octets
        self._queue: list[Delivery] = []
        self._task: asyncio.Task[None] | None = None

    async def deliver(self, item: Delivery) -> bool | Failure:
        self._queue.append(item)
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        return await item.done

    async def close(self) -> None:
        """Waits for the batch in flight and the queued ones."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        try:
            while True:
                self._queue = [d for d in self._queue if not d.done.done()]  # cancelled
                if not self._queue:
                    return
                await self._insert(self._take())
        finally:
            self._task = None
            for item in self._queue:  # only if this task itself was cancelled
                if not item.done.done():
                    item.done.set_result(Failure.TEMPORARY)
            self._queue = []

    def _take(self) -> list[Delivery]:
        batch: list[Delivery] = []
        octets = 0
        uidls: set[str] = set()
        for item in self._queue:
            if batch and (len(batch) >= self.max_rows
                          or octets + len(item.message) > self.max_octets):
                break
            while item.uidl in uidls:  # the RETURNING rows are matched by UIDL
                item.uidl = self._new_uidl()
            uidls.add(item.uidl)
            batch.append(item)
            octets += len(item.message)
        del self._queue[:len(batch)]
        return batch

    async def _insert(self, batch: list[Delivery]) -> None:
        if len(batch) == 1:
            await self._alone(batch)
            return

        async def insert(conn: Connection) -> set[str]:
            rows = await conn.fetch(
                _INSERT_MANY, [d.location for d in batch], [d.uidl for d in batch],
                [d.size for d in batch], [len(d.message) for d in batch],
                [d.body for d in batch], [d.wire for d in batch], [d.form for d in batch])
            return {row["uidl"] for row in rows}

        try:
            stored = await self._db.run(insert, retry=False)
        except CONNECTION_LOST as exc:  # committed or not: unknown (the server may be gone)
            log.warning("postgres: a batch of %d deliveries failed: %s", len(batch), exc)
            for item in batch:
                _answer(item, Failure.TEMPORARY)
            return
        except asyncpg.PostgresError as exc:
            # the server refused the statement: its transaction stored nothing
            log.info("postgres: a batch of %d deliveries failed (%s), delivering each alone",
                     len(batch), exc)
            await self._alone(batch)
            return
        except DB_ERRORS as exc:
            log.warning("postgres: a batch of %d deliveries failed: %s", len(batch), exc)
            for item in batch:
                _answer(item, Failure.TEMPORARY)
            return
        except BaseException:
            for item in batch:
                _answer(item, Failure.TEMPORARY)
            raise
        rest = []
        for item in batch:
            if item.uidl in stored:
                _answer(item, True)
            else:
                rest.append(item)
        await self._alone(rest)

    async def _alone(self, items: list[Delivery]) -> None:
        """Each by the one-message path, concurrently (each its own transaction)."""
        results: list[bool | Failure | BaseException]
        if len(items) == 1:  # (the common case: no task for it)
            try:
                results = [await self._single(items[0])]
            except Exception as exc:
                results = [exc]
        else:
            results = await asyncio.gather(*(self._single(item) for item in items),
                                           return_exceptions=True)
        for item, result in zip(items, results, strict=True):
            if isinstance(result, BaseException):
                log.error("postgres: delivery to %r failed", item.location, exc_info=result)
                result = Failure.TEMPORARY
            _answer(item, result)


def _answer(item: Delivery, result: bool | Failure) -> None:
    if not item.done.done():
        item.done.set_result(result)
