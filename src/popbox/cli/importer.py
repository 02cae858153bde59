"""`popbox import --config X`: copy Maildirs into the postgres store of configuration X,
keeping their UIDLs (popbox.store.pg_import), with a progress bar.

What is copied:

* `--maildir PATH --user NAME`: one maildir, into NAME's mailbox;
* otherwise every user of a passwd-file (`--passwd-file`, default `auth.passwd_file`),
  each from the maildir its entry names (`userdb_mail=`, else the `--mail-location`
  template, default popbox's Maildir default `/var/vmail/{domain}/{local}/Maildir`).

Each user's mailbox is the location the configured userdb gives (or `auth.mail_location`
expanded, `{user}` by default). `--uidl-import dovecot|courier` reuses the UIDLs that
server gave out, as the Maildir store's `store.uidl_import` does. Re-running is safe and
resumes: messages already there are skipped. Exit status: 0 all copied, 1 something is
left for the next run (a busy maildir, database trouble), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from popbox.auth.base import UserDB, UserInfo
from popbox.auth.names import expand_location, normalize_username, valid_username
from popbox.auth.passwd_file import PasswdFile, list_users
from popbox.cli.common import DEFAULT_CONFIG, opened
from popbox.config import AuthSection, Config, load
from popbox.pg.pool import DB_ERRORS
from popbox.store.maildir_import import UidlImport
from popbox.store.pg_import import Counts, Source, count_files, import_maildir

if TYPE_CHECKING:
    from popbox.store.postgres import PostgresStore

DEFAULT_MAILDIRS = str(AuthSection.model_fields["mail_location"].default)


def _error(message: str) -> int:
    print(f"popbox: {message}", file=sys.stderr)
    return 2


def _strip_type(location: str) -> str:
    return location.removeprefix("maildir:")


async def _sources(
    args: argparse.Namespace, config: Config, userdb: UserDB
) -> list[Source] | str:
    pairs: list[tuple[str, str]] = []
    if args.maildir is not None:
        pairs.append((args.user, str(args.maildir)))
    else:
        path = args.passwd_file or config.auth.passwd_file
        try:
            names = list_users(path)
        except OSError as exc:
            return f"cannot read {path}: {exc.strerror}"
        old = PasswdFile(path, args.mail_location or DEFAULT_MAILDIRS)
        for name in names:
            info = await old.lookup(name)
            if isinstance(info, UserInfo):
                pairs.append((name, _strip_type(info.mail_location)))
    sources = []
    for name, maildir in pairs:
        target = await userdb.lookup(name)
        mailbox = (
            target.mail_location if isinstance(target, UserInfo)
            else expand_location(config.auth.mail_location, name, None) or name
        )
        sources.append(Source(normalize_username(name), maildir, args.mailbox or mailbox))
    return sources


async def _import(args: argparse.Namespace, config: Config, console: Console) -> int:
    from popbox.store.postgres import PostgresStore
    from popbox.store.routing import default_store

    async with opened(config) as backends:
        store = default_store(backends.store)
        assert isinstance(store, PostgresStore)
        found = await _sources(args, config, backends.userdb)
        if isinstance(found, str):
            return _error(found)
        return await _import_all(args, store, found, console)


async def _import_all(
    args: argparse.Namespace, store: PostgresStore, found: list[Source], console: Console
) -> int:
    uidl_import: UidlImport | None = args.uidl_import
    total = Counts()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, disable=args.quiet) as progress:
            sizes = [await asyncio.to_thread(count_files, s.maildir) for s in found]
            task = progress.add_task("importing", total=sum(sizes))
            done = 0
            for source, size in zip(found, sizes, strict=True):
                progress.update(task, description=source.user)
                counts = await import_maildir(
                    store, source, uidl_import, lambda n: progress.advance(task, n))
                done += size
                progress.update(task, completed=done)
                if counts.busy:
                    console.print(f"{source.user}: maildir in use, not imported: run again")
                total.add(counts)
    except DB_ERRORS as exc:
        console.print(f"popbox: database: {exc or type(exc).__name__}")
        return 1
    print(f"{len(found)} maildirs: {total.imported} messages imported, {total.skipped} "
          f"already there, {total.missing} vanished, {total.failed} failed")
    return 1 if total.failed or total.busy else 0


def _run(args: argparse.Namespace) -> int:
    config = load(args.config)
    if config.store.backend != "postgres":
        return _error(f"{args.config}: store.backend is not \"postgres\"")
    if (args.maildir is None) != (args.user is None):
        return _error("--maildir and --user go together")
    if args.user is not None and not valid_username(args.user):
        return _error(f"{args.user!r} is not a valid user name")
    return asyncio.run(_import(args, config, Console(stderr=True)))


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `import` to the `popbox` command's subparsers."""
    cmd = sub.add_parser("import", help="copy Maildirs into the PostgreSQL store")
    cmd.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    cmd.add_argument("--passwd-file", type=Path, help="users to import (default auth.passwd_file)")
    cmd.add_argument("--mail-location", help=f"their maildirs (default {DEFAULT_MAILDIRS})")
    cmd.add_argument("--maildir", type=Path, help="import this one maildir (with --user)")
    cmd.add_argument("--user", help="the owner of --maildir")
    cmd.add_argument("--mailbox", help="the target mailbox (default: the user's location)")
    cmd.add_argument("--uidl-import", choices=("dovecot", "courier"),
                     help="reuse the UIDLs Dovecot or Courier gave out")
    cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    cmd.set_defaults(func=_run)
