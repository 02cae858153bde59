"""How long QUIT takes on the PostgreSQL store, after RETR or DELE of every message:

    .venv/bin/python -m bench.quit_pg              # RETR of 1,000 messages, then QUIT
    .venv/bin/python -m bench.quit_pg --dele       # DELE of 1,000 messages, then QUIT

As bench.quit, on the postgres store: a throwaway database (bench.pg.BenchDatabase,
dropped at the end) with the schema of ``popbox db upgrade`` and one mailbox of
`--messages` messages of about 10 KB (bench.corpus's text), served by ``python -m popbox
serve`` (one worker) on a free loopback port. Each session logs in, retrieves (or marks
deleted) every message, then sends QUIT; the time from writing QUIT to reading the
whole `+OK` line is one sample: the server's one commit statement (lease check, seen
flags as one row of the retrieval log, or deletions) and the lock's release (RFC 1939
§6). Before each session the messages are made unseen again, the log emptied and the
table vacuumed (RETR: each QUIT logs them all, as for new mail), or put back (DELE:
copied in again from a template table, with new ids). The first session is a warm-up. Every socket
read is bounded by a timeout; the server is stopped in a `finally` block.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import pg
from bench.corpus import _Writer
from bench.quit import _Client, _stop
from popbox.pg.pool import Database
from popbox.store.postgres import PostgresStore

USER = "quit"
_COLUMNS = "mailbox_id, uidl, size, raw_size, body, body_from_wire, wire, delivered_at"
_TEMPLATE = f"CREATE TABLE quit_template AS SELECT {_COLUMNS} FROM messages"  # noqa: S608
_PUT_BACK = f"INSERT INTO messages ({_COLUMNS}) SELECT {_COLUMNS} FROM quit_template"  # noqa: S608


def _fill(dsn: str, messages: int) -> None:
    writer = _Writer(Path(tempfile.gettempdir()), random.Random(1939))

    async def deliver() -> None:
        store = PostgresStore(Database(dsn, max_size=2))
        try:
            for _ in range(messages):
                text = writer.message(USER, writer.rng.randint(9 * 1024, 11 * 1024))
                if await store.deliver(USER, text) is not None:
                    raise RuntimeError("delivery failed")
        finally:
            await store.aclose()

    asyncio.run(deliver())


def _session(port: int, messages: int, verb: bytes) -> float:
    client = _Client(port)
    try:
        client.until(b"\r\n")
        client.command(b"USER " + USER.encode())
        client.command(b"PASS " + USER.encode())
        stat = client.command(b"STAT")
        if int(stat.split()[1]) != messages:
            raise RuntimeError(f"STAT: {stat!r}")
        end = b"\r\n.\r\n" if verb == b"RETR" else b"\r\n"
        for i in range(1, messages + 1):
            client.command(b"%s %d" % (verb, i), end)
        start = time.perf_counter()
        reply = client.command(b"QUIT")
        elapsed = time.perf_counter() - start
        if verb == b"DELE" and b"%d messages deleted" % messages not in reply:
            raise RuntimeError(f"QUIT: {reply!r}")
        return elapsed
    finally:
        client.sock.close()


def _start(root: Path, dsn: str) -> tuple[subprocess.Popen[bytes], int]:
    config = root / "popbox.toml"
    config.write_text(
        '[server]\nlisten = ["127.0.0.1:0"]\nworkers = 1\n'
        f"allow_root = {'true' if os.geteuid() == 0 else 'false'}\n"
        '[store]\nbackend = "postgres"\n'
        '[auth]\nbackend = "postgres"\nmail_location = "{user}"\n'
        f'[postgres]\ndsn = "{dsn}"\n[log]\nlevel = "warning"\n')
    subprocess.run([sys.executable, "-m", "popbox", "db", "upgrade", "--config", str(config)],
                   check=True, capture_output=True, timeout=120)
    out = root / "stdout.log"
    with out.open("wb") as stdout, (root / "popbox.log").open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "popbox", "serve", "--config", str(config)],
            stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while "listening on 127.0.0.1:" not in out.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(f"popbox did not start: {(root / 'popbox.log').read_text()}")
        time.sleep(0.05)
    port = int(out.read_text().split("listening on 127.0.0.1:")[1].split()[0])
    return proc, port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quit_pg")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--dele", action="store_true", help="DELE every message, not RETR")
    args = parser.parse_args(argv)
    db = pg.BenchDatabase()
    db.create()
    proc: subprocess.Popen[bytes] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="popbox-quit-pg-") as tmp:
            root = Path(tmp)
            (root / "users").write_text(f"{USER}:{{PLAIN}}{USER}\n")
            proc, port = _start(root, db.dsn)
            db.load_users(root / "users")
            _fill(db.dsn, args.messages)
            db.execute(_TEMPLATE, "VACUUM (ANALYZE) messages")
            samples = []
            for n in range(args.sessions + 1):
                if not args.dele:
                    # and the old row versions cleared away, as for mail retrieved once
                    db.execute("UPDATE messages SET seen = false, retrieved_at = NULL",
                               "DELETE FROM retrievals", "VACUUM messages")
                elif n:  # the previous session deleted them all
                    db.execute(_PUT_BACK)
                took = _session(port, args.messages, b"DELE" if args.dele else b"RETR")
                if n:
                    samples.append(took * 1000)
    finally:
        if proc is not None:
            _stop(proc)
        db.drop()
    what = "DELE" if args.dele else "RETR (seen flags)"
    print(f"postgres store: QUIT after {what} of {args.messages} messages, "
          f"{args.sessions} sessions: p50 {statistics.median(samples):.2f} ms, "
          f"min {min(samples):.2f} ms, max {max(samples):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
