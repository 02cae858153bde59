"""`popbox fetch`: download mail from POP3 servers into Maildirs, mbox files or other
destinations, each message exactly once; the accounts come from an accounts file
(`popbox.client.accounts`), or one account from the flags.

`popbox fetch` runs every account of the file, `popbox fetch NAME...` those, `--list` shows
them and their last run, `--daemon` polls them until SIGTERM (`popbox.client.agent`). With
`--server`, or a POP URL (RFC 2384: an argument holding `://`), the flags describe a
one-off account instead; its password comes from `--password-file` (its first line), the
keyring (`--password-keyring NAME`, stored by `popbox fetch password set NAME`) or the
environment variable POPBOX_FETCH_PASSWORD, never from the command line (where `ps` would
show it); an OAuth2 access token from `--token-command` or from the grant `popbox fetch
oauth login NAME` stored (`--oauth NAME`). `popbox fetch oauth ...` and `popbox fetch
password ...` are handed to `popbox.cli.fetch_oauth` and `popbox.cli.fetch_password`.
Messages are deleted from the server once their delivery is recorded, unless `keep` (as
fetchmail does). See `popbox.client.fetcher` for how every message is delivered exactly
once.

Output: one line per account-run on stdout (errors on stderr, naming the account), or with
`--json` one JSON object per account-run on stdout and nothing else there; `-v` lines go to
stderr as they happen, every line flushed at once, so that both streams sent to one place
keep their order. On a terminal a progress display per account is drawn on stdout.

Exit statuses (sysexits.h): 0 done (also when there was no new mail); 64 usage (the
flags, the accounts file, no password, a password command that cannot be started); 69 the
server lacks something needed ([SYS/PERM], UIDL with keep, a login method) or the
destination is not available; 74 the destination or the state file cannot be written; 75
try again later (connection refused or lost, timeout, TLS failure, [IN-USE],
[LOGIN-DELAY], [SYS/TEMP], the state file in use, the password command failed); 76 the
server broke the protocol; 77 the login was refused, or no access token could be had; 78
the login would send the password unencrypted (use TLS, or allow_plaintext), the server's
certificate is not the pinned one, or the server does not do the STLS asked for; 74 also
when the keyring cannot be used. Several accounts: 0 if all succeeded, else the
most severe of their statuses in the order 64, 78, 77, 69, 76, 74, 75.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from popbox.cli.fetch_output import PREFIX, Display, Output, list_accounts
from popbox.client import accounts as ac
from popbox.client.agent import EX_OK, EX_USAGE, Daemon, Outcome, Runner, overall, run_all
from popbox.client.fetcher import AUTH_METHODS, Progress

PASSWORD_ENV = "POPBOX_FETCH_PASSWORD"  # noqa: S105 - the variable's name
ONE_OFF = ("server", "port", "tls", "user", "password_file", "maildir", "mbox", "mda", "lmtp",
           "smtp", "recipient", "keep", "keep_days", "max_size", "oversize", "limit", "state",
           "cafile", "insecure", "auth", "allow_plaintext", "timeout", "batch", "interval",
           "password_command", "password_keyring", "token_command", "oauth",
           "tls_fingerprint", "tls_min_version")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="popbox fetch",
        description="Download mail from POP3 servers, each message exactly once: every "
        "account of the accounts file, the NAMEd ones, or (with --server) the one-off "
        "account the flags describe, whose password is read from --password-file or "
        f"${PASSWORD_ENV}.")
    parser.add_argument("names", nargs="*", metavar="NAME", help="accounts to fetch "
                        "(default: all), or one POP URL (pop://user;AUTH=mech@host:port) "
                        "for a one-off account")
    parser.add_argument("--config", type=Path, help="the accounts file (default: "
                        "$XDG_CONFIG_HOME/popbox/fetch.toml)")
    parser.add_argument("--list", action="store_true",
                        help="list the accounts and their last run, fetch nothing")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per account-run on stdout")
    parser.add_argument("--daemon", action="store_true",
                        help="poll every account on its interval until SIGTERM")
    one = parser.add_argument_group("a one-off account (no accounts file)")
    one.add_argument("--server", help="the POP3 server's host name")
    one.add_argument("--port", type=int, help="default: 995 with implicit TLS, else 110")
    one.add_argument("--tls", choices=("implicit", "starttls", "none"),
                     help="default: implicit on port 995, starttls on any other port")
    one.add_argument("--user")
    one.add_argument("--password-file", type=Path, help="the password is its first line")
    one.add_argument("--password-command", type=shlex.split, metavar="'CMD ARG...'",
                     help="a program that prints the password (split into words as a shell "
                     "would, never run by one)")
    one.add_argument("--password-keyring", metavar="NAME",
                     help="the password stored by popbox fetch password set NAME")
    one.add_argument("--token-command", type=shlex.split, metavar="'CMD ARG...'",
                     help="a program that prints an OAuth2 access token (split into words "
                     "as a shell would, never run by one)")
    one.add_argument("--oauth", metavar="NAME",
                     help="access tokens from the grant of popbox fetch oauth login NAME")
    where = one.add_mutually_exclusive_group()
    where.add_argument("--maildir", type=Path, help="deliver into this Maildir (created)")
    where.add_argument("--mbox", type=Path, help="append to this mbox file (mboxrd)")
    where.add_argument("--mda", type=shlex.split, metavar="'CMD ARG...'",
                       help="run this program per message (split like a shell, never "
                       "run by one; %%u user, %%a account, %%i UIDL)")
    where.add_argument("--lmtp", metavar="HOST:PORT|SOCKET", help="deliver over LMTP")
    where.add_argument("--smtp", metavar="HOST:PORT", help="hand over to an SMTP server")
    one.add_argument("--recipient", help="the LMTP/SMTP recipient (default: --user)")
    one.add_argument("--keep", action="store_true", default=None,
                     help="leave the messages on the server (default: delete them once "
                     "delivered)")
    one.add_argument("--keep-days", type=float, help="delete from the server this many "
                     "days after delivery")
    one.add_argument("--max-size", type=int, help="messages larger than this many octets "
                     "get --oversize treatment")
    one.add_argument("--oversize", choices=("skip", "delete", "headers"))
    one.add_argument("--limit", type=int, help="fetch at most this many new messages")
    one.add_argument("--state", type=Path, help="the state file (default: "
                     "$XDG_STATE_HOME/popbox/fetch.json)")
    one.add_argument("--cafile", type=Path, help="trust the CA certificates in this file")
    one.add_argument("--insecure", action="store_true", default=None,
                     help="do not verify the server's certificate")
    one.add_argument("--tls-fingerprint", metavar="sha256:AB:CD:...",
                     help="accept only the server certificate with this SHA-256 digest")
    one.add_argument("--tls-min-version", choices=("1.2", "1.3"),
                     help="the oldest TLS version to accept")
    one.add_argument("--auth", choices=AUTH_METHODS,
                     help="login method (default: the strongest the server offers)")
    one.add_argument("--allow-plaintext", action="store_true", default=None,
                     help="allow sending the password unencrypted to a remote server")
    one.add_argument("--timeout", type=float,
                     help="seconds to wait for the server at each step (default: 60)")
    one.add_argument("--batch", type=int, help="messages per state update (default: 32)")
    one.add_argument("--interval", type=float,
                     help="with --daemon: seconds between polls (default: 300)")
    parser.add_argument("-v", "--verbose", action="store_true", help="report each message")
    parser.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    return parser


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `fetch`. Its options are parsed by its own parser (`build_parser`), so
    that a usage error exits with EX_USAGE (64) as sysexits.h asks."""
    fetch = sub.add_parser("fetch", help="download mail from POP3 servers", add_help=False,
                           prefix_chars="+")
    fetch.add_argument("args", nargs=argparse.REMAINDER)
    fetch.set_defaults(func=lambda args: main(args.args))


def _one_off(args: argparse.Namespace) -> ac.Account | None:
    """The account the flags describe, or None when they describe none."""
    keys: dict[str, Any] = {key: getattr(args, key) for key in ONE_OFF
                            if getattr(args, key) is not None}
    urls = [name for name in args.names if "://" in name]
    if urls:
        if len(args.names) > 1:
            raise ac.AccountsError("a POP URL is one account: no other URL or name with it")
        keys["url"] = urls[0]
    elif not keys:
        return None
    elif args.names:
        raise ac.AccountsError("account names and one-off account flags exclude each other")
    return ac.one_off(keys, ac.one_off_state())


def _choose(args: argparse.Namespace) -> tuple[list[ac.Account], int, ac.Accounts | None]:
    """The accounts to run, how many at once, and the file's accounts (None: one-off)."""
    account = _one_off(args)
    if account is not None:
        return [account], 1, None
    loaded = ac.load(args.config or ac.default_config())
    unknown = [name for name in args.names if name not in loaded.accounts]
    if unknown:
        raise ac.AccountsError(f"no such account: {', '.join(unknown)}")
    if not loaded.accounts:
        raise ac.AccountsError(f"{args.config or ac.default_config()}: no accounts")
    chosen = [loaded.accounts[name] for name in args.names] or list(loaded.accounts.values())
    return chosen, loaded.max_parallel, loaded


def _find_account(name: str, config: Path | None) -> tuple[str, int, str, Path]:
    """An account of the accounts file, for import-state: KeyError when there is no such
    account, LookupError when the file cannot be used."""
    try:
        loaded = ac.load(config or ac.default_config())
    except ac.AccountsError as exc:
        raise LookupError(str(exc)) from None
    account = loaded.accounts[name]
    return account.config.server.lower(), account.port, account.config.user, account.state


def main(argv: list[str]) -> int:
    if argv[:1] == ["import-state"]:
        from popbox.cli import fetch_import

        return fetch_import.main(argv[1:], _find_account)
    if argv[:1] in (["oauth"], ["password"]):  # popbox fetch oauth login / password set
        from popbox.cli import fetch_oauth, fetch_password
        if argv[0] == "oauth":
            return fetch_oauth.main(argv[1:])
        return fetch_password.main(argv[1:])
    args = build_parser().parse_args(argv)
    output = Output(as_json=args.json, quiet=args.quiet)
    try:
        chosen, parallel, loaded = _choose(args)
    except ac.AccountsError as exc:
        for line in str(exc).splitlines():
            output.line(PREFIX + line, error=True)
        return EX_USAGE
    if args.list:
        list_accounts(chosen, output)
        return EX_OK
    env_password = os.environ.get(PASSWORD_ENV) if loaded is None else None

    def log(account: ac.Account, text: str) -> None:
        if args.verbose:
            output.log(account, text)

    if args.daemon:
        return _daemon(args, chosen, parallel, loaded is None, output, log, env_password)
    display = Display(sys.stdout) if sys.stdout.isatty() and not args.json else None

    def progress(account: ac.Account) -> Progress | None:
        return display.hook(account) if display is not None else None

    runner = Runner(log=log, progress=progress, env_password=env_password)

    async def run() -> list[Outcome]:
        return await run_all(runner, chosen, parallel, output.outcome)

    if display is None:
        outcomes = asyncio.run(run())
    else:
        with display:
            outcomes = asyncio.run(run())
    return overall(outcome.status for outcome in outcomes)


def _daemon(args: argparse.Namespace, chosen: list[ac.Account], parallel: int,
            one_off: bool, output: Output, log: Callable[[ac.Account, str], None],
            env_password: str | None) -> int:
    names = set(args.names)
    path = args.config or ac.default_config()

    def load() -> ac.Accounts:
        if one_off:  # a one-off account has no file to re-read
            return ac.Accounts({chosen[0].label: chosen[0]}, parallel)
        loaded = ac.load(path)
        if names:
            return ac.Accounts({n: a for n, a in loaded.accounts.items() if n in names},
                               loaded.max_parallel)
        return loaded

    def done(outcome: Outcome, delay: float, repeated: bool) -> None:
        if not repeated:
            output.outcome(outcome, delay)
        elif output.as_json:  # the refusal is not said again, but the run is reported
            output.line(json.dumps(outcome.as_json()))

    def note(text: str) -> None:
        output.line(PREFIX + text, error=True)

    runner = Runner(log=log, env_password=env_password)

    async def run() -> int:
        daemon = Daemon(load, runner, done, note)
        initial = ac.Accounts({a.label: a for a in chosen}, parallel)
        return await daemon.run(initial)

    status = asyncio.run(run())
    note("stopped")
    return status
