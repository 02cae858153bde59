"""`popbox fetch`: download mail from a POP3 server into a Maildir or an mbox file.

The password comes from `--password-file` (its first line), the keyring
(`--password-keyring ACCOUNT`, stored by `popbox fetch password set ACCOUNT`) or the
environment variable POPBOX_FETCH_PASSWORD, never from the command line (where `ps` would
show it). An OAuth2 access token (OAUTHBEARER, XOAUTH2) comes from `--token-command` or
from the grant `popbox fetch oauth login ACCOUNT` stored (`--oauth ACCOUNT`). Messages
are deleted from the server once their delivery is recorded, unless `--keep` (as
fetchmail does). See `popbox.client.fetcher` for how every message is delivered exactly
once.

Exit statuses (sysexits.h): 0 done (also when there was no new mail); 64 usage; 69 the
server lacks something needed ([SYS/PERM], UIDL with --keep, a login method); 74 the
destination or the state file cannot be written; 75 try again later (connection refused
or lost, timeout, TLS failure, [IN-USE], [LOGIN-DELAY], [SYS/TEMP], another fetch running
with the same state file); 76 the server broke the protocol; 77 the login was refused, or
no access token could be had; 78 the login would send the password unencrypted (use TLS,
or --allow-plaintext), the server's certificate is not the one --tls-fingerprint pins, or
the server does not do the STLS asked for.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import ssl
import sys
from pathlib import Path
from typing import NoReturn

from popbox.client import errors as er
from popbox.client.connection import Tls
from popbox.client.destinations import MaildirTarget, MboxTarget, Target, open_destination
from popbox.client.fetcher import AUTH_METHODS, Fetcher, Options, Report, Source
from popbox.client.mbox import MboxBusy
from popbox.client.oauth import OAuthTokens
from popbox.client.secret_store import SecretStoreError, keyring_password
from popbox.client.state import StateBusy, StateError, StateFile
from popbox.client.tls import parse_fingerprint
from popbox.client.tokens import TokenCommand, TokenError, TokenSource

EX_OK, EX_USAGE, EX_UNAVAILABLE, EX_IOERR, EX_TEMPFAIL = 0, 64, 69, 74, 75
EX_PROTOCOL, EX_NOPERM, EX_CONFIG = 76, 77, 78
PASSWORD_ENV = "POPBOX_FETCH_PASSWORD"  # noqa: S105 - the variable's name


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="popbox fetch",
        description="Download mail from a POP3 server into a Maildir or an mbox file, each "
        "message exactly once. The password is read from --password-file or from "
        f"${PASSWORD_ENV}.",
    )
    parser.add_argument("--server", required=True, help="the POP3 server's host name")
    parser.add_argument("--port", type=int, help="default: 995 with implicit TLS, else 110")
    parser.add_argument("--tls", choices=("implicit", "starttls", "none"),
                        help="default: implicit on port 995, starttls on any other port")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-file", type=Path, help="the password is its first line")
    parser.add_argument("--password-keyring", metavar="ACCOUNT",
                        help="the password stored by popbox fetch password set ACCOUNT")
    parser.add_argument("--token-command", type=shlex.split, metavar="'CMD ARG...'",
                        help="a program that prints an OAuth2 access token (split into "
                        "words as a shell would, never run by one)")
    parser.add_argument("--oauth", metavar="ACCOUNT",
                        help="access tokens from the grant of popbox fetch oauth login ACCOUNT")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--maildir", type=Path, help="deliver into this Maildir (created)")
    where.add_argument("--mbox", type=Path, help="append to this mbox file (mboxrd)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the messages on the server (default: delete them once "
                        "delivered)")
    parser.add_argument("--limit", type=int, help="fetch at most this many new messages")
    parser.add_argument("--state", type=Path, help="the state file (default: "
                        "$XDG_STATE_HOME/popbox/fetch.json)")
    parser.add_argument("--cafile", type=Path, help="trust the CA certificates in this file")
    parser.add_argument("--insecure", action="store_true",
                        help="do not verify the server's certificate")
    parser.add_argument("--tls-fingerprint", metavar="sha256:AB:CD:...",
                        help="accept only the server certificate with this SHA-256 digest")
    parser.add_argument("--tls-min-version", choices=("1.2", "1.3"),
                        help="the oldest TLS version to accept")
    parser.add_argument("--auth", choices=AUTH_METHODS, default="auto",
                        help="login method (default: the strongest the server offers)")
    parser.add_argument("--allow-plaintext", action="store_true",
                        help="allow sending the password unencrypted to a remote server")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the server at each step (default: 60)")
    parser.add_argument("--batch", type=int, default=32,
                        help="messages per state update (default: 32)")
    parser.add_argument("-v", "--verbose", action="store_true", help="report each message")
    parser.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    return parser


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `fetch`. Its options are parsed by its own parser (`build_parser`), so
    that a usage error exits with EX_USAGE (64) as sysexits.h asks."""
    fetch = sub.add_parser("fetch", help="download mail from a POP3 server", add_help=False,
                           prefix_chars="+")
    fetch.add_argument("args", nargs=argparse.REMAINDER)
    fetch.set_defaults(func=lambda args: main(args.args))


def default_state() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "popbox" / "fetch.json"


def _password(args: argparse.Namespace) -> str:
    if args.token_command or args.oauth:
        return ""
    if args.password_keyring:
        try:
            return asyncio.run(keyring_password(args.password_keyring))
        except SecretStoreError as exc:
            raise _Usage(str(exc)) from None
    if args.password_file is not None:
        try:
            text = args.password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _Usage(f"cannot read {args.password_file}: {exc}") from None
        password = text.splitlines()[0] if text else ""
    else:
        password = os.environ.get(PASSWORD_ENV, "")
    if not password:
        raise _Usage(f"no password: use --password-file or ${PASSWORD_ENV}")
    return password


def _context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.tls == "none":
        if args.cafile or args.insecure or args.tls_fingerprint or args.tls_min_version:
            raise _Usage("--cafile, --insecure and --tls-* need TLS")
        return None
    if args.tls_fingerprint:
        try:
            parse_fingerprint(args.tls_fingerprint)
        except ValueError as exc:
            raise _Usage(str(exc)) from None
        if not args.cafile:
            return None  # the pin is the check (popbox.client.tls)
    try:
        context = ssl.create_default_context(cafile=args.cafile)
    except (OSError, ssl.SSLError) as exc:
        raise _Usage(f"cannot load {args.cafile}: {exc}") from None
    if args.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _source(args: argparse.Namespace) -> Source:
    if args.tls is None:
        args.tls = "implicit" if args.port in (None, 995) else "starttls"
    tls: Tls = args.tls
    port = args.port or (995 if tls == "implicit" else 110)
    if not 0 < port < 65536:
        raise _Usage(f"no such port: {port}")
    if args.auth in ("xoauth2", "oauthbearer") and not (args.token_command or args.oauth):
        raise _Usage(f"--auth {args.auth} needs an access token: --token-command or --oauth")
    if (args.limit is not None and args.limit < 0) or args.batch < 1 or args.timeout <= 0:
        raise _Usage("--limit must not be negative; --batch and --timeout must be positive")
    return Source(server=args.server.lower(), port=port, user=args.user,
                  password=_password(args), tls=tls, ssl_context=_context(args),
                  timeout=args.timeout, auth=args.auth, allow_plaintext=args.allow_plaintext,
                  token=_tokens(args), tls_fingerprint=args.tls_fingerprint,
                  tls_min_version=args.tls_min_version)


def _tokens(args: argparse.Namespace) -> TokenSource | None:
    if args.oauth:
        return OAuthTokens(args.oauth)
    return TokenCommand(args.token_command, args.timeout) if args.token_command else None


def _summary(source: Source, where: Path, report: Report) -> str:
    account = f"{source.user}@{source.server}:{source.port}"
    if not report.delivered and not report.found:
        text = f"no new mail for {account}"
    else:
        text = f"{report.delivered} new message(s) for {account} delivered to {where}"
        if report.found:
            text += f", {report.found} found delivered by an interrupted run"
    if report.deleted:
        text += f"; {report.deleted} deleted on the server"
    if report.left:
        text += f"; {report.left} left for the next run (--limit)"
    return text


def _fail(status: int, message: str) -> int:
    print(f"popbox fetch: {message}", file=sys.stderr)
    return status


def main(argv: list[str]) -> int:
    if argv[:1] in (["oauth"], ["password"]):  # popbox fetch oauth login / password set
        from popbox.cli import fetch_oauth, fetch_password
        if argv[0] == "oauth":
            return fetch_oauth.main(argv[1:])
        return fetch_password.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        source = _source(args)
    except _Usage as exc:
        return _fail(EX_USAGE, str(exc))
    state = StateFile(args.state or default_state())
    target: Target = (MaildirTarget(args.maildir) if args.maildir is not None
                      else MboxTarget(args.mbox))
    destination = open_destination(target, state, account=source.user, user=source.user)
    where = args.maildir or args.mbox

    def log(text: str) -> None:
        if args.verbose:
            print(f"popbox fetch: {text}", file=sys.stderr)

    try:
        state.open()
        try:
            fetcher = Fetcher(source, destination, state,
                              Options(keep=args.keep, limit=args.limit, batch=args.batch), log)
            fetcher.prepare()
            report = asyncio.run(fetcher.run())
        finally:
            state.close()
    except BaseException as exc:  # every failure we know becomes one line
        status = _status(exc)
        if status is None:
            raise
        return _fail(status, _describe(exc, source))
    if not args.quiet:
        print(f"popbox fetch: {_summary(source, where, report)}")
    return EX_OK


def _status(exc: BaseException) -> int | None:
    match exc:
        case er.PopAuthError():
            return EX_NOPERM
        case er.PopPermanentError():
            return EX_UNAVAILABLE
        case er.PopError():
            return EX_TEMPFAIL
        case er.PopPlaintextRefused() | er.PopSecurityError():
            return EX_CONFIG
        case TokenError():
            return EX_NOPERM
        case SecretStoreError():
            return EX_IOERR
        case er.PopUnsupportedError():
            return EX_UNAVAILABLE
        case er.PopConnectionError() | StateBusy() | MboxBusy():
            return EX_TEMPFAIL
        case er.PopProtocolError():
            return EX_PROTOCOL
        case StateError() | OSError():
            return EX_IOERR
        case er.PopUsageError():  # e.g. a user name with a line break
            return EX_USAGE
        case _:
            return None


def _describe(exc: BaseException, source: Source) -> str:
    server = f"{source.server}:{source.port}"
    match exc:
        case er.PopAuthError():
            return f"login to {server} as {source.user} refused: {exc}"
        case er.PopInUseError():
            return f"the mailbox of {source.user} on {server} is in use: {exc}"
        case er.PopError():
            return f"{server} answered {exc}"
        case er.PopProtocolError():
            return f"{server} broke the POP3 protocol: {exc}"
        case OSError() if not isinstance(exc, MboxBusy):
            name = f"{exc.filename}: " if exc.filename else ""
            return f"{name}{exc.strerror or exc}"
        case _:
            return str(exc)
