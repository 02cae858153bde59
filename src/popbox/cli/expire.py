"""`popbox expire --config X [--dry-run]`: one retention pass over every user's maildrop
(RFC 2449 §6.7 EXPIRE), meant for a timer (systemd, cron).

Each user of the configured userdb gets the policy of popbox.store.expire: their own
`expire_days` (userdb field) or `store.expire_days`, and `store.expire_unretrieved`.
Messages retrieved that many days ago are deleted through the store's commit, as a
client's DELE + QUIT would be; unretrieved ones are kept unless expire_unretrieved. A
maildrop in use by a session is left for the next pass. `--dry-run` counts without
deleting. Prints one line per maildrop that had something to expire or failed, then a
total. Exit status: 0 done, 1 something was left for the next pass, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from popbox.auth.base import Directory, UserInfo
from popbox.config import Config, load
from popbox.server.backends import build
from popbox.server.context import Backends
from popbox.store.base import Failure
from popbox.store.expire import Outcome, Policy, expire, user_days


async def run(
    config: Config, *, now: float, dry_run: bool = False,
    backends: Backends | None = None, say: Callable[[str], None] = print,
) -> int:
    """One pass at `now` (seconds since the epoch); the exit status."""
    from popbox.cli.lmtp import close_backends

    own = backends is None
    used = build(config) if backends is None else backends
    try:
        return await _pass(config, used, now, dry_run, say)
    finally:
        if own:
            await close_backends(used)


async def _pass(
    config: Config, backends: Backends, now: float, dry_run: bool, say: Callable[[str], None]
) -> int:
    userdb = backends.userdb
    if not isinstance(userdb, Directory):
        say("popbox: the userdb cannot list its users")
        return 1
    names = await userdb.names()
    if not isinstance(names, list):
        say("popbox: the userdb could not be read")
        return 1
    store = config.store
    left = expired = users = 0
    verb = "would expire" if dry_run else "expired"
    for name in names:
        info = await userdb.lookup(name)
        if not isinstance(info, UserInfo):
            continue
        policy = Policy(user_days(info.extra, store.expire_days), store.expire_unretrieved)
        if policy.days is None:
            continue
        users += 1
        result = await expire(backends.store, info.mail_location, policy, now, dry_run=dry_run)
        match result:
            case Outcome(messages, count):
                expired += count
                if count:
                    say(f"{name}: {verb} {count} of {messages} messages")
            case Failure.IN_USE:
                left += 1
                say(f"{name}: maildrop in use, left for the next pass")
            case Failure.PERMANENT:
                left += 1
                say(f"{name}: maildrop cannot be opened or does not keep retrieval times")
            case Failure():
                left += 1
                say(f"{name}: temporary failure, left for the next pass")
    say(f"{users} maildrops with a retention policy: {verb} {expired} messages"
        + (f", {left} left for the next pass" if left else ""))
    return 1 if left else 0


def _run(args: argparse.Namespace) -> int:
    config = load(args.config)
    return asyncio.run(run(config, now=time.time(), dry_run=args.dry_run))


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `expire` to the `popbox` command's subparsers."""
    cmd = sub.add_parser("expire", help="delete retrieved messages older than the retention")
    cmd.add_argument("--config", type=Path, default=Path("/etc/popbox/popbox.toml"))
    cmd.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    cmd.set_defaults(func=_run)
