"""`popbox fetch import-state`: record the UIDLs fetchmail, getmail6 or mpop delivered
for an account as delivered in a popbox fetch state file, so that switching to popbox
fetch does not fetch the old mail again (see `popbox.client.import_state`).

    popbox fetch import-state --from fetchmail ~/.fetchids \\
        --server pop.example.org --port 995 --user alice [--state FILE]

`--port` is required: the state file keys accounts by server, port and user, as popbox
fetch is run. `main(argv, find_account)` also takes `--account NAME` (and `--config
FILE`, the accounts file) when given a `find_account` that maps an account name and the
accounts file to its (server, port, user, state file), raising LookupError (KeyError: no
such account).

Exit statuses (sysexits.h): 0 done; 64 usage; 65 the file is not the tool's, or has no
UIDL for the account; 74 the state file cannot be read or written; 75 a popbox fetch is
using the state file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from popbox.client.accounts import one_off_state
from popbox.client.import_state import TOOLS, ImportStateError, read, record
from popbox.client.state import StateBusy, StateError, StateFile

EX_OK, EX_USAGE, EX_DATAERR, EX_IOERR, EX_TEMPFAIL = 0, 64, 65, 74, 75
AccountFinder = Callable[[str, Path | None], tuple[str, int, str, Path]]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser(with_accounts: bool) -> argparse.ArgumentParser:
    parser = _Parser(prog="popbox fetch import-state",
                     description="Record the mail another POP3 client fetched already as "
                     "delivered, so popbox fetch does not fetch it again.")
    parser.add_argument("--from", dest="tool", required=True, choices=TOOLS,
                        help="the program that wrote FILE")
    parser.add_argument("file", type=Path, metavar="FILE",
                        help="fetchmail's .fetchids, getmail's oldmail-*, mpop's uidls file")
    if with_accounts:
        parser.add_argument("--account", help="the account's name in the accounts file")
        parser.add_argument("--config", type=Path, help="the accounts file (default: "
                            "popbox fetch's)")
    parser.add_argument("--server", help="the POP3 server, as given to popbox fetch")
    parser.add_argument("--port", type=int, help="the port popbox fetch uses (995, 110...)")
    parser.add_argument("--user")
    parser.add_argument("--state", type=Path, help="default: popbox fetch's state file")
    return parser


def _fail(status: int, message: str) -> int:
    print(f"popbox fetch import-state: {message}", file=sys.stderr)
    return status


def main(argv: list[str], find_account: AccountFinder | None = None) -> int:
    args = build_parser(find_account is not None).parse_args(argv)
    if getattr(args, "account", None) is not None:
        if args.server or args.port or args.user:
            return _fail(EX_USAGE, "--account or --server/--port/--user, not both")
        assert find_account is not None
        try:
            server, port, user, state_path = find_account(args.account, args.config)
        except KeyError:
            return _fail(EX_USAGE, f"no account named {args.account!r}")
        except LookupError as exc:  # the accounts file cannot be used
            return _fail(EX_USAGE, str(exc))
        state_path = args.state or state_path
    else:
        if not (args.server and args.port and args.user):
            return _fail(EX_USAGE, "--server, --port and --user are needed"
                         + (" (or --account)" if find_account else ""))
        if not 0 < args.port < 65536:
            return _fail(EX_USAGE, f"--port {args.port} is not a port")
        server, port, user = args.server, args.port, args.user
        state_path = args.state or one_off_state()
    try:
        found = read(args.tool, args.file, server, port, user)
    except ImportStateError as exc:
        return _fail(EX_DATAERR, str(exc))
    state = StateFile(state_path)
    try:
        state.open()
        try:
            done = record(state, server, port, user, found)
        finally:
            state.close()
    except StateBusy as exc:
        return _fail(EX_TEMPFAIL, str(exc))
    except StateError as exc:
        return _fail(EX_IOERR, str(exc))
    skipped = f", {done.skipped} lines skipped (not UIDLs)" if done.skipped else ""
    print(f"{user}@{server}:{port}: {done.added} UIDLs recorded as delivered from "
          f"{args.tool}'s {args.file}, {done.known} were already{skipped} ({state_path})")
    return EX_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
