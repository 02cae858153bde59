"""Helpers for the tests of `popbox fetch` with an accounts file: the command as a child
process with its own XDG folders (or forked from a process that imported it once),
accounts files written from dicts, and mail put into a popbox Maildir the way an MTA does
(tmp/, then a rename into new/)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from fetch_helpers import FETCH_TIMEOUT, Result
from helpers import MailEnv, toml_value


def toml(accounts: dict[str, dict[str, Any]], **top: Any) -> str:
    lines = [f"{key} = {toml_value(value)}" for key, value in top.items()]
    for name, keys in accounts.items():
        lines.append(f"[accounts.{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def write_accounts(path: Path, accounts: dict[str, dict[str, Any]], **top: Any) -> Path:
    path.write_text(toml(accounts, **top))
    path.chmod(0o600)
    return path


def agent_env(root: Path) -> dict[str, str]:
    return {**os.environ, "XDG_STATE_HOME": str(root / "xdg-state"),
            "XDG_CONFIG_HOME": str(root / "xdg-config")}


def agent_argv(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "popbox", "fetch", "--config", str(config), *args]


async def start_agent(root: Path, config: Path, *args: str, merged: bool = False
                      ) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *agent_argv(config, *args), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merged else asyncio.subprocess.PIPE,
        env=agent_env(root))


async def run_agent(root: Path, config: Path, *args: str, merged: bool = False) -> Result:
    proc = await start_agent(root, config, *args, merged=merged)
    out, err = await asyncio.wait_for(proc.communicate(), FETCH_TIMEOUT)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), (err or b"").decode())


def popbox_account(port: int, user: str, **keys: Any) -> dict[str, Any]:
    return {"server": "127.0.0.1", "port": port, "tls": "none", "user": user,
            "password": "secret", **keys}


def deliver(env: MailEnv, user: str, message: bytes) -> None:
    """Into the user's Maildir as an MTA does: whole, by a rename from tmp/."""
    env.counter += 1
    name = f"{1700000000 + env.counter}.M{env.counter}P{os.getpid()}.testhost"
    tmp = env.maildir(user) / "tmp" / name
    tmp.write_bytes(message)
    tmp.rename(env.maildir(user) / "new" / name)


FORKER = """
import json, os, signal, sys
from popbox.cli import fetch  # imported once; every child starts with it

signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
for line in sys.stdin:
    fifo, env, argv = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.environ.update(env)
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(fifo, os.O_WRONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.closerange(3, 1024)
        code = 70
        try:
            code = fetch.main(argv)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(pid, flush=True)
"""


class Forker:
    """Starts `popbox fetch` (its `main`, in a process of its own) by forking a process
    that has imported popbox once, so that a test can start a hundred of them on a busy
    machine. A child's stdout and stderr come back through a FIFO, which reaches its end
    when the child is gone."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._proc: asyncio.subprocess.Process | None = None
        self._count = 0
        self._lock = asyncio.Lock()  # one request, one pid line

    async def __aenter__(self) -> Forker:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", FORKER, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env=agent_env(self.root))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.close()
        await asyncio.wait_for(self._proc.wait(), 30)

    async def spawn(self, argv: list[str]) -> tuple[int, asyncio.StreamReader]:
        """The child's pid and a reader of its output."""
        assert self._proc is not None and self._proc.stdin and self._proc.stdout
        self._count += 1
        fifo = self.root / f"child-{self._count}.fifo"
        os.mkfifo(fifo)
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                     os.fdopen(fd, "rb"))
        async with self._lock:
            self._proc.stdin.write(json.dumps([str(fifo), {}, argv]).encode() + b"\n")
            await self._proc.stdin.drain()
            pid = int(await asyncio.wait_for(self._proc.stdout.readline(), 30))
        return pid, reader
