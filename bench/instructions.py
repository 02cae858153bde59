"""Instructions per RETR: popbox's RETR path counted with callgrind, free of timing noise.

    .venv/bin/python -m bench.instructions      # needs valgrind; about 2 minutes
    .venv/bin/python -m bench.instructions --kib 1024 --messages 10   # ~1 MB messages

On a machine whose speed changes from minute to minute, a 5% change in CPU per RETR is
lost in the benchmark's noise. Instructions are not: callgrind counts the same total for
the same code and input whatever else the machine is doing. So this drives one real
session (the core, the session loop, the Maildir store on a real maildir) over an
in-memory transport, with no socket: USER, PASS, RETR every message of a maildrop of 300
messages of about 10 KB (bench.corpus's text and headers), QUIT. It runs itself under
`valgrind --tool=callgrind` twice, with 1 and with 3 such sessions after a warm-up one,
and prints the difference per RETR: the user-space instructions one RETR costs, login
and QUIT spread over 300 RETRs. The kernel's part (the socket write, epoll, the file's
open and read) is not counted; it is the same for any server.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.corpus import _Writer
from popbox.backends import build
from popbox.cli.main import _reuse_big_buffers
from popbox.config import from_dict
from popbox.proto import wire
from popbox.server.context import ServerContext
from popbox.server.io import SessionIO
from popbox.server.session import Session

MESSAGES = 300
KIB = 10


def script(messages: int) -> list[bytes]:
    return [b"USER bench", b"PASS bench"] + [b"RETR %d" % i for i in range(1, messages + 1)]


class _MemoryTransport:
    """The part of asyncio.Transport a session uses; plays the client. Each time a reply
    is complete it feeds the next command line, on the next turn of the loop."""

    def __init__(self, protocol: Any, lines: list[bytes]) -> None:
        self.protocol = protocol
        self.lines = lines
        self.sent = 0
        self.reply = bytearray()
        self.loop = asyncio.get_running_loop()
        self.failed: bytes | None = None  # the first reply that was not +OK
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    abort = close

    def write(self, data: bytes) -> None:
        self.reply += data
        multi = self.sent > 0 and self.lines[self.sent - 1].startswith(b"RETR")
        if not self.reply.endswith(b"\r\n.\r\n" if multi else b"\r\n"):
            return
        if not self.reply.startswith(b"+OK"):
            self.failed = bytes(self.reply[:80])
            self.close()  # hang up: the session ends without waiting for a timeout
            return
        self.reply.clear()
        if self.sent < len(self.lines):
            self.sent += 1
            self.loop.call_soon(self.protocol.data_received, self.lines[self.sent - 1] + b"\r\n")


async def sessions(root: Path, count: int, messages: int = MESSAGES) -> None:
    """A warm-up session, then `count` measured ones, on the maildir `maildir()` made."""
    config = from_dict({"auth": {"passwd_file": str(root / "users"),
                                 "mail_location": f"{root}/{{user}}/Maildir"}})
    ctx = ServerContext.create(config, build(config))
    loop = asyncio.get_running_loop()

    async def one() -> None:
        done: asyncio.Future[None] = loop.create_future()

        def start(io: SessionIO) -> None:
            task = loop.create_task(Session(ctx, io).run())
            task.add_done_callback(lambda _: done.set_result(None))

        io = SessionIO(start)
        client = _MemoryTransport(io, [*script(messages), b"QUIT"])
        io.connection_made(client)  # type: ignore[arg-type]
        await done
        if client.failed is not None or client.sent < len(client.lines):
            raise RuntimeError(f"session ended after {client.sent} commands: {client.failed!r}")

    await one()  # warm-up: the first QUIT renames every message into cur/
    gc.collect()
    gc.freeze()
    for _ in range(count):
        await one()


def maildir(root: Path, messages: int = MESSAGES, kib: int = KIB) -> None:
    """User "bench" (password "bench") with `messages` messages of about `kib` KiB."""
    writer = _Writer(root, random.Random(1939))
    md = writer.maildir("bench")
    low, high = kib * 1024 * 9 // 10, kib * 1024 * 11 // 10
    for _ in range(messages):
        writer.write(md, writer.message("bench", writer.rng.randint(low, high)))
    (root / "users").write_text("bench:{PLAIN}bench::::::\n")


def _count(root: Path, sessions: int, messages: int) -> int:
    out = root / f"callgrind.{sessions}"
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
         "-m", "bench.instructions", "--child", str(root), str(sessions), str(messages)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600,
        env={**os.environ, "PYTHONHASHSEED": "0"},  # the same set and dict layouts each run
    )
    match = re.search(r"^(?:totals|summary): (\d+)", out.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no instruction total in {out}")
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions")
    parser.add_argument("--messages", type=int, default=MESSAGES, help="per maildrop")
    parser.add_argument("--kib", type=int, default=KIB, help="about this size each")
    parser.add_argument("--child", nargs=3, metavar=("DIR", "SESSIONS", "MESSAGES"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _reuse_big_buffers()  # as `popbox serve` does
        run = sessions(Path(args.child[0]), int(args.child[1]), int(args.child[2]))
        try:
            import uvloop
        except ImportError:
            asyncio.run(run)
        else:
            uvloop.run(run)
        return 0
    if shutil.which("valgrind") is None:
        print("bench.instructions: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="popbox-instructions-") as tmp:
        root = Path(tmp)
        maildir(root, args.messages, args.kib)
        one, three = _count(root, 1, args.messages), _count(root, 3, args.messages)
    per_retr = (three - one) / (2 * args.messages)
    size = f"{args.kib // 1024} MB" if args.kib >= 1024 else f"{args.kib} KB"
    print(f"{per_retr:,.0f} instructions per RETR of a ~{size} message "
          f"(user space; login and QUIT spread over {args.messages} RETRs; "
          f"{wire.KERNEL_NAME} wire kernel)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
