"""`popbox probe HOST`: how well a POP3 server follows the RFCs, and what `popbox fetch`
would do about what it does not (see `popbox.client.probe` for the checks).

Without `--user` only what a client sees before login is checked; with it (the password
from `--password-file` or POPBOX_FETCH_PASSWORD, never from the command line) the probe
logs in and reads a few small messages. It never deletes anything.

Exit statuses: 0 no deviation; 1 deviations found, or the probe could not finish (no
connection, or with --user no login); 64 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
from pathlib import Path
from typing import NoReturn

from popbox.client import Tls
from popbox.client.probe import Verdict, evaluate, to_json, to_text
from popbox.client.prober import Target, probe

EX_USAGE = 64
PASSWORD_ENV = "POPBOX_FETCH_PASSWORD"  # noqa: S105 - the variable's name


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="popbox probe",
                     description="Check a POP3 server against the RFCs (read-only).")
    parser.add_argument("host")
    parser.add_argument("--port", type=int, help="default: 995 with implicit TLS, else 110")
    parser.add_argument("--tls", choices=("implicit", "starttls", "none"),
                        help="default: implicit on port 995, starttls on any other port")
    parser.add_argument("--user", help="log in as this user for the checks after login")
    parser.add_argument("--password-file", type=Path, help="the password is its first line")
    parser.add_argument("--cafile", type=Path, help="trust the CA certificates in this file")
    parser.add_argument("--insecure", action="store_true",
                        help="log in even if the certificate does not verify")
    parser.add_argument("--allow-plaintext", action="store_true",
                        help="allow sending the password unencrypted to a remote server")
    parser.add_argument("--max-messages", type=int, default=3,
                        help="read at most this many messages, the smallest (default 3)")
    parser.add_argument("--max-size", type=int, default=1 << 20,
                        help="read no message over this many octets (default 1 MiB)")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    probe_cmd = sub.add_parser("probe", help="check a POP3 server against the RFCs",
                               add_help=False, prefix_chars="+")
    probe_cmd.add_argument("args", nargs=argparse.REMAINDER)
    probe_cmd.set_defaults(func=lambda args: main(args.args))


def _password(args: argparse.Namespace) -> str | None:
    if args.user is None:
        return None
    if args.password_file is not None:
        try:
            text = args.password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _Usage(f"cannot read {args.password_file}: {exc}") from None
        password = text.splitlines()[0] if text else ""
    else:
        password = os.environ.get(PASSWORD_ENV, "")
    if not password:
        raise _Usage(f"--user needs a password: --password-file or ${PASSWORD_ENV}")
    return password


def _target(args: argparse.Namespace) -> Target:
    tls: Tls = args.tls or ("implicit" if args.port in (None, 995) else "starttls")
    context = None
    if tls != "none":
        try:
            context = ssl.create_default_context(cafile=args.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise _Usage(f"cannot load {args.cafile}: {exc}") from None
    elif args.cafile or args.insecure:
        raise _Usage("--cafile and --insecure need TLS")
    if args.max_messages < 0 or args.max_size < 0 or args.timeout <= 0:
        raise _Usage("--max-messages, --max-size and --timeout must be positive")
    return Target(host=args.host, port=args.port or (995 if tls == "implicit" else 110),
                  tls=tls, user=args.user, password=_password(args), ssl_context=context,
                  insecure=args.insecure, allow_plaintext=args.allow_plaintext,
                  timeout=args.timeout, max_messages=args.max_messages,
                  max_octets=args.max_size)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        target = _target(args)
    except _Usage as exc:
        print(f"popbox probe: {exc}", file=sys.stderr)
        return EX_USAGE
    observations = asyncio.run(probe(target))
    checks = evaluate(observations)
    if args.json:
        print(json.dumps(to_json(observations, checks), indent=1))
    else:
        print(to_text(observations, checks))
    unfinished = target.user is not None and not observations.logged_in
    return 1 if unfinished or any(c.verdict is Verdict.DEVIATION for c in checks) else 0
