"""Two small PostgreSQL measurements behind docs/scaling-out.md's capacity plan:

    .venv/bin/python -m bench.pg_probes locks     # the cost of proving a lock via pg_locks
    .venv/bin/python -m bench.pg_probes convert   # `popbox db upgrade` converting old rows

`locks`: one connection takes N maildrop-style advisory locks (N = 1, 1,000, 5,000), a
second one times the query a commit would need to prove one of them by reading
``pg_locks`` (the median of 50). Why popbox's commit runs on the lock connection instead.

`convert`: a throwaway database (bench.pg.BenchDatabase, dropped at the end) with
`--messages` messages of about 10 KB, their wire form then removed as if they had been
stored before schema version 3; prints how long ``popbox db upgrade`` takes to convert
them (the command's start included). Both only talk to the PostgreSQL server of
``$POPBOX_BENCH_PG_DSN`` (else 127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from bench import pg
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pg_probes")
    parser.add_argument("probe", choices=("locks", "convert"))
    parser.add_argument("--messages", type=int, default=5000, help="for convert")
    args = parser.parse_args(argv)
    if args.probe == "locks":
        asyncio.run(_locks(pg.server_dsn(), (1, 1000, 5000)))
    else:
        _convert(args.messages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
