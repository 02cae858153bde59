"""Small PostgreSQL measurements behind docs/scaling-out.md's capacity plan:

    .venv/bin/python -m bench.pg_probes locks     # the cost of proving a lock via pg_locks
    .venv/bin/python -m bench.pg_probes convert   # `popbox db upgrade` converting old rows
    .venv/bin/python -m bench.pg_probes layouts   # PostgreSQL's CPU per GB sent, by layout

`locks`: one connection takes N maildrop-style advisory locks (N = 1, 1,000, 5,000), a
second one times the query a commit would need to prove one of them by reading
``pg_locks`` (the median of 50). Why popbox's commit runs on the lock connection instead.

`convert`: a throwaway database (bench.pg.BenchDatabase, dropped at the end) with
`--messages` messages of about 10 KB, their wire form then removed as if they had been
stored before schema version 3; prints how long ``popbox db upgrade`` takes to convert
them (the command's start included).

`layouts`: what PostgreSQL's backend spends (user + system CPU, from /proc) per GB of
message bodies it sends, for three ways of storing them, in a throwaway database:
``external`` (popbox's: one ``bytea`` per message, uncompressed out of line, read with
``substring`` 256 KiB at a time), ``compressed`` (``STORAGE MAIN``, lz4 where the server
has it: kept in the row where it fits, read whole) and ``rows`` (the body cut into rows
of 8,000 octets, ``STORAGE PLAIN``: no TOAST at all, read 32 rows a query). For messages
of 10 KB (read 12 a query, as the store's read-ahead does) and of 1 MB, each read
twice in turns. Every probe only talks to the PostgreSQL server of
``$POPBOX_BENCH_PG_DSN`` (else 127.0.0.1:5432); `locks` uses its own database.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench import pg, procstat
from bench.quit_pg import _fill
from popbox.pg.schema import LOCK_NAMESPACE

_HELD = """
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND pid = $3
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid = $1 AND objid = $2 AND objsubid = 2
)"""


async def _locks(dsn: str, counts: tuple[int, ...]) -> None:
    holder = await asyncpg.connect(dsn, timeout=10)
    asker = await asyncpg.connect(dsn, timeout=10)
    try:
        pid = await holder.fetchval("SELECT pg_backend_pid()")
        held = 0
        for count in counts:
            await holder.execute("SELECT pg_try_advisory_lock($1, k) FROM "
                                 "generate_series($2::int, $3::int) k",
                                 LOCK_NAMESPACE, held + 1, count)
            held = count
            times = []
            for _ in range(50):
                started = time.perf_counter()
                if not await asker.fetchval(_HELD, LOCK_NAMESPACE, 1, pid):
                    raise RuntimeError("the lock is not held")
                times.append(time.perf_counter() - started)
            print(f"{count:,} advisory locks held: proving one through pg_locks "
                  f"p50 {statistics.median(times) * 1000:.2f} ms")
    finally:
        await holder.close()
        await asker.close()


def _convert(messages: int) -> None:
    db = pg.BenchDatabase()
    db.create()
    try:
        root = Path(tempfile.mkdtemp(prefix="popbox-convert-"))
        config = root / "popbox.toml"
        config.write_text(f'[store]\nbackend = "postgres"\n[auth]\nbackend = "postgres"\n'
                          f'[postgres]\ndsn = "{db.dsn}"\n')
        upgrade = [sys.executable, "-m", "popbox", "db", "upgrade", "--config", str(config)]
        subprocess.run(upgrade, check=True, capture_output=True, timeout=120)
        _fill(db.dsn, messages)
        db.execute("UPDATE messages SET wire = NULL", "VACUUM FULL messages", "CHECKPOINT")
        started = time.perf_counter()
        done = subprocess.run(upgrade, check=True, capture_output=True, text=True,
                              timeout=3600)
        took = time.perf_counter() - started
        print(f"{done.stdout.strip().splitlines()[-1]} in {took:.1f} s: "
              f"{messages / took:,.0f} messages/s")
    finally:
        db.drop()


# name: (storage, the query for one big message's piece, the read-ahead's query; every
# read-ahead query takes the piece size as $2, though only `external` needs it)
_LAYOUTS = {
    "external": ("ALTER TABLE t ALTER body SET STORAGE EXTERNAL",
                 "SELECT substring(body FROM $2 FOR $3) FROM t WHERE id = $1",
                 "SELECT substring(body FROM 1 FOR $2) FROM t WHERE id = ANY($1)"),
    "compressed": ("ALTER TABLE t ALTER body SET STORAGE MAIN",
                   "SELECT body FROM t WHERE id = $1",
                   "SELECT body FROM t WHERE id = ANY($1) AND $2 > 0"),
    "rows": ("ALTER TABLE t ALTER body SET STORAGE PLAIN",
             "SELECT body FROM t WHERE id = $1 AND part >= $2 AND part < $3 ORDER BY part",
             "SELECT body FROM t WHERE id = ANY($1) AND $2 > 0 ORDER BY id, part"),
}
_PART, _PIECE, _PARTS_A_QUERY, _AHEAD = 8000, 256 * 1024, 32, 12


def _bodies(size: int, count: int) -> list[bytes]:
    """Mail-like text in wire form: CRLF lines of words."""
    rng = random.Random(size)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10)))
             for _ in range(3000)]
    out = []
    for _ in range(count):
        body = bytearray(b"Subject: layout probe\r\n\r\n")
        while len(body) < size:
            body += b" ".join(rng.choices(words, k=11)) + b"\r\n"
        out.append(bytes(body[:size]))
    return out


async def _layouts(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        lz4 = await conn.fetchval("SELECT current_setting('server_version_num')::int >= 140000")
        for size, count, passes in ((10 * 1024, 2400, 8), (1024 * 1024, 48, 4)):
            bodies = _bodies(size, count)
            reads: dict[str, Any] = {}
            for name, (storage, piece, ahead) in _LAYOUTS.items():
                table = f"probe_{name}"
                await conn.execute(f"DROP TABLE IF EXISTS {table}")
                await conn.execute(f"CREATE TABLE {table} (id int, part int, body bytea, "
                                   "PRIMARY KEY (id, part))")
                await conn.execute(storage.replace(" t ", f" {table} "))
                if name == "compressed" and lz4:
                    await conn.execute(f"ALTER TABLE {table} ALTER body SET COMPRESSION lz4")
                step = _PART if name == "rows" else size
                await conn.executemany(
                    f"INSERT INTO {table} VALUES ($1, $2, $3)",  # noqa: S608 (our names)
                    [(i, k, body[o:o + step]) for i, body in enumerate(bodies)
                     for k, o in enumerate(range(0, size, step))])
                await conn.execute(f"VACUUM ANALYZE {table}")
                query = ahead if size < _PIECE else piece
                reads[name] = await conn.prepare(query.replace(" t ", f" {table} "))
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            for turn in range(2):
                for name, statement in reads.items():
                    cpu, started, sent = procstat.cpu_seconds(pid), time.process_time(), 0
                    for _ in range(passes):
                        sent += await _read_all(name, statement, count, size)
                    gb = sent / 1e9
                    print(f"{size // 1024:>5} KB {name:10} turn {turn + 1}: PostgreSQL "
                          f"{(procstat.cpu_seconds(pid) - cpu) / gb:.2f} s/GB, this client "
                          f"{(time.process_time() - started) / gb:.2f} s/GB")
            for name in _LAYOUTS:
                await conn.execute(f"DROP TABLE probe_{name}")
    finally:
        await conn.close()


async def _read_all(layout: str, statement: Any, count: int, size: int) -> int:
    """Every message once, as the store would read it; returns the octets received."""
    sent = 0
    if size < _PIECE:  # the read-ahead: several whole messages a query
        for first in range(0, count, _AHEAD):
            rows = await statement.fetch(list(range(first, first + _AHEAD)), _PIECE)
            sent += sum(len(r[0]) for r in rows)
        return sent
    for i in range(count):
        if layout == "external":
            for offset in range(0, size, _PIECE):
                sent += len(await statement.fetchval(i, offset + 1, _PIECE))
        elif layout == "rows":
            for part in range(0, -(-size // _PART), _PARTS_A_QUERY):
                rows = await statement.fetch(i, part, part + _PARTS_A_QUERY)
                sent += sum(len(r[0]) for r in rows)
        else:
            sent += len(await statement.fetchval(i))
    return sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pg_probes")
    parser.add_argument("probe", choices=("locks", "convert", "layouts"))
    parser.add_argument("--messages", type=int, default=5000, help="for convert")
    args = parser.parse_args(argv)
    if args.probe == "locks":
        asyncio.run(_locks(pg.server_dsn(), (1, 1000, 5000)))
    elif args.probe == "layouts":
        db = pg.BenchDatabase()
        db.create()
        try:
            asyncio.run(_layouts(db.dsn))
        finally:
            db.drop()
    else:
        _convert(args.messages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
