"""LMTP delivery into the PostgreSQL store: ``python -m bench.lmtp_pg [--clients 4]
[--messages 2000] [--size 10240]``.

Makes a throwaway database (bench.pg.BenchDatabase, dropped at the end), applies the
schema with ``popbox db upgrade``, adds one user, starts ``popbox lmtp`` on 127.0.0.1 (a
free port) and has `clients` LMTP connections deliver `messages` messages of `size`
octets between them into that one mailbox, each connection one transaction after the
other (MAIL, RCPT, DATA, wait for 250). Every 250 is a durable delivery: the server
runs with its own ``synchronous_commit`` (shown). Prints messages/s, the latency of
each transaction (p50, p99), the CPU time of ``popbox lmtp`` and of its PostgreSQL
backends per 1,000 messages and the WAL written per message; checks that the mailbox
holds exactly what was sent. Bounded: connections only to 127.0.0.1, a timeout on every reply.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from bench import pg, procstat

USER = "lmtp-bench"


def _message(n: int, size: int) -> bytes:
    head = (f"From: sender@example.org\nTo: {USER}\nSubject: bench {n}\n"
            f"Message-ID: <{n}.{os.getpid()}@bench.example>\n\n").encode()
    line = b"x" * 75 + b"\n"
    body = line * max(0, (size - len(head)) // len(line))
    return head + body + b"y" * max(0, size - len(head) - len(body) - 1) + b"\n"


def _data(message: bytes) -> bytes:
    body = message.replace(b"\n", b"\r\n")
    return (b"." + body if body.startswith(b".") else body).replace(b"\r\n.", b"\r\n..")


async def _reply(reader: asyncio.StreamReader) -> int:
    while True:
        line = await asyncio.wait_for(reader.readline(), 60)
        if not line.endswith(b"\r\n"):
            raise RuntimeError(f"LMTP: connection closed ({line!r})")
        if line[3:4] != b"-":
            return int(line[:3])


async def _client(port: int, jobs: list[bytes], latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for command, want in ((None, 220), (b"LHLO bench.example", 250)):
            if command:
                writer.write(command + b"\r\n")
            if await _reply(reader) != want:
                raise RuntimeError("LMTP: greeting or LHLO refused")
        for message in jobs:
            started = time.perf_counter()
            writer.write(f"MAIL FROM:<sender@example.org>\r\nRCPT TO:<{USER}>\r\nDATA\r\n"
                         .encode())
            codes = [await _reply(reader) for _ in range(3)]
            writer.write(_data(message) + b".\r\n")
            codes.append(await _reply(reader))
            if codes != [250, 250, 354, 250]:
                raise RuntimeError(f"LMTP: delivery answered {codes}")
            latencies.append(time.perf_counter() - started)
        writer.write(b"QUIT\r\n")
        await _reply(reader)
    finally:
        writer.close()


async def _deliver_all(port: int, clients: int, messages: list[bytes]) -> list[float]:
    latencies: list[float] = []
    await asyncio.gather(*(_client(port, messages[i::clients], latencies)
                           for i in range(clients)))
    return latencies


async def _settings(dsn: str) -> str:
    """What makes a 250 durable: the server's commit and fsync settings."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        names = ("synchronous_commit", "fsync", "wal_sync_method", "commit_delay")
        values = [await conn.fetchval(f"SHOW {name}") for name in names]
    finally:
        await conn.close()
    return ", ".join(f"{n} = {v}" for n, v in zip(names, values, strict=True))


async def _wal(dsn: str) -> int:
    """The server's WAL position in octets (all databases: keep the server quiet)."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        value: int = await conn.fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
    finally:
        await conn.close()
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=10 * 1024)
    args = parser.parse_args()
    db = pg.BenchDatabase()
    db.create()
    workdir = Path(tempfile.mkdtemp(prefix="popbox-lmtp-bench-"))
    config = workdir / "popbox.toml"
    config.write_text(
        f'[store]\nbackend = "postgres"\n[auth]\nbackend = "postgres"\n'
        f'mail_location = "{{user}}"\n[postgres]\ndsn = "{db.dsn}"\n'
        f'[lmtp]\nlisten = ["127.0.0.1:0"]\n'
        # as root (a container): popbox refuses unless told; the bench has no other user
        + ("[server]\nallow_root = true\n" if os.geteuid() == 0 else ""))
    lmtp: subprocess.Popen[str] | None = None
    try:
        popbox = [sys.executable, "-m", "popbox"]
        subprocess.run([*popbox, "db", "upgrade", "--config", str(config)], check=True,
                       capture_output=True, timeout=120)
        (workdir / "users").write_text(f"{USER}:{{PLAIN}}x\n")
        db.load_users(workdir / "users")
        with (workdir / "lmtp.log").open("w") as log:
            lmtp = subprocess.Popen([*popbox, "lmtp", "--config", str(config)],
                                    stdout=subprocess.PIPE, stderr=log, text=True)
        assert lmtp.stdout is not None
        found = re.search(r"listening on \S+:(\d+)", lmtp.stdout.readline())
        if not found:
            raise RuntimeError(f"popbox lmtp did not start (see {workdir / 'lmtp.log'})")
        port = int(found.group(1))
        messages = [_message(n, args.size) for n in range(args.messages)]
        asyncio.run(_deliver_all(port, args.clients, messages[:args.clients]))  # warm up
        setting = asyncio.run(_settings(db.dsn))
        backends = db.cpu_snapshot()
        own = procstat.cpu_seconds(lmtp.pid)
        wal = asyncio.run(_wal(db.dsn))
        started = time.perf_counter()
        latencies = asyncio.run(_deliver_all(port, args.clients, messages))
        elapsed = time.perf_counter() - started
        wal = asyncio.run(_wal(db.dsn)) - wal
        own_cpu = procstat.cpu_seconds(lmtp.pid) - own
        pg_cpu = db.cpu_since(backends) or float("nan")
        stored = db.count("SELECT count(*) FROM messages")
        if stored != args.messages + args.clients:
            raise RuntimeError(f"{stored} messages stored, {args.messages + args.clients} sent")
        latencies.sort()
        per_k = 1000 / args.messages
        print(f"LMTP into PostgreSQL: {args.messages} messages of {args.size} octets, "
              f"{args.clients} clients, one mailbox, {setting}")
        print(f"  {args.messages / elapsed:,.0f} messages/s; per delivery p50 "
              f"{statistics.median(latencies) * 1000:.1f} ms, p99 "
              f"{latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms")
        print(f"  CPU per 1,000 messages: popbox lmtp {own_cpu * per_k:.2f} s, "
              f"PostgreSQL backends {pg_cpu * per_k:.2f} s; WAL {wal / args.messages:,.0f} "
              "octets per message (the whole server's)")
        return 0
    finally:
        if lmtp is not None:
            lmtp.terminate()
            try:
                lmtp.wait(15)
            except subprocess.TimeoutExpired:
                lmtp.kill()
                lmtp.wait(10)
        db.drop()


if __name__ == "__main__":
    sys.exit(main())
