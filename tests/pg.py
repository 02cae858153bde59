"""PostgreSQL for the tests: a server, and a fresh database per test module.

The server: `POPBOX_TEST_PG_DSN` (a database in which the tests may CREATE DATABASE),
else postgresql://postgres@127.0.0.1:5432/test when it answers, else a throwaway cluster
made with Debian's `initdb` and started with `pg_ctl` in a temporary folder on a free
port (as the `postgres` user when running as root), stopped when the session is over.
`POPBOX_TEST_PG_DSN=throwaway` forces the throwaway cluster. Never skipped.

A test module uses this module as a plugin (`pytest_plugins = ["pg"]`). `pg_dsn` is a
fresh database with popbox's schema for each test module, dropped after it;
`fresh_database` makes an empty one. Set-up work runs on a private event loop, so the
fixtures serve sync and async tests alike. (Modules import helpers from here before
pytest loads it as a plugin, so it is left as written: PYTEST_DONT_REWRITE.)
`throwaway_cluster()` starts a cluster for one test alone. Also here: users in the
database, popbox configurations on it, `popbox lmtp` in a child process, and a small raw
LMTP client.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import glob
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from helpers import MailEnv, PopboxProcess
from popbox.pg import schema as pg_schema
from popbox.store import pg_body

T = TypeVar("T")
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on a private event loop (never the test's)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


async def _answers(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


class _Cluster:
    """A throwaway PostgreSQL cluster in a temporary folder."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise RuntimeError("no PostgreSQL: install Debian's postgresql package")
        bindir = os.path.dirname(found[-1])
        self.dir = tempfile.mkdtemp(prefix="popbox-pg-")
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.pg_ctl = os.path.join(bindir, "pg_ctl")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self._sh([os.path.join(bindir, "initdb"), "-D", self.data, "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--no-sync"])
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._sh([self.pg_ctl, "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w",
                  "-o", options, "start"])
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _sh(self, argv: list[str]) -> None:
        subprocess.run(self.prefix + argv, check=True, capture_output=True, timeout=120)

    def stop(self) -> None:
        try:
            self._sh([self.pg_ctl, "-D", self.data, "-m", "immediate", "-w", "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[str]:
    """The DSN of a cluster of its own, for a test that does to its server what a shared
    one must not see (fill its disk); stopped and removed after."""
    cluster = _Cluster()
    try:
        yield cluster.dsn
    finally:
        cluster.stop()


def _start_server() -> tuple[str, _Cluster | None]:
    wanted = os.environ.get("POPBOX_TEST_PG_DSN", "")
    if wanted and wanted != "throwaway":
        return wanted, None
    if not wanted and run(_answers(DEFAULT_DSN)):
        return DEFAULT_DSN, None
    cluster = _Cluster()
    atexit.register(cluster.stop)  # should the session die before its teardown
    return cluster.dsn, cluster


async def _admin(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def migrate(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await pg_schema.upgrade(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The DSN of a database on the test server in which databases may be created."""
    dsn, cluster = _start_server()
    try:
        yield dsn
    finally:
        if cluster is not None:
            atexit.unregister(cluster.stop)
            cluster.stop()


@contextlib.contextmanager
def fresh_database(server: str) -> Iterator[str]:
    """A new, empty database on `server`, dropped (connections and all) on exit."""
    name = "popbox_t_" + secrets.token_hex(6)
    run(_admin(server, f"CREATE DATABASE {name}"))
    try:
        yield with_database(server, name)
    finally:
        run(_admin(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@contextlib.asynccontextmanager
async def fresh_database_async(server: str) -> AsyncIterator[str]:
    """`fresh_database` for async tests."""
    name = "popbox_t_" + secrets.token_hex(6)
    await _admin(server, f"CREATE DATABASE {name}")
    try:
        yield with_database(server, name)
    finally:
        await _admin(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def pg_dsn(pg_server: str) -> Iterator[str]:
    """A fresh database with popbox's schema, shared by one test module."""
    with fresh_database(pg_server) as dsn:
        run(migrate(dsn))
        yield dsn


async def fetch(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    """One query on a connection of its own (in the caller's loop)."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def message_of(row: asyncpg.Record) -> bytes:
    """The message as delivered, from a row with its body, wire and body_from_wire: its ``body``,
    or, where that is derived (schema migration 6), made from its ``wire``."""
    if row["body_from_wire"] is None:
        body: bytes = row["body"]
        return body
    return pg_body.derive(row["wire"], row["body_from_wire"])


async def stored_messages(dsn: str, mailbox: str) -> list[bytes]:
    """The messages of a mailbox as delivered, in delivery order (trashed ones too)."""
    rows = await fetch(dsn, "SELECT m.body, m.wire, m.body_from_wire FROM messages m "
                       "JOIN mailboxes b ON b.id = m.mailbox_id WHERE b.name = $1 "
                       "ORDER BY m.id", mailbox)
    return [message_of(row) for row in rows]


def fetch_sync(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    return run(fetch(dsn, query, *args))



async def add_user(dsn: str, name: str, password: str = "secret", **columns: object) -> None:
    """A user in the `users` table, with a {PLAIN} password unless a hash is given."""
    stored = password if password.startswith("{") else "{PLAIN}" + password
    names = ["name", "password", *columns]
    marks = ", ".join(f"${i}" for i in range(1, len(names) + 1))
    await fetch(dsn, f"INSERT INTO users ({', '.join(names)}) VALUES ({marks})",  # noqa: S608
                name, stored, *columns.values())


def pg_config(env: MailEnv, dsn: str, **sections: dict[str, Any]) -> Path:
    """A configuration file for the postgres store and userdb on `dsn`."""
    merged: dict[str, dict[str, Any]] = {
        "store": {"backend": "postgres"},
        "auth": {"backend": "postgres", "mail_location": "{user}"},
        "postgres": {"dsn": dsn, "pool_max": 4},
    }
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    return env.config_file(**merged)


class LmtpProcess(PopboxProcess):
    """`popbox lmtp` in a child process: its TCP port (and Unix socket, if any)."""

    def __init__(self, config: Path) -> None:
        super().__init__("lmtp", "--config", str(config))
        assert self.proc.stdout is not None
        self.port = 0
        self.socket: str | None = None
        wanted = _lmtp_listeners(config)
        found = 0
        while found < wanted:
            line = self.proc.stdout.readline()
            match = re.search(r"popbox lmtp: listening on (\S+)", line)
            if not match:
                raise RuntimeError(f"lmtp did not start: {line!r} {self.stop()}")
            found += 1
            if match.group(1).startswith("/"):
                self.socket = match.group(1)
            else:
                self.port = int(match.group(1).rpartition(":")[2])


def _lmtp_listeners(config: Path) -> int:
    import tomllib

    with config.open("rb") as f:
        return len(tomllib.load(f).get("lmtp", {}).get("listen", []))


class LmtpClient:
    """A raw LMTP client: commands, replies, and the per-recipient replies after DATA."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> LmtpClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        code, _ = await client.reply()
        assert code == 220
        code, _ = await client.cmd("LHLO test.example")
        assert code == 250
        return client

    async def reply(self) -> tuple[int, str]:
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 30)).decode()
            assert line.endswith("\r\n"), line
            if line[3:4] != "-":
                return int(line[:3]), line[4:-2]

    async def cmd(self, line: str) -> tuple[int, str]:
        self.writer.write(line.encode() + b"\r\n")
        return await self.reply()

    def send_data(self, message: bytes) -> None:
        """The message, dot-stuffed with CRLF line ends, and the terminator."""
        body = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if body.startswith(b"."):
            body = b"." + body
        self.writer.write(body.replace(b"\r\n.", b"\r\n..") + b".\r\n")

    async def transaction(
        self, sender: str, recipients: list[str], message: bytes
    ) -> list[tuple[int, str]]:
        """MAIL, RCPT each, DATA: the RCPT replies of refused recipients, then one reply
        per accepted recipient (RFC 2033 §4.2)."""
        assert (await self.cmd(f"MAIL FROM:<{sender}>"))[0] == 250
        accepted = 0
        refused = []
        for rcpt in recipients:
            code, text = await self.cmd(f"RCPT TO:<{rcpt}>")
            if code == 250:
                accepted += 1
            else:
                refused.append((code, text))
        if not accepted:
            assert (await self.cmd("RSET"))[0] == 250
            return refused
        assert (await self.cmd("DATA"))[0] == 354
        self.send_data(message)
        return refused + [await self.reply() for _ in range(accepted)]

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.cmd("QUIT")
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
