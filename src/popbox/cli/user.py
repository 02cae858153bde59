"""`popbox user add|passwd|del|list` (edit a passwd-file) and `popbox pw` (hash a password,
like `doveadm pw`).

Passwords come from `--password-stdin` (one line) or are asked twice with `getpass`, never
from the command line of `user` (where other users could read it in the process list);
`pw -p` exists for `doveadm pw` compatibility. No password is ever printed (except the
`{PLAIN}` value that `pw -s PLAIN` is asked for). Every command returns an exit status:
0 done, 1 failed (the user exists, is unknown, the file cannot be written), 2 usage.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from popbox.auth import passwd_file, schemes
from popbox.auth.names import normalize_username, valid_username

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


def _finish(path: Path, name: str, result: passwd_file.Edit, done: str) -> int:
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
        "--file", type=Path, default=DEFAULT_FILE, help=f"users file (default {DEFAULT_FILE})"
    )
    password_options = argparse.ArgumentParser(add_help=False)
    _scheme_option(password_options, "--scheme")
    password_options.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )

    user = sub.add_parser("user", help="manage the users file")
    actions = user.add_subparsers(dest="action", required=True)

    add = actions.add_parser("add", parents=[file_option, password_options], help="add a user")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--home", help="home directory")
    add.add_argument("--mail", help="mail location for this user (userdb_mail)")
    add.set_defaults(func=_add)

    change = actions.add_parser(
        "passwd", parents=[file_option, password_options], help="change a password"
    )
    change.add_argument("name", metavar="NAME")
    change.set_defaults(func=_passwd)

    delete = actions.add_parser("del", parents=[file_option], help="delete a user")
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(func=_delete)

    listing = actions.add_parser("list", parents=[file_option], help="list the users")
    listing.set_defaults(func=_list)

    pw = sub.add_parser("pw", help="hash a password (like doveadm pw)")
    _scheme_option(pw, "-s", "--scheme")
    pw.add_argument("-p", "--password", help="the password (visible to other users: avoid)")
    pw.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    pw.set_defaults(func=_pw)
