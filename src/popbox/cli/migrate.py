"""`popbox migrate dovecot` and `popbox uidl audit`: moving from Dovecot.

`popbox migrate dovecot [DIR_OR_FILE]` reads a Dovecot 2.3 or 2.4 configuration
(popbox.migrate.dovecot_conf, with its includes) and writes the popbox.toml it converts
to (popbox.migrate.dovecot_map) on standard output, or atomically into `--output FILE`
(mode 0600). Every setting that did not carry over is one line on standard error,
``file:line: what and why``. The result is checked by popbox's own configuration loader
before it is written. Exit status: 0 written, 1 the result failed popbox's checks (a
defect), 2 the Dovecot configuration could not be read.

`popbox uidl audit --config X --compare HOST:PORT --user U` logs in to the old server
as U (password from `--password-file` or $POPBOX_FETCH_PASSWORD, as `popbox fetch`),
lists its UIDLs (RFC 1939 §7) and QUITs without deleting anything; then asks popbox's
configured passdb whether it accepts the same password, and lists the UIDLs popbox
would serve U through the configured store. The store's maildrop lock is taken for the
listing only and released at once, so a popbox session for U at that moment makes the
audit fail with "in use" rather than wait. The old server is asked first, so mail it
numbers during the audit is in its uidlist when popbox reads it. Started as root with
`server.user` set, the audit becomes that user first, as `popbox serve` does, so what
the store writes into a maildir (its lock file, its size cache) is that user's. Exit status: 0 the
same UIDLs and the password accepted, 1 they differ, 2 the comparison could not be made.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import tomllib
from pathlib import Path

from popbox.config import Config, ConfigError, from_dict, load, parse_address

DEFAULT_DOVECOT = Path("/etc/dovecot")
SECTION_ORDER = ("server", "tls", "auth", "store", "limits", "postgres")
SHOWN = 10  # differing UIDLs listed of each kind, unless --verbose


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `migrate dovecot` and `uidl audit` to the `popbox` command's subparsers."""
    migrate = sub.add_parser("migrate", help="write a popbox.toml from another server's "
                             "configuration")
    kinds = migrate.add_subparsers(dest="source", required=True)
    dovecot = kinds.add_parser("dovecot", help="from a Dovecot 2.3 or 2.4 configuration")
    dovecot.add_argument("path", nargs="?", type=Path, default=DEFAULT_DOVECOT,
                         help="dovecot.conf or its folder (default /etc/dovecot)")
    dovecot.add_argument("--output", type=Path, help="write here (mode 0600) instead of "
                         "standard output")
    dovecot.set_defaults(func=_migrate_dovecot)

    uidl = sub.add_parser("uidl", help="UIDL tools")
    verbs = uidl.add_subparsers(dest="verb", required=True)
    audit = verbs.add_parser("audit", help="compare the UIDLs popbox would serve a user "
                             "with the old server's")
    audit.add_argument("--config", type=Path, default=Path("/etc/popbox/popbox.toml"))
    audit.add_argument("--compare", required=True, metavar="HOST:PORT",
                       help="the old POP3 server")
    audit.add_argument("--user", required=True)
    audit.add_argument("--password-file", type=Path, help="the password is its first line")
    audit.add_argument("--tls", choices=("implicit", "starttls", "none"),
                       help="default: implicit on port 995, starttls on any other port")
    audit.add_argument("--cafile", type=Path, help="trust the CA certificates in this file")
    audit.add_argument("--insecure", action="store_true",
                       help="do not verify the old server's certificate")
    audit.add_argument("--allow-plaintext", action="store_true",
                       help="allow sending the password unencrypted to a remote server")
    audit.add_argument("--timeout", type=float, default=60.0)
    audit.add_argument("-v", "--verbose", action="store_true",
                       help="list every differing UIDL")
    audit.set_defaults(func=_audit)


def _error(message: str) -> int:
    print(f"popbox: {message}", file=sys.stderr)
    return 2


# --- migrate dovecot ---


def _migrate_dovecot(args: argparse.Namespace) -> int:
    from popbox.migrate import dovecot_files, dovecot_map
    from popbox.migrate.dovecot_conf import ParseError
    from popbox.migrate.toml_out import render

    main = dovecot_files.config_file(args.path)
    try:
        tree = dovecot_files.read_config(args.path)
    except OSError as exc:
        return _error(f"cannot read {main}: {exc.strerror or exc}")
    except ParseError as exc:
        return _error(f"not a Dovecot configuration: {exc}")
    result = dovecot_map.convert(tree, dovecot_files.LocalHost())
    header = [
        f"popbox.toml converted by `popbox migrate dovecot` from {main}",
        f"(Dovecot {result.version} syntax). {len(result.notes)} note(s) on what did not "
        "carry over",
        "were printed with it. Check it with `popbox check-config`.",
    ]
    if result.sql_copy is not None:
        header += ["", "Dovecot's users, in the columns of popbox's users table:",
                   result.sql_copy]
    comments = {key: f"from {where}" for key, where in result.origins.items()}
    order = {name: n for n, name in enumerate(SECTION_ORDER)}
    sections = dict(sorted(result.sections.items(), key=lambda kv: order.get(kv[0], 99)))
    text = render(sections, header, comments)
    try:
        from_dict(tomllib.loads(text), "<converted>")
    except (tomllib.TOMLDecodeError, ConfigError) as exc:
        print(f"popbox: the converted configuration does not pass popbox's checks "
              f"(please report this):\n{exc}", file=sys.stderr)
        return 1
    for note in result.notes:
        line = str(note) if note.where is not None else f"{main}: {note.text}"
        print(line, file=sys.stderr)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        _write_private(args.output, text.encode())
    except OSError as exc:
        return _error(f"cannot write {args.output}: {exc.strerror or exc}")
    return 0


def _write_private(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all, readable by its owner only (it may name a
    database password): fsynced, as a configuration file must survive a crash."""
    from popbox.fsutil import write_atomic

    write_atomic(path, data, mode=0o600)


# --- uidl audit ---


def _password(args: argparse.Namespace) -> str | None:
    from popbox.cli.fetch import PASSWORD_ENV

    if args.password_file is not None:
        try:
            text = args.password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"popbox: cannot read {args.password_file}: {exc}", file=sys.stderr)
            return None
        return text.splitlines()[0] if text else None
    return os.environ.get(PASSWORD_ENV) or None


def _context(args: argparse.Namespace) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=args.cafile)
    if args.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _Failed(Exception):
    """The comparison could not be made; the message says why."""


async def _old_uidls(args: argparse.Namespace, host: str, port: int, password: str,
                     context: ssl.SSLContext | None) -> list[str]:
    from popbox import client

    tls: client.Tls = args.tls or ("implicit" if port == 995 else "starttls")
    try:
        async with await client.connect(host, port, tls=tls, ssl_context=context,
                                        timeout=args.timeout) as pop:
            await pop.login(args.user, password, allow_plaintext=args.allow_plaintext)
            listing = await pop.uidl()
    except (client.PopError, client.PopClientError) as exc:
        raise _Failed(f"{host}:{port}: {exc}") from None
    return [str(listing[number]) for number in sorted(listing)]


async def _popbox_uidls(args: argparse.Namespace, config: Config, password: str
                        ) -> tuple[list[str], bool]:
    from popbox.auth.base import Secret, UserInfo, Verdict
    from popbox.cli.common import opened
    from popbox.store.base import Failure

    async with opened(config) as backends:
        verdict = await backends.passdb.verify(args.user, Secret(password.encode()))
        if verdict is Verdict.TEMPORARY:
            who = f" by {config.server.user}" if config.server.user else ""
            raise _Failed(f"popbox's password database cannot be read{who} now")
        info = await backends.userdb.lookup(args.user)
        if not isinstance(info, UserInfo):
            raise _Failed(f"popbox's user database does not know {args.user}")
        maildrop = await backends.store.open(info.mail_location)
        if isinstance(maildrop, Failure):
            what = {Failure.IN_USE: "in use by a popbox session: try again"}.get(
                maildrop, maildrop.value)
            raise _Failed(f"{args.user}'s maildrop {info.mail_location}: {what}")
        try:
            uidls = [str(uidl) for uidl in maildrop.messages.uidls]
        finally:
            await maildrop.release()
    return uidls, verdict is Verdict.OK


def _show(kind: str, uidls: list[str], verbose: bool) -> None:
    shown = uidls if verbose else uidls[:SHOWN]
    for uidl in shown:
        print(f"  {kind}: {uidl}")
    if len(shown) < len(uidls):
        print(f"  ... and {len(uidls) - len(shown)} more (--verbose lists them)")


def _audit(args: argparse.Namespace) -> int:
    try:
        host, port = parse_address(args.compare)
    except ValueError:
        return _error(f"--compare {args.compare!r} is not HOST:PORT")
    password = _password(args)
    if password is None:
        return _error("no password: use --password-file or $POPBOX_FETCH_PASSWORD")
    config = load(args.config)
    tls = args.tls or ("implicit" if port == 995 else "starttls")
    try:
        context = None if tls == "none" else _context(args)
    except (OSError, ssl.SSLError) as exc:
        return _error(f"cannot load {args.cafile}: {exc}")
    if os.geteuid() == 0 and config.server.user is not None:
        # Read the maildrops as `popbox serve` does: files the store makes there (its
        # lock and size cache) must belong to the user popbox serves as, not to root.
        from popbox import privileges

        try:
            privileges.drop(config.server.user, config.server.group, config.server.allow_root)
        except privileges.PrivilegeError as exc:
            return _error(str(exc))

    async def both() -> tuple[list[str], list[str], bool]:
        old = await _old_uidls(args, host or "127.0.0.1", port, password, context)
        mine, accepted = await _popbox_uidls(args, config, password)
        return old, mine, accepted

    try:
        old, mine, accepted = asyncio.run(both())
    except _Failed as exc:
        return _error(str(exc))
    old_set, mine_set = set(old), set(mine)
    only_mine = [u for u in mine if u not in old_set]
    only_old = [u for u in old if u not in mine_set]
    print(f"{args.user}: popbox would serve {len(mine)} message(s), {args.compare} serves "
          f"{len(old)}")
    print(f"same: {len(mine_set & old_set)}")
    print(f"only popbox: {len(only_mine)}")
    _show("only popbox", only_mine, args.verbose)
    print(f"only old: {len(only_old)}")
    _show("only old", only_old, args.verbose)
    if not accepted:
        print(f"popbox does not accept the password {args.compare} accepted for {args.user}")
    return 0 if accepted and not only_mine and not only_old else 1
