"""`popbox fetch oauth login ACCOUNT`: get an OAuth2 grant for an account and keep it.

The device authorization grant (RFC 8628) by default: the command prints where to go and
the code to enter, and waits. `--browser`: the authorization code grant with PKCE on a
loopback redirect (RFC 7636, RFC 8252), opening the system's browser. The refresh token
and the settings are kept in the keyring (else a 0600 file in the state folder, see
`popbox.client.secret_store`), under the account's name; `popbox fetch` then gets its
access tokens from there.

The settings are the account's in the accounts file (`--config`, else the default file
when it exists: `provider`, `client_id`, `client_secret`, `token_url`, `device_url`,
`auth_url`, `scope`); the flags override them, and are all there is for a name the file
does not hold.

Exit statuses: 0 stored; 64 usage; 74 the keyring or file failed; 77 the authorization
server refused.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import webbrowser
from pathlib import Path
from typing import Any

from popbox.client import accounts as ac
from popbox.client import oauth
from popbox.client.secret_store import SecretStore, SecretStoreError

EX_OK, EX_USAGE, EX_IOERR, EX_NOPERM = 0, 64, 74, 77


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="popbox fetch oauth", description="OAuth2 grants for popbox fetch")
    sub = parser.add_subparsers(dest="command", required=True)
    login = sub.add_parser("login", help="authorize popbox to read an account's mail")
    login.add_argument("account", help="the account's name")
    login.add_argument("--config", type=Path, help="the accounts file (default: "
                       "$XDG_CONFIG_HOME/popbox/fetch.toml)")
    login.add_argument("--provider", choices=sorted(oauth.PRESETS),
                       help="the endpoints and scope of google or microsoft")
    login.add_argument("--client-id", help="the OAuth2 client registered for popbox")
    login.add_argument("--client-secret", help="its secret, for providers that want one "
                       "from installed applications (not a user's secret)")
    for name in ("token-url", "device-url", "auth-url", "scope"):
        login.add_argument(f"--{name}", help="overrides the provider's")
    login.add_argument("--browser", action="store_true",
                       help="log in in a browser (authorization code with PKCE) instead of "
                       "with a device code")
    return parser


def _show(uri: str, code: str) -> None:
    print(f"popbox fetch: open {uri} and enter the code {code}", file=sys.stderr)


def _open(url: str) -> None:
    print(f"popbox fetch: if no browser opens, open {url}", file=sys.stderr)
    webbrowser.open(url)


def _from_file(args: argparse.Namespace) -> dict[str, Any]:
    """The account's OAuth2 keys in the accounts file (none: no file, or not there)."""
    path = args.config or ac.default_config()
    if args.config is None and not path.exists():
        return {}
    account = ac.load(path).accounts.get(args.account)
    if account is None:
        if args.config is not None and not any(getattr(args, key) for key in ac.OAUTH_KEYS):
            raise ValueError(f"{path}: no account {args.account}")
        return {}
    c = account.config
    return {key: getattr(c, key) for key in ac.OAUTH_KEYS if getattr(c, key) is not None}


def configure(args: argparse.Namespace) -> oauth.OAuthSettings:
    """The settings to log in with: the file's, overridden by the flags."""
    keys = {**_from_file(args), **{key: getattr(args, key) for key in ac.OAUTH_KEYS
                                   if getattr(args, key) is not None}}
    provider = keys.pop("provider", None)
    return oauth.settings(provider, **keys)


async def login(args: argparse.Namespace, store: SecretStore) -> None:
    conf = configure(args)
    client = oauth.OAuthClient(conf)
    grant = await (client.browser_login(_open) if args.browser else client.device_login(_show))
    await oauth.save_grant(store, args.account, conf, grant)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        store = SecretStore()
        asyncio.run(login(args, store))
    except (ValueError, ac.AccountsError) as exc:
        for line in str(exc).splitlines():
            print(f"popbox fetch oauth: {line}", file=sys.stderr)
        return EX_USAGE
    except SecretStoreError as exc:
        print(f"popbox fetch oauth: {exc}", file=sys.stderr)
        return EX_IOERR
    except oauth.OAuthError as exc:
        print(f"popbox fetch oauth: {exc}", file=sys.stderr)
        return EX_NOPERM
    print(f"popbox fetch oauth: {args.account} authorized; the grant is in {store.where}")
    return EX_OK
