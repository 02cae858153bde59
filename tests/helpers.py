"""Test helpers: a mail environment on disk, an in-process server, a raw POP3 client,
and a popbox server in a child process. Everything binds 127.0.0.1 port 0."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from popbox.backends import build
from popbox.config import Config, from_dict
from popbox.server.context import ServerContext
from popbox.server.listener import Listener


def crlf(message: bytes) -> bytes:
    """A stored message as sent (before byte-stuffing): CRLF line ends, a final CRLF."""
    data = message.replace(b"\n", b"\r\n")
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def lf_terminated(message: bytes) -> bytes:
    """A stored message as LF tools (fetchmail's MDA, getmail) write it: a final LF."""
    return message if message.endswith(b"\n") else message + b"\n"


@dataclass
class MailEnv:
    """A users file and a tree of Maildirs under `root` (Dovecot's layout)."""

    root: Path
    counter: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def users(self) -> Path:
        return self.root / "users"

    def maildir(self, user: str) -> Path:
        return self.root / "mail" / user / "Maildir"

    def add_user(self, name: str, password: str = "secret") -> Path:
        with self.users.open("a") as f:
            f.write(f"{name}:{{PLAIN}}{password}::::::\n")
        md = self.maildir(name)
        for sub in ("cur", "new", "tmp"):
            (md / sub).mkdir(parents=True, exist_ok=True)
        return md

    def put(self, user: str, message: bytes, *, folder: str = "new", suffix: str = "") -> Path:
        """Write a message the way Postfix's local delivery does (LF line ends)."""
        self.counter += 1
        name = f"{1700000000 + self.counter}.V801I{self.counter:x}M{self.counter}.testhost{suffix}"
        path = self.maildir(user) / folder / name
        path.write_bytes(message)
        return path

    def messages(self, user: str) -> list[bytes]:
        md = self.maildir(user)
        files = sorted(list((md / "new").iterdir()) + list((md / "cur").iterdir()),
                       key=lambda p: p.name)
        return [p.read_bytes() for p in files]

    def config_dict(self, **sections: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {
            "server": {"listen": ["127.0.0.1:0"], "hostname": "test.example",
                       "allow_root": True},
            "auth": {"passwd_file": str(self.users),
                     "mail_location": str(self.root / "mail/{user}/Maildir")},
            # Tests that are not about penalties log in from loopback without them.
            "limits": {"shutdown_grace": 1, "penalty_exempt": ["127.0.0.0/8", "::1/128"]},
        }
        for name, values in {**self.settings, **sections}.items():
            data.setdefault(name, {}).update(values)
        return data

    def config(self, **sections: dict[str, Any]) -> Config:
        return from_dict(self.config_dict(**sections))

    def config_file(self, **sections: dict[str, Any]) -> Path:
        path = self.root / "popbox.toml"
        lines = []
        for name, values in self.config_dict(**sections).items():
            lines.append(f"[{name}]")
            for key, value in values.items():
                lines.append(f"{key} = {toml_value(value)}")
        path.write_text("\n".join(lines) + "\n")
        return path


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextlib.asynccontextmanager
async def running_server(config: Config) -> AsyncIterator[tuple[int, ServerContext]]:
    ctx = ServerContext.create(config, build(config))
    listener = Listener(ctx)
    plain, _ = await listener.start()
    try:
        yield plain[0][1], ctx
    finally:
        await listener.shutdown()


@contextlib.asynccontextmanager
async def running_tls_server(config: Config) -> AsyncIterator[tuple[int, int]]:
    """popbox in this process with a plain (STLS) and an implicit TLS listener: their ports."""
    ctx = ServerContext.create(config, build(config))
    listener = Listener(ctx)
    plain, implicit = await listener.start()
    try:
        yield plain[0][1], implicit[0][1]
    finally:
        await listener.shutdown()


class Client:
    """A raw POP3 client for tests: sends lines, reads status lines and multi-line data."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> Client:
        reader, writer = await asyncio.open_connection(host, port, limit=2**24)
        return cls(reader, writer)

    async def line(self) -> bytes:
        data = await asyncio.wait_for(self.reader.readline(), 10)
        assert data.endswith(b"\r\n"), data
        return data[:-2]

    async def cmd(self, line: bytes | str) -> bytes:
        self.send(line)
        return await self.line()

    def send(self, line: bytes | str) -> None:
        raw = line.encode() if isinstance(line, str) else line
        self.writer.write(raw + b"\r\n")

    async def body(self) -> bytes:
        """The rest of a multi-line response, un-stuffed, CRLF kept, terminator removed."""
        out = []
        while True:
            data = await asyncio.wait_for(self.reader.readline(), 10)
            assert data.endswith(b"\r\n"), data
            if data == b".\r\n":
                return b"".join(out)
            out.append(data[1:] if data.startswith(b".") else data)

    async def multi(self, line: bytes | str) -> tuple[bytes, list[bytes]]:
        status = await self.cmd(line)
        if not status.startswith(b"+OK"):
            return status, []
        return status, (await self.body()).split(b"\r\n")[:-1]

    async def login(self, user: str = "alice", password: str = "secret") -> bytes:
        greeting = await self.line()
        assert greeting.startswith(b"+OK"), greeting
        assert (await self.cmd(f"USER {user}")).startswith(b"+OK")
        return await self.cmd(f"PASS {password}")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class PopboxProcess:
    """A `popbox` command in a child process, announcing itself on stdout; its log goes
    to a file (a pipe nobody reads would fill up and block it). `stop()`: SIGTERM, then
    SIGKILL; it returns the log."""

    def __init__(self, *argv: str, env: dict[str, str] | None = None) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="popbox-log-", suffix=".txt")  # noqa: SIM115
        self.final_log = ""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "popbox", *argv],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
            env={**os.environ, **(env or {})},
        )

    def read_log(self) -> str:
        if self.log.closed:
            return self.final_log
        return Path(self.log.name).read_text(errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not self.log.closed:
            self.proc.communicate()
            self.final_log = self.read_log()
            self.log.close()
        return self.final_log


class ServerProcess(PopboxProcess):
    """`popbox serve` in a child process: its POP3 port, and its POP3S port if any."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        super().__init__("serve", "--config", str(config), env=env)
        assert self.proc.stdout is not None
        wants_tls = bool(tomllib.loads(config.read_text()).get("tls", {}).get("implicit"))
        self.port = 0
        self.tls_port: int | None = None
        while True:
            line = self.proc.stdout.readline()
            match = re.search(r"listening on [\d.]+:(\d+)( \(TLS\))?", line)
            if not match:
                break
            if match.group(2):
                self.tls_port = int(match.group(1))
            else:
                self.port = int(match.group(1))
            if self.port and (self.tls_port or not wants_tls):
                break
        if not self.port:
            raise RuntimeError(f"server did not start: {line!r} {self.stop()}")

    def wait_log(self, text: str, timeout: float = 10) -> bool:
        """Poll the server's log (stderr) until it contains `text`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.read_log():
                return True
            if self.proc.poll() is not None:
                return text in self.read_log()
            time.sleep(0.05)
        return False


@contextlib.contextmanager
def server_process(config: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(config)
    try:
        yield server
    finally:
        server.stop()


def children_of(pid: int) -> set[int]:
    """The processes whose parent is `pid` (from /proc)."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry))
    return out
