"""`popbox expire --config X [--dry-run]`: one retention pass over every user's maildrop
(RFC 2449 §6.7 EXPIRE), meant for a timer (systemd, cron); and `popbox undelete USER
[--since TIME]`, which puts back what that user's clients deleted (`store.deleted =
"trash"`).

Each user of the configured userdb gets the policy of popbox.store.expire: their own
`expire_days` (userdb field) or `store.expire_days`, and `store.expire_unretrieved`.
Messages retrieved that many days ago are deleted through the store's commit, as a
client's DELE + QUIT would be; unretrieved ones are kept unless expire_unretrieved. A
maildrop in use by a session is left for the next pass. `--dry-run` counts without
deleting. With `store.deleted = "trash"` the pass also purges what was deleted
`store.trash_days` ago. Prints one line per maildrop that had something to expire or
failed, then a total. Exit status: 0 done, 1 something was left for the next pass, 2 usage.

`popbox undelete` takes the maildrop lock as a session does (a user logged in right now
gets "in use": try again after QUIT) and puts back, with the UIDLs they had, the messages
deleted at or after `--since` (an ISO 8601 time, or `3d`, `12h`, `30m` ago), else all.

Started as root, both become `server.user` first, as `popbox serve` does, so that what
they write into a maildir belongs to the mail owner.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from popbox.auth.base import Directory, UserInfo
from popbox.backends import Backends, build
from popbox.config import Config, load
from popbox.store.base import Failure, Trash
from popbox.store.expire import DAY, Outcome, Policy, expire, user_days


async def run(
    config: Config, *, now: float, dry_run: bool = False,
    backends: Backends | None = None, say: Callable[[str], None] = print,
) -> int:
    """One pass at `now` (seconds since the epoch); the exit status."""


    own = backends is None
    used = build(config) if backends is None else backends
    try:
        return await _pass(config, used, now, dry_run, say)
    finally:
        if own:
            await used.aclose()


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
    left = expired = users = purged = 0
    verb = "would expire" if dry_run else "expired"
    trash = backends.store if store.deleted == "trash" and not dry_run else None
    for name in names:
        info = await userdb.lookup(name)
        if not isinstance(info, UserInfo):
            continue
        if isinstance(trash, Trash):
            emptied = await trash.purge(info.mail_location, now - store.trash_days * DAY)
            if isinstance(emptied, Failure):
                left += 1
                say(f"{name}: trash not purged ({emptied.value}), left for the next pass")
            elif emptied:
                purged += emptied
                say(f"{name}: purged {emptied} deleted messages from the trash")
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
        + (f", {purged} purged from the trash" if purged else "")
        + (f", {left} left for the next pass" if left else ""))
    return 1 if left else 0


_AGO = re.compile(r"(\d+)([dhm])")
_UNIT = {"d": DAY, "h": 3600.0, "m": 60.0}


def parse_since(text: str, now: float) -> float | None:
    """`--since`: an ISO 8601 time (local time unless it has an offset) or `<n>d|h|m` ago;
    None if it is neither."""
    ago = _AGO.fullmatch(text)
    if ago:
        return now - int(ago.group(1)) * _UNIT[ago.group(2)]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


async def undelete(
    config: Config, user: str, since: float | None, *, backends: Backends | None = None,
    say: Callable[[str], None] = print,
) -> int:
    """Put back `user`'s deleted messages (deleted at or after `since`); the exit status."""


    used = build(config) if backends is None else backends
    try:
        info = await used.userdb.lookup(user)
        if not isinstance(info, UserInfo):
            say(f"popbox: {user}: " + ("no such user" if info is None else "userdb trouble"))
            return 1
        store = used.store
        if not isinstance(store, Trash):
            say(f"popbox: the {config.store.backend} store does not keep deleted messages")
            return 1
        result = await store.undelete(info.mail_location, since)
    finally:
        if backends is None:
            await used.aclose()
    match result:
        case Failure.IN_USE:
            say(f"popbox: {user}: maildrop in use by a session, try again after it ends")
            return 1
        case Failure():
            say(f"popbox: {user}: the maildrop could not be changed ({result.value})")
            return 1
        case count:
            say(f"{user}: {count} messages put back")
            return 0


def _as_mail_owner(config: Config) -> bool:
    """Become `server.user` as `popbox serve` does, so that files made or replaced in a
    maildrop belong to the mail owner; False (after saying why) if that cannot be."""
    from popbox.privileges import PrivilegeError, drop

    try:
        drop(config.server.user, config.server.group, config.server.allow_root)
    except PrivilegeError as exc:
        print(f"popbox: {exc}", file=sys.stderr)
        return False
    return True


def _run(args: argparse.Namespace) -> int:
    config = load(args.config)
    if not _as_mail_owner(config):
        return 2
    return asyncio.run(run(config, now=time.time(), dry_run=args.dry_run))


def _undelete(args: argparse.Namespace) -> int:
    config = load(args.config)
    since = None
    if args.since is not None:
        since = parse_since(args.since, time.time())
        if since is None:
            print(f"popbox: --since {args.since!r}: give an ISO 8601 time or 3d, 12h, 30m",
                  file=sys.stderr)
            return 2
    if not _as_mail_owner(config):
        return 2
    return asyncio.run(undelete(config, args.user, since))


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `expire` and `undelete` to the `popbox` command's subparsers."""
    cmd = sub.add_parser("expire", help="delete retrieved messages older than the retention")
    cmd.add_argument("--config", type=Path, default=Path("/etc/popbox/popbox.toml"))
    cmd.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    cmd.set_defaults(func=_run)
    back = sub.add_parser("undelete", help="put back a user's deleted messages (trash)")
    back.add_argument("user")
    back.add_argument("--config", type=Path, default=Path("/etc/popbox/popbox.toml"))
    back.add_argument("--since", help="only those deleted since: ISO 8601 time, or 3d/12h/30m ago")
    back.set_defaults(func=_undelete)
