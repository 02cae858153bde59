"""`popbox user add|passwd|del|list` (edit a passwd-file) and `popbox pw` (hash a password,
like `doveadm pw`).

Passwords come from `--password-stdin` (one line) or are asked twice with `getpass`, never
from the command line of `user` (where other users could read it in the process list);
`pw -p` exists for `doveadm pw` compatibility. No password is ever printed (except the
`{PLAIN}` value that `pw -s PLAIN` is asked for). Every command returns an exit status:
0 done, 1 failed (the user exists, is unknown, the file cannot be written), 2 usage.

Where the users are: `--file PATH` (default /etc/popbox/users), or `--config X`, which
takes `auth.backend` of that configuration: its `auth.passwd_file`, or the PostgreSQL
`users` table of its `[postgres]` database (popbox.auth.postgres_admin).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from popbox.auth import passwd_file, schemes
from popbox.auth.names import normalize_username, valid_username
from popbox.config import Config, load

DEFAULT_FILE = Path("/etc/popbox/users")
OK, FAILED, USAGE = 0, 1, 2


def _error(message: str) -> None:
    print(f"popbox: {message}", file=sys.stderr)


def _read_password(from_stdin: bool) -> bytes | None:
    """One line of stdin, or asked twice without echo. None (after saying why) on failure."""
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            _error("no password on standard input")
            return None
        password = line.removesuffix("\n").removesuffix("\r")
    else:
        password = getpass.getpass("New password: ")
        if getpass.getpass("Retype new password: ") != password:
            _error("the passwords do not match")
            return None
    if not password:
        _error("an empty password is refused")
        return None
    return password.encode("utf-8", "surrogateescape")


def _hash(args: argparse.Namespace) -> str | None:
    password = _read_password(args.password_stdin)
    if password is None:
        return None
    try:
        return schemes.make(password, args.scheme)
    except ValueError as exc:
        _error(str(exc))
        return None


def _known(path: Path, name: str) -> bool | None:
    """Whether the file has the user; None (after saying why) if it cannot be read."""
    try:
        return name in passwd_file.list_users(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        _error(f"cannot read {path}: {exc.strerror}")
        return None


def _finish(path: Path | str, name: str, result: passwd_file.Edit, done: str) -> int:
    name = normalize_username(name)
    if result is passwd_file.Edit.DONE:
        print(f"{name}: {done}")
        return OK
    _error(f"{name}: {result.value} in {path}")
    return FAILED


def _valid(name: str) -> bool:
    if valid_username(name) and ":" not in name:
        return True
    _error(f"{name!r} is not a valid user name")
    return False


def _add(args: argparse.Namespace) -> int:
    if not _valid(args.name):
        return USAGE
    known = _known(args.file, args.name)
    if known is None:
        return FAILED
    if known:
        return _finish(args.file, args.name, passwd_file.Edit.EXISTS, "")
    hashed = _hash(args)
    if hashed is None:
        return FAILED
    extra = [f"userdb_mail={args.mail}"] if args.mail else []
    try:
        result = passwd_file.add_user(args.file, args.name, hashed, home=args.home, extra=extra)
    except ValueError as exc:
        _error(str(exc))
        return USAGE
    except OSError as exc:
        _error(f"cannot update {args.file}: {exc.strerror}")
        return FAILED
    return _finish(args.file, args.name, result, "added")


def _passwd(args: argparse.Namespace) -> int:
    if not _valid(args.name):
        return USAGE
    known = _known(args.file, args.name)
    if not known:
        if known is False:
            _error(f"{args.name}: no such user in {args.file}")
        return FAILED
    hashed = _hash(args)
    if hashed is None:
        return FAILED
    try:
        result = passwd_file.set_password(args.file, args.name, hashed)
    except OSError as exc:
        _error(f"cannot update {args.file}: {exc.strerror}")
        return FAILED
    return _finish(args.file, args.name, result, "password changed")


def _delete(args: argparse.Namespace) -> int:
    if not _valid(args.name):
        return USAGE
    try:
        result = passwd_file.delete_user(args.file, args.name)
    except OSError as exc:
        _error(f"cannot update {args.file}: {exc.strerror}")
        return FAILED
    return _finish(args.file, args.name, result, "deleted")


def _list(args: argparse.Namespace) -> int:
    try:
        names = passwd_file.list_users(args.file)
    except OSError as exc:
        _error(f"cannot read {args.file}: {exc.strerror}")
        return FAILED
    for name in names:
        print(name)
    return OK


# --- the postgres userdb (auth.backend = "postgres") ------------------------------------

_IN_DB = "the database"


def _pg(config: Config, op: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    """Run `op(connection)` against the configured database; None (after saying why) if
    the database cannot be used."""
    from popbox.backends import database
    from popbox.pg import schema as pg_schema
    from popbox.pg.pool import DB_ERRORS

    async def main() -> Any:
        conn = await database(config).connect()
        try:
            if (await pg_schema.current_version(conn) or 0) < pg_schema.LATEST:
                _error("the database schema is not up to date: run `popbox db upgrade`")
                return None
            return await op(conn)
        finally:
            await conn.close()

    try:
        return asyncio.run(main())
    except DB_ERRORS as exc:
        _error(f"database: {exc or type(exc).__name__}")
        return None


def _pg_add(args: argparse.Namespace, config: Config) -> int:
    from popbox.auth import postgres_admin

    if not _valid(args.name):
        return USAGE
    hashed = _hash(args)
    if hashed is None:
        return FAILED
    result = _pg(config, lambda conn: postgres_admin.add_user(
        conn, args.name, hashed, mail=args.mail, home=args.home))
    return FAILED if result is None else _finish(_IN_DB, args.name, result, "added")


def _pg_passwd(args: argparse.Namespace, config: Config) -> int:
    from popbox.auth import postgres_admin

    if not _valid(args.name):
        return USAGE
    known = _pg(config, postgres_admin.list_users)
    if known is None:
        return FAILED
    if normalize_username(args.name) not in known:
        _error(f"{args.name}: no such user in {_IN_DB}")
        return FAILED
    hashed = _hash(args)
    if hashed is None:
        return FAILED
    result = _pg(config, lambda conn: postgres_admin.set_password(conn, args.name, hashed))
    return FAILED if result is None else _finish(_IN_DB, args.name, result, "password changed")


def _pg_delete(args: argparse.Namespace, config: Config) -> int:
    from popbox.auth import postgres_admin

    if not _valid(args.name):
        return USAGE
    result = _pg(config, lambda conn: postgres_admin.delete_user(conn, args.name))
    return FAILED if result is None else _finish(_IN_DB, args.name, result, "deleted")


def _pg_list(args: argparse.Namespace, config: Config) -> int:
    from popbox.auth import postgres_admin

    names = _pg(config, postgres_admin.list_users)
    if names is None:
        return FAILED
    for name in names:
        print(name)
    return OK


def _either(
    on_file: Callable[[argparse.Namespace], int],
    on_db: Callable[[argparse.Namespace, Config], int],
) -> Callable[[argparse.Namespace], int]:
    """The command for the users file, or for the database when --config says so."""

    def run(args: argparse.Namespace) -> int:
        if args.config is None:
            args.file = args.file or DEFAULT_FILE
            return on_file(args)
        if args.file is not None:
            _error("give --file or --config, not both")
            return USAGE
        config = load(args.config)
        if config.auth.backend == "postgres":
            return on_db(args, config)
        args.file = config.auth.passwd_file
        return on_file(args)

    return run


def _pw(args: argparse.Namespace) -> int:
    if args.password is not None:
        password: bytes | None = args.password.encode("utf-8", "surrogateescape")
    else:
        password = _read_password(args.password_stdin or not sys.stdin.isatty())
    if password is None:
        return FAILED
    try:
        print(schemes.make(password, args.scheme))
    except ValueError as exc:
        _error(str(exc))
        return FAILED
    return OK


def _scheme_option(parser: argparse.ArgumentParser, *flags: str) -> None:
    parser.add_argument(
        *flags,
        dest="scheme",
        type=str.upper,
        choices=schemes.SCHEMES,
        default="ARGON2ID",
        metavar="SCHEME",
        help="password scheme (default ARGON2ID; one of: %(choices)s)",
    )


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `user` and `pw` to the `popbox` command's subparsers."""
    file_option = argparse.ArgumentParser(add_help=False)
    file_option.add_argument(
        "--file", type=Path, default=None, help=f"users file (default {DEFAULT_FILE})"
    )
    file_option.add_argument(
        "--config", type=Path, default=None,
        help="use the users of this configuration (auth.backend: its file or PostgreSQL)",
    )
    password_options = argparse.ArgumentParser(add_help=False)
    _scheme_option(password_options, "--scheme")
    password_options.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )

    user = sub.add_parser("user", help="manage the users (file or PostgreSQL)")
    actions = user.add_subparsers(dest="action", required=True)

    add = actions.add_parser("add", parents=[file_option, password_options], help="add a user")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--home", help="home directory")
    add.add_argument("--mail", help="mail location for this user (userdb_mail)")
    add.set_defaults(func=_either(_add, _pg_add))

    change = actions.add_parser(
        "passwd", parents=[file_option, password_options], help="change a password"
    )
    change.add_argument("name", metavar="NAME")
    change.set_defaults(func=_either(_passwd, _pg_passwd))

    delete = actions.add_parser("del", parents=[file_option], help="delete a user")
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(func=_either(_delete, _pg_delete))

    listing = actions.add_parser("list", parents=[file_option], help="list the users")
    listing.set_defaults(func=_either(_list, _pg_list))

    pw = sub.add_parser("pw", help="hash a password (like doveadm pw)")
    _scheme_option(pw, "-s", "--scheme")
    pw.add_argument("-p", "--password", help="the password (visible to other users: avoid)")
    pw.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    pw.set_defaults(func=_pw)
