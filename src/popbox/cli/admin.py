"""`popbox who [USER]`, `popbox kick USER|--ip ADDR`, `popbox reload`, `popbox stats`:
requests to a running server's admin socket (`[admin] socket` of `--config`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from popbox.cli.common import DEFAULT_CONFIG
from popbox.config import ConfigError, load

COLUMNS = ("user", "ip", "since", "state", "tls", "mechanism", "bytes", "worker")


def socket_path(config: Path) -> Path:
    """`[admin] socket` of `config`; from a file the server would refuse (a reload of it is
    refused, saying why) as long as that key can be read."""
    try:
        path = load(config).admin.socket
    except ConfigError as exc:
        try:
            raw = tomllib.loads(config.read_text()).get("admin", {}).get("socket")
        except (OSError, ValueError, AttributeError):
            raise exc from None
        if not isinstance(raw, str):
            raise
        path = config.resolve().parent / raw
    if path is None:
        raise ConfigError(f"{config}: admin.socket is not set")
    return path


def _ask(args: argparse.Namespace, request: dict[str, Any]) -> dict[str, Any] | None:
    from popbox.server.admin import ask

    path = socket_path(args.config)
    try:
        answer = ask(path, request)
    except OSError as exc:
        print(f"popbox: {path}: {exc.strerror or exc}", file=sys.stderr)
        return None
    if not answer.get("ok"):
        print(f"popbox: {answer.get('error', 'refused')}", file=sys.stderr)
        return None
    return answer


def _who(args: argparse.Namespace) -> int:
    answer = _ask(args, {"command": "who", "user": args.user})
    if answer is None:
        return 1
    sessions = sorted(answer["sessions"], key=lambda s: (s["since"], s["ip"]))
    if args.json:
        print(json.dumps(sessions, indent=2))
        return 0
    rows = [COLUMNS] + [
        tuple(
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["since"])) if key == "since"
            else str(s.get(key) or "-")
            for key in COLUMNS
        )
        for s in sessions
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())
    return 0


def _kick(args: argparse.Namespace) -> int:
    if (args.user is None) == (args.ip is None):
        print("popbox kick: give a user or --ip ADDRESS", file=sys.stderr)
        return 2
    answer = _ask(args, {"command": "kick", "user": args.user, "ip": args.ip})
    if answer is None:
        return 1
    count = int(answer["kicked"])
    print(f"{count} session{'s' if count != 1 else ''} ended")
    return 0


def _reload(args: argparse.Namespace) -> int:
    answer = _ask(args, {"command": "reload"})
    if answer is None:
        return 1
    workers = answer.get("workers", 1)
    print(f"configuration reloaded ({workers} worker{'s' if workers != 1 else ''})")
    for item in answer.get("restart", []):
        print(f"  not applied until a restart: {item}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    answer = _ask(args, {"command": "stats"})
    if answer is None:
        return 1
    for line in str(answer["text"]).splitlines():
        if line and not line.startswith("#") and not line.startswith("popbox_build"):
            print(line)
    return 0


def add_commands(sub: Any) -> None:
    def command(name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
        parser.set_defaults(func=func)
        return parser

    who = command("who", "list the sessions of a running server", _who)
    who.add_argument("user", nargs="?")
    who.add_argument("--json", action="store_true", help="print JSON")
    kick = command("kick", "end sessions without deleting anything", _kick)
    kick.add_argument("user", nargs="?")
    kick.add_argument("--ip", help="every session from this client address")
    command("reload", "re-read the configuration and the users file", _reload)
    command("stats", "print the server's counters", _stats)
