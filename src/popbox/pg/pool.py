"""One PostgreSQL database, shared by the postgres store and the postgres passdb/userdb.

The backends are built before the event loop runs, so the asyncpg pool is opened lazily,
on first use, inside the running loop (one pool per process). Opening it checks the
schema version (popbox.pg.schema): a database that `popbox db upgrade` has not
brought to this popbox's version is refused (logged, and every operation fails as
temporary), one that a newer popbox upgraded is used with a warning.

Failures: every error of the database or of the connection to it is one of `DB_ERRORS`;
the callers turn them into `Failure.TEMPORARY` / `Verdict.TEMPORARY`, except that a
server out of disk space (`disk_full`: SQLSTATE 53100, what PostgreSQL reports for
ENOSPC under its data directory or a tablespace) makes a write `Failure.FULL`. `run()` retries an
idempotent operation once on a fresh connection when its connection turned out to be
dead (after a database restart every pooled connection is), and never retries writes.
A connection goes back to the pool without a reset query (`_keep_session`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from popbox.pg import schema

log = logging.getLogger("popbox")

T = TypeVar("T")

class SchemaError(Exception):
    """The database's schema is older than this popbox (run `popbox db upgrade`)."""


DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
    SchemaError,
)
CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.InterfaceError,
    ConnectionError,
)



def disk_full(exc: BaseException) -> bool:
    """The server had no disk space left for the statement (SQLSTATE 53100 disk_full).
    Out of memory (53200), too many connections (53300) and the like are not: they are
    other resources, temporary failures like any other."""
    return isinstance(exc, asyncpg.exceptions.DiskFullError)


if TYPE_CHECKING:  # asyncpg's classes are generic in its stubs only
    RawConnection: TypeAlias = asyncpg.Connection[Any]
    Connection: TypeAlias = RawConnection | PoolConnectionProxy[Any]
    Pool: TypeAlias = asyncpg.Pool[Any]
else:
    RawConnection = Connection = asyncpg.Connection
    Pool = asyncpg.Pool


class Database:
    """A lazily opened connection pool. `dsn`: a libpq connection URI."""

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        command_timeout: float = 30.0,
        check_schema: bool = True,
    ) -> None:
        self._dsn = dsn
        self._min = min_size
        self._max = max_size
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._check_schema = check_schema
        self._pool: Pool | None = None
        self._opening = asyncio.Lock()

    def __repr__(self) -> str:  # the DSN may carry a password
        return "Database(<dsn redacted>)"

    async def connect(
        self, name: str = "popbox", settings: Mapping[str, str] | None = None
    ) -> RawConnection:
        """A dedicated connection, outside the pool (the lock keeper's, migrations);
        `name` is its application_name in pg_stat_activity, `settings` more GUCs."""
        return await asyncpg.connect(
            self._dsn, timeout=self._connect_timeout, command_timeout=self._command_timeout,
            server_settings={"application_name": name, **(settings or {})},
        )

    async def pool(self) -> Pool:
        """The pool, opened (and the schema checked) on first use. Raises DB_ERRORS."""
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None:
                pool = await asyncpg.create_pool(
                    self._dsn, min_size=self._min, max_size=self._max,
                    timeout=self._connect_timeout, command_timeout=self._command_timeout,
                    server_settings={"application_name": "popbox"}, reset=_keep_session,
                )
                try:
                    if self._check_schema:
                        async with pool.acquire() as conn:
                            await _check_version(conn)
                except BaseException:
                    await pool.close()
                    raise
                self._pool = pool
            return self._pool

    async def run(self, op: Callable[[Connection], Awaitable[T]], *, retry: bool = True) -> T:
        """`op` on a pooled connection; once more on another if the first one was dead
        (only when `retry`: for reads and other idempotent work). Raises DB_ERRORS."""
        pool = await self.pool()
        for attempt in range(2):
            try:
                async with pool.acquire() as conn:
                    return await op(conn)
            except CONNECTION_LOST:
                if not retry or attempt:
                    raise
                log.info("postgres: connection lost, retrying once")
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


async def _keep_session(conn: RawConnection) -> None:
    """The pool's reset on release: nothing. popbox's pooled connections never hold
    session state (no SET, LISTEN, cursors or session advisory locks: the maildrop locks
    live on the lock keeper's own connection), so asyncpg's default reset query, one more
    round trip for every query popbox makes, is left out; a transaction left open is
    still rolled back by asyncpg before this is called."""


async def _check_version(conn: Connection) -> None:
    version = await schema.current_version(conn)
    if version is None or version < schema.LATEST:
        message = (
            f"database schema version {version or 0}, this popbox needs "
            f"{schema.LATEST}: run `popbox db upgrade`"
        )
        log.error("postgres: %s", message)
        raise SchemaError(message)
    if version > schema.LATEST:
        log.warning("postgres: database schema version %d is newer than this popbox's %d",
                    version, schema.LATEST)
