"""Helpers for the tests of `popbox fetch` with an accounts file: the command as a child
process with its own XDG folders, accounts files written from dicts, and mail put into a
popbox Maildir the way an MTA does (tmp/, then a rename into new/)."""

from __future__ import annotations

import asyncio
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
