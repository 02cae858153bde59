"""`popbox fetch password set ACCOUNT`: keep an account's password in the keyring (else a
0600 file in the state folder, see `popbox.client.secret_store`), for
`password_keyring = true`. The password is asked for on the terminal without echo, or read
as the first line of standard input when that is not a terminal; never from the command
line, where `ps` would show it. `delete` removes it.

Exit statuses: 0 done; 64 usage (an empty password); 74 the keyring or file failed.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from popbox.client.secret_store import SecretStore, SecretStoreError, password_name

EX_OK, EX_USAGE, EX_IOERR = 0, 64, 74


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="popbox fetch password",
                     description="account passwords in the keyring, for popbox fetch")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("set", "store the account's password"),
                       ("delete", "forget the account's password")):
        sub.add_parser(name, help=text).add_argument("account", help="the account's name")
    return parser


def _read_password(account: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {account}: ")
    return sys.stdin.readline().rstrip("\r\n")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        store = SecretStore()
        if args.command == "delete":
            store.delete(password_name(args.account))
            return EX_OK
        password = _read_password(args.account)
        if not password:
            print("popbox fetch password: empty password, nothing stored", file=sys.stderr)
            return EX_USAGE
        store.set(password_name(args.account), password)
    except SecretStoreError as exc:
        print(f"popbox fetch password: {exc}", file=sys.stderr)
        return EX_IOERR
    print(f"popbox fetch password: stored for {args.account} in {store.where}")
    return EX_OK
