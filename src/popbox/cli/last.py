"""`popbox last USER [--config X] [--json]`: when USER last logged in over POP3, and from
which address (`server.last_login = true`, popbox.store.last_login); "never" when there
is no record.

The record is read with the identity that owns the mail, as the server reads it: a user
with a uid of their own is read as that uid (started as root, the command takes it on for
good, within `auth.first_valid_uid`/`first_valid_gid`), everyone else as `server.user`.
Exit status: 0 (a record or "never"), 1 the user is unknown or the record cannot be read,
2 usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from popbox.auth.base import UserInfo
from popbox.backends import build
from popbox.config import Config, load
from popbox.store.base import Failure
from popbox.store.last_login import LastLogin, Recorded


def _take_identity(config: Config, info: UserInfo) -> str | None:
    """Become whoever reads `info`'s mail; why not, if that cannot be."""
    from popbox.mailowner import Owner, become, owner_of
    from popbox.privileges import PrivilegeError, drop

    owner = owner_of(info, config)
    if isinstance(owner, Owner) and os.geteuid() == 0:
        try:
            become(owner)
        except OSError as exc:
            return f"cannot take on uid {owner.uid}: {exc.strerror or exc}"
        return None
    if owner is not None and not isinstance(owner, Owner):
        return f"{info.name}'s mail is not read: {owner.value}"
    try:
        drop(config.server.user, config.server.group, config.server.allow_root)
    except PrivilegeError as exc:
        return str(exc)
    return None


async def lookup(config: Config, user: str) -> LastLogin | str | None:
    """USER's record, None for never, or what went wrong."""
    backends = build(config)
    try:
        info = await backends.userdb.lookup(user)
        if not isinstance(info, UserInfo):
            return f"no such user: {user}" if info is None else "the user database failed"
        problem = _take_identity(config, info)
        if problem is not None:
            return problem
        store = backends.store
        if not isinstance(store, Recorded):
            return f"the {config.store.backend} store keeps no last login records"
        found = await store.last_login(info.mail_location)
    finally:
        await backends.aclose()
    if isinstance(found, Failure):
        return f"{user}'s last login record cannot be read ({found.value})"
    return found


def describe(user: str, found: LastLogin | None) -> str:
    if found is None:
        return f"{user}: never"
    when = datetime.fromtimestamp(found.when, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{user}: {when} from {found.address}"


def _run(args: argparse.Namespace) -> int:
    config = load(args.config)
    found = asyncio.run(lookup(config, args.user))
    if isinstance(found, str):
        print(f"popbox: {found}", file=sys.stderr)
        return 1
    if args.json:
        record = None if found is None else {"time": found.when, "address": found.address}
        print(json.dumps({"user": args.user, "last_login": record}))
    else:
        print(describe(args.user, found))
    if not config.server.last_login:
        print("popbox: note: server.last_login is off, so logins are not being recorded",
              file=sys.stderr)
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("last", help="when a user last logged in, and from where")
    cmd.add_argument("user")
    cmd.add_argument("--config", type=Path, default=Path("/etc/popbox/popbox.toml"))
    cmd.add_argument("--json", action="store_true", help="one JSON object")
    cmd.set_defaults(func=_run)
