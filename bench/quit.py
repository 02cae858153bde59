"""How long QUIT takes after RETR of every message of a maildrop, on 127.0.0.1.

    .venv/bin/python -m bench.quit                 # 1,000 seen messages, 20 sessions
    .venv/bin/python -m bench.quit --unseen        # the same messages, in new/ each time

It writes a maildir of `--messages` messages of about 10 KB (bench.corpus's text) and
starts ``python -m popbox serve`` (one worker, Maildir store) on a free loopback port.
Each session logs in, retrieves every message, then sends QUIT; the time from writing
QUIT to reading the whole `+OK` line is one sample (the server commits the session's
changes before it answers, RFC 1939 §6). By default the messages are already in ``cur/``
with the ``S`` flag: the commit has nothing to change, the case a mail client that
leaves mail on the server meets at every poll. With `--unseen` every message is moved
back to ``new/`` before each session, so each QUIT renames all of them into ``cur/``.

It prints the median, the fastest and the slowest sample in milliseconds. The first
session is a warm-up and is not counted. Every session is bounded by a timeout; the
server is stopped in a `finally` block.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.corpus import _Writer

TIMEOUT = 30.0


def _maildir(root: Path, messages: int) -> Path:
    """User "quit" (password "quit"); the messages in new/, as the MTA left them."""
    writer = _Writer(root, random.Random(1939))
    md = writer.maildir("quit")
    for _ in range(messages):
        writer.write(md, writer.message("quit", writer.rng.randint(9 * 1024, 11 * 1024)))
    (root / "users").write_text("quit:{PLAIN}quit::::::\n")
    return md


def _mark(md: Path, *, seen: bool) -> None:
    """Every message in cur/ with the S flag, or back in new/ without flags."""
    if seen:
        for name in os.listdir(md / "new"):
            os.rename(md / "new" / name, md / "cur" / f"{name}:2,S")
    else:
        for name in os.listdir(md / "cur"):
            os.rename(md / "cur" / name, md / "new" / name.partition(":")[0])


class _Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buf = bytearray()

    def until(self, end: bytes) -> bytes:
        while (at := self.buf.find(end)) < 0:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("server closed the connection")
            self.buf += data
        reply = bytes(self.buf[: at + len(end)])
        del self.buf[: at + len(end)]
        return reply

    def command(self, line: bytes, end: bytes = b"\r\n") -> bytes:
        self.sock.sendall(line + b"\r\n")
        reply = self.until(end)
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"{line!r}: {reply[:80]!r}")
        return reply


def _session(port: int, messages: int) -> float:
    """One session; returns the QUIT time in seconds."""
    client = _Client(port)
    try:
        client.until(b"\r\n")
        client.command(b"USER quit")
        client.command(b"PASS quit")
        stat = client.command(b"STAT")
        if int(stat.split()[1]) != messages:
            raise RuntimeError(f"STAT: {stat!r}")
        for i in range(1, messages + 1):
            client.command(b"RETR %d" % i, b"\r\n.\r\n")
        start = time.perf_counter()
        client.command(b"QUIT")
        elapsed = time.perf_counter() - start
        if client.sock.recv(1):  # the server closes after QUIT
            raise RuntimeError("data after the reply to QUIT")
        return elapsed
    finally:
        client.sock.close()


def _start(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    config = root / "popbox.toml"
    config.write_text(
        "[server]\n"
        'listen = ["127.0.0.1:0"]\n'
        "workers = 1\n"
        # as root, stay root: the maildir is in this process's private temp dir
        f"allow_root = {'true' if os.geteuid() == 0 else 'false'}\n"
        "[auth]\n"
        f'passwd_file = "{root / "users"}"\n'
        f'mail_location = "{root}/{{user}}/Maildir"\n'
        "[log]\n"
        'level = "warning"\n'
    )
    out = root / "stdout.log"
    with out.open("wb") as stdout, (root / "popbox.log").open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "popbox", "serve", "--config", str(config)],
            stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    deadline = time.monotonic() + TIMEOUT
    while True:
        match = re.search(r"popbox: listening on 127\.0\.0\.1:(\d+)", out.read_text())
        if match:
            return proc, int(match.group(1))
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(f"popbox did not start: {(root / 'popbox.log').read_text()}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quit")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--unseen", action="store_true",
                        help="move every message back to new/ before each session")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="popbox-quit-") as tmp:
        root = Path(tmp)
        md = _maildir(root, args.messages)
        _mark(md, seen=not args.unseen)
        proc, port = _start(root)
        try:
            samples = []
            for n in range(args.sessions + 1):
                if args.unseen:
                    _mark(md, seen=False)
                quit_time = _session(port, args.messages)
                if n:  # the first one is the warm-up
                    samples.append(quit_time * 1000)
        finally:
            _stop(proc)
    state = "unseen, in new/" if args.unseen else "seen, in cur/ with S"
    print(f"QUIT after RETR of {args.messages} messages ({state}), {args.sessions} sessions: "
          f"p50 {statistics.median(samples):.2f} ms, min {min(samples):.2f} ms, "
          f"max {max(samples):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
