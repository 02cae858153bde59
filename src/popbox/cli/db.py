"""`popbox db upgrade|status --config X`: the PostgreSQL schema (popbox.pg.schema).

`upgrade` applies the missing migrations in one transaction (safe to run again, and from
several hosts at once), then gives the messages stored before migration 3 their wire
form, in batches that each commit (popbox.pg.convert: resumable, with the server
running; progress on stdout at most once a second); `status` prints the schema version
of the database and the one this popbox needs. Exit status: 0 done (status: up to
date), 1 the database could not be reached or refused (status: an upgrade is needed).
The DSN is never printed: it may hold a password.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from popbox.backends import database
from popbox.cli.common import DEFAULT_CONFIG
from popbox.config import Config, load
from popbox.pg import convert as pg_convert
from popbox.pg import schema as pg_schema
from popbox.pg.pool import DB_ERRORS, Database


def _error(message: str) -> int:
    print(f"popbox: {message}", file=sys.stderr)
    return 1


async def _upgrade(args: argparse.Namespace) -> int:
    db = database(load(args.config))
    conn = await db.connect()
    try:
        before = await pg_schema.current_version(conn) or 0
        applied = await pg_schema.upgrade(conn)
    finally:
        await conn.close()
    for migration in applied:
        print(f"applied {migration.version}: {migration.description}")
    after = applied[-1].version if applied else before
    print(f"database schema version {after}" + ("" if applied else " (up to date)"))
    if after >= 3:
        await _convert(db)
    return 0


async def _convert(db: Database) -> None:
    conn = await db.connect("popbox db upgrade")
    shown = 0.0

    def progress(done: int, total: int) -> None:
        nonlocal shown
        if time.monotonic() - shown >= 1.0:
            shown = time.monotonic()
            print(f"wire form: {done} of {total} messages", flush=True)

    try:
        if await pg_convert.pending(conn):
            done = await pg_convert.convert(conn, progress=progress)
            print(f"wire form: {done} messages converted")
    finally:
        await conn.close()


async def _version(config: Config) -> int:
    conn = await database(config).connect()
    try:
        return await pg_schema.current_version(conn) or 0
    finally:
        await conn.close()


async def _status(args: argparse.Namespace) -> int:
    version = await _version(load(args.config))
    print(f"database schema version {version}, popbox needs {pg_schema.LATEST}")
    return 0 if version >= pg_schema.LATEST else 1


def check(config: Config) -> list[str]:
    """For `popbox check-config`: the database is reachable and its schema current."""
    try:
        version = asyncio.run(_version(config))
    except DB_ERRORS as exc:
        return [f"postgres: cannot use the database: {exc or type(exc).__name__}"]
    if version < pg_schema.LATEST:
        return [f"postgres: schema version {version}, popbox needs {pg_schema.LATEST}: "
                "run `popbox db upgrade`"]
    return []


def _run(args: argparse.Namespace) -> int:
    try:
        result: int = asyncio.run(args.db_func(args))
    except DB_ERRORS as exc:
        return _error(f"database: {exc or type(exc).__name__}")
    return result


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `db` to the `popbox` command's subparsers."""
    db = sub.add_parser("db", help="manage the PostgreSQL schema")
    actions = db.add_subparsers(dest="action", required=True)
    for name, func, text in (
        ("upgrade", _upgrade, "create or upgrade the schema"),
        ("status", _status, "show the schema version"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
        action.set_defaults(func=_run, db_func=func)
