"""PostgreSQL for the "popbox (PostgreSQL)" column: a throwaway database and its CPU time.

* The server: ``$POPBOX_BENCH_PG_DSN`` (a database in which the harness may ``CREATE
  DATABASE``), else ``postgresql://postgres@127.0.0.1:5432/test``.
* `BenchDatabase` makes ``popbox_bench_<random>`` on it and drops it at the end (its
  connections first), also at exit should the harness die of an exception.
* Its schema comes from ``popbox db upgrade``, its mail from ``popbox import``
  (bench.servers.PopboxPg does both). The users are copied here, straight from the
  corpus's passwd-file: name and ``{SCHEME}hash`` as they are, as a Dovecot SQL passdb
  would hold them (``popbox import`` copies mail, not users).
* CPU: the user+system time of the PostgreSQL backends that serve popbox, read from
  /proc (so the server must run on this machine). The backends are found in
  ``pg_stat_activity``: client backends of the bench database whose
  ``application_name`` starts with "popbox" (the pool's "popbox", the lock
  connection's "popbox-locks"). `cpu_snapshot` before a run, `cpu_since` after: the
  growth of every backend alive at the end (one that was born during the run counts
  from zero). A backend that exits during a run loses its share; popbox's connections
  live as long as the server, or until 5 minutes idle (asyncpg's pool), when they have
  nothing left to count.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import secrets
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench import procstat
from popbox.auth.names import normalize_username

T = TypeVar("T")
DSN_ENV = "POPBOX_BENCH_PG_DSN"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
if TYPE_CHECKING:  # asyncpg's classes are generic in its stubs only
    _Conn: TypeAlias = asyncpg.Connection[asyncpg.Record]
else:
    _Conn = asyncpg.Connection


class PgError(RuntimeError):
    pass


def server_dsn() -> str:
    return os.environ.get(DSN_ENV) or DEFAULT_DSN


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


def _run(op: Callable[[], Awaitable[T]], timeout: float) -> T:
    """`op()` on a private event loop, bounded; database trouble is PgError."""

    async def bounded() -> T:
        return await asyncio.wait_for(op(), timeout)

    try:
        return asyncio.run(bounded())
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise PgError(f"PostgreSQL: {type(exc).__name__}: {exc}") from None


async def _connect(dsn: str, command_timeout: float = 60) -> _Conn:
    return await asyncpg.connect(dsn, timeout=10, command_timeout=command_timeout,
                                 server_settings={"application_name": "popbox-bench"})


class BenchDatabase:
    """``popbox_bench_<random>`` on the server of `server` (a DSN)."""

    def __init__(self, server: str | None = None) -> None:
        self.server = server or server_dsn()
        self.name = "popbox_bench_" + secrets.token_hex(6)
        self.dsn = with_database(self.server, self.name)
        self.created = False
        self.version = "unknown"

    def __repr__(self) -> str:  # the DSN may hold a password
        return f"BenchDatabase({self.name})"

    async def _on_server(self, *statements: str) -> None:
        conn = await _connect(self.server)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    def create(self) -> None:
        async def create() -> str:
            conn = await _connect(self.server)
            try:
                await conn.execute(f"CREATE DATABASE {self.name}")
                version: str = await conn.fetchval("SHOW server_version")
                return version
            finally:
                await conn.close()

        self.version = _run(create, 60)
        self.created = True
        atexit.register(self.drop)

    def drop(self) -> None:
        """Drop the database and end its connections (idempotent; never raises)."""
        if not self.created:
            return
        atexit.unregister(self.drop)
        try:
            _run(lambda: self._on_server(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "  # noqa: S608
                f"WHERE datname = '{self.name}' AND pid <> pg_backend_pid()",
                f"DROP DATABASE IF EXISTS {self.name}"), 120)
            self.created = False
        except PgError as exc:
            print(f"bench: could not drop database {self.name}: {exc}", file=sys.stderr,
                  flush=True)

    def execute(self, *statements: str, timeout: float = 600) -> None:
        """Statements on the bench database, each in its own transaction (VACUUM...)."""

        async def run() -> None:
            conn = await _connect(self.dsn, command_timeout=timeout)
            try:
                for statement in statements:
                    await conn.execute(statement)
            finally:
                await conn.close()

        _run(run, timeout + 30)

    def try_execute(self, statement: str) -> str | None:
        """As `execute`, for statements that need rights the DSN may not give (CHECKPOINT):
        the error text instead of an exception."""
        try:
            self.execute(statement)
        except PgError as exc:
            return str(exc)
        return None

    def set_database_option(self, setting: str | None) -> None:
        """``ALTER DATABASE ... SET setting`` (None: RESET ALL); new connections get it."""
        clause = f"SET {setting}" if setting else "RESET ALL"
        _run(lambda: self._on_server(f"ALTER DATABASE {self.name} {clause}"), 60)

    def load_users(self, users_file: Path) -> int:
        """Copy the passwd-file's users (name, password as stored) into ``users``."""
        rows: list[tuple[str, str]] = []
        for line in users_file.read_text().splitlines():
            if line and not line.startswith("#"):
                name, password = line.split(":")[:2]
                rows.append((normalize_username(name), password))

        async def load() -> None:
            conn = await _connect(self.dsn)
            try:
                await conn.copy_records_to_table("users", records=rows,
                                                 columns=["name", "password"])
            finally:
                await conn.close()

        _run(load, 120)
        return len(rows)

    def count(self, query: str) -> int:
        async def fetch() -> int:
            conn = await _connect(self.dsn)
            try:
                value: int = await conn.fetchval(query)
                return value
            finally:
                await conn.close()

        return _run(fetch, 60)

    # --- CPU of the backends serving popbox -----------------------------------------------

    def cpu_snapshot(self) -> dict[int, int] | None:
        """pid -> CPU ticks of popbox's backends now; None when /proc does not show
        PostgreSQL's backends (a server on another machine or in another pid namespace:
        the backend answering the query is not there)."""

        async def fetch() -> dict[int, int] | None:
            conn = await _connect(self.server)
            try:
                rows = await conn.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND "
                    "backend_type = 'client backend' AND application_name LIKE 'popbox%' "
                    "AND application_name <> 'popbox-bench'", self.name)
                own = procstat.read_stat(await conn.fetchval("SELECT pg_backend_pid()"))
                if own is None or own.comm != "postgres":
                    return None
                out: dict[int, int] = {}
                for row in rows:
                    st = procstat.read_stat(int(row["pid"]))
                    if st is not None and st.comm == "postgres":  # else gone since
                        out[st.pid] = st.cpu_ticks
                return out
            finally:
                await conn.close()

        return _run(fetch, 30)

    def cpu_since(self, before: dict[int, int] | None) -> float | None:
        """CPU seconds popbox's backends used since `before` (see the module docstring)."""
        now = self.cpu_snapshot() if before is not None else None
        if before is None or now is None:
            return None
        return sum(ticks - before.get(pid, 0) for pid, ticks in now.items()) / procstat.CLK_TCK


def reachable(dsn: str) -> str | None:
    """None if the server answers, else why not."""

    async def probe() -> None:
        conn = await _connect(dsn)
        await conn.close()

    try:
        _run(probe, 15)
    except PgError as exc:
        return str(exc)
    return None


def redacted(dsn: str) -> str:
    """The DSN without a password, for the report."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))

