"""The cluster-wide maildrop lock of the postgres store: PostgreSQL advisory locks.

A maildrop's lock is the session-level advisory lock ``(LOCK_NAMESPACE, mailbox id)``
(the two-key form, so popbox's keys cannot meet a one-key lock of another application).
Every popbox process keeps ONE dedicated lock connection and takes the locks of all its
sessions on it with ``pg_try_advisory_lock``, which answers at once: a second session
anywhere in the cluster gets Failure.IN_USE without waiting. The locks die with the
connection, so a crashed or killed process (or host) can never leave a stale lock: the
database ends the backend and drops its locks when the connection goes (at once when
the process dies; within about a minute, by TCP keepalive, when its whole host does).

Advisory locks are re-entrant per connection, so the database cannot tell two sessions
of one process apart: the keeper tracks the keys its sessions hold and answers IN_USE
itself for a key held here, without asking the database. All use of the connection is
serialized by an asyncio.Lock (one query at a time on a connection).

A `Lease` is one session's hold on one key. It is good while the connection it was
taken on lives: when the lock connection breaks, every lease taken on it is void (the
database has dropped those locks, another frontend may already have the maildrop), so
its session must not commit (Failure.TEMPORARY); the next `acquire` connects anew. The
commit runs on the lock connection itself (`run_held`): the backend that holds the lock
runs the statement, so a connection that died a moment ago makes the commit fail, and
nothing is changed. (A look at pg_locks from another connection would prove it too,
but its cost grows with every lock held in the cluster: 1-2 ms at 1,000, 8-12 ms at
5,000 locks, `python -m bench.pg_probes locks`.) Commits of one process wait for each
other on the connection.

Cancellation: acquiring and unlocking are shielded; a lock taken for a session that was
cancelled meanwhile is given back at once. Whenever the keeper cannot be sure what the
database holds for it (an unlock that failed), it closes the connection, which releases
everything: a spurious IN_USE is never left behind, at the price of the other sessions
of this process having to log in again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from popbox.pg.pool import (
    DB_ERRORS,
    Connection,
    Database,
    RawConnection,
)
from popbox.pg.schema import LOCK_NAMESPACE
from popbox.store.base import Failure

log = logging.getLogger("popbox")

T = TypeVar("T")

# A frontend host that dies without closing its connections (power loss) is found out
# by the server's TCP keepalive: asked for here, within about a minute, instead of the
# system's default of two hours; its locks go with the connection.
_KEEPALIVE = {
    "tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10", "tcp_keepalives_count": "3",
}


@dataclass(eq=False, slots=True)
class Lease:
    """One session's hold on the lock `key`, taken on connection `generation`."""

    key: int
    generation: int
    backend_pid: int


class LockKeeper:
    """The per-process lock connection and the keys held on it."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn: RawConnection | None = None
        self._pid = 0
        self._generation = 0
        self._held: dict[int, Lease] = {}
        self._mutex = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()

    def valid(self, lease: Lease) -> bool:
        """The lease is held here and its connection is still up."""
        return (
            self._held.get(lease.key) is lease
            and lease.generation == self._generation
            and self._conn is not None
            and not self._conn.is_closed()
        )

    def _busy(self, key: int) -> bool:
        lease = self._held.get(key)
        return lease is not None and self.valid(lease)

    async def acquire(self, key: int) -> Lease | Failure:
        """Take the lock `key`: a Lease, Failure.IN_USE at once, or Failure.TEMPORARY."""
        if self._busy(key):
            return Failure.IN_USE
        task = asyncio.ensure_future(self._acquire(key))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._give_back)
            raise

    def _give_back(self, task: asyncio.Task[Lease | Failure]) -> None:
        if not task.cancelled() and task.exception() is None:
            lease = task.result()
            if isinstance(lease, Lease):
                self._spawn(self.release(lease))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _acquire(self, key: int) -> Lease | Failure:
        async with self._mutex:
            if self._busy(key):
                return Failure.IN_USE
            for attempt in range(2):
                try:
                    conn = await self._connection()
                    got = await conn.fetchval(
                        "SELECT pg_try_advisory_lock($1, $2)", LOCK_NAMESPACE, key
                    )
                    break
                except DB_ERRORS as exc:
                    # Whatever it held is gone with it. A connection the server has just
                    # ended may fail as "lost" or as "busy", depending on what asyncpg
                    # has seen of it yet: either way, one more try on a new connection.
                    self._drop()
                    if attempt:
                        log.warning("postgres: maildrop lock unavailable: %s", _describe(exc))
                        return Failure.TEMPORARY
                    log.info("postgres: lock connection unusable (%s), connecting again",
                             _describe(exc))
            if not got:
                return Failure.IN_USE
            lease = Lease(key, self._generation, self._pid)
            self._held[key] = lease
            return lease

    async def _connection(self) -> RawConnection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._drop()
        conn = await self._db.connect("popbox-locks", _KEEPALIVE)
        conn.add_termination_listener(self._lost)
        self._conn, self._pid = conn, conn.get_server_pid()
        return conn

    def _lost(self, conn: Connection) -> None:  # a termination listener
        if conn is self._conn and self._held:
            log.warning("postgres: lock connection lost; %d sessions will not be able to "
                        "commit", len(self._held))

    def _drop(self) -> None:
        """Forget the connection and everything held on it (closing it frees the locks)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()
            self._generation += 1
        self._held.clear()

    async def run_held(
        self, lease: Lease, op: Callable[[RawConnection], Awaitable[T]]
    ) -> T | Failure:
        """`op` on the lock connection while it holds `lease`: the proof that the lock is
        still held, whatever the size of the cluster's lock table (a connection that
        runs a statement is alive, and its advisory locks with it). Failure.TEMPORARY if
        the lease is void. DB_ERRORS from `op` are raised; when the connection is gone
        with them, so is everything it held."""
        async with self._mutex:
            conn = self._conn
            if conn is None or not self.valid(lease):
                return Failure.TEMPORARY
            try:
                return await op(conn)
            except DB_ERRORS:
                if conn.is_closed():
                    self._drop()
                raise

    async def release(self, lease: Lease) -> None:
        """Give the lock up (idempotent). A lease of a dead connection has nothing left."""
        if self._held.get(lease.key) is not lease:
            return
        del self._held[lease.key]
        if lease.generation != self._generation or self._conn is None:
            return
        await asyncio.shield(self._spawn(self._unlock(lease)))

    async def _unlock(self, lease: Lease) -> None:
        async with self._mutex:
            conn = self._conn
            if lease.generation != self._generation or conn is None or conn.is_closed():
                return
            try:
                done = await conn.fetchval(
                    "SELECT pg_advisory_unlock($1, $2)", LOCK_NAMESPACE, lease.key
                )
            except DB_ERRORS as exc:
                log.warning("postgres: unlock failed: %s", _describe(exc))
                done = False
            if not done:  # not sure what is held any more: start over
                self._drop()

    async def close(self) -> None:
        """Close the lock connection (releasing every lock); for tests and shutdown."""
        for task in list(self._background):
            await task
        self._drop()


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
