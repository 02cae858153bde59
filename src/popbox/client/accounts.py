"""`popbox fetch`'s accounts: the accounts file (TOML) and the one-off account of the flags.

The file has an optional top-level `max_parallel`, a `[defaults]` table and one
`[accounts.NAME]` table per account; every account key may be set in `[defaults]`:

    max_parallel = 4
    [defaults]
    tls = "implicit"
    [accounts.work]
    server = "pop.example.org"
    user = "alice"
    password_command = ["pass", "show", "mail/work"]
    maildir = "~/Maildir"

Each table is checked by a pydantic model (`defaults` alone, then every account merged
with it), and every problem becomes one line naming its key:
`fetch.toml: accounts.work.port: Input should be less than 65536`. An account has exactly
one destination (`maildir`, `mbox`, `mda`, `lmtp`, `smtp`) and at most one password source:
`password` (the password itself), `password_file` (its first line), `password_command`
(an argv list, run without a shell; the first line of its stdout) or `password_keyring`
(`true`: the password `popbox fetch password set NAME` stored; a string: stored under that
name). Instead of a password, an OAuth2 access token (OAUTHBEARER, XOAUTH2) may come from
`token_command` (argv) or from the grant `popbox fetch oauth login NAME` stored: the
account's `provider` (`google`, `microsoft`) or `client_id`/`token_url`/`scope`/... say how
to refresh it, `oauth = true` (or a grant's name) uses the settings stored with the grant.
`tls_fingerprint` pins the server's certificate, `tls_min_version` is "1.2" or "1.3".
`url = "pop://user;AUTH=mech@host:port"` (RFC 2384 §3, `popbox.client.popurl`) gives
`server`, `port`, `user`, `auth` and (`pops://`) `tls`; the account's own keys override
it, and it overrides `[defaults]`. A file holding a
`password` key is refused when its group or others may read it; a file name or a command is
no secret. Relative paths (destinations, `state`, `cafile`, `password_file`) are relative to
the file's folder; `~` is expanded.

Each account has its own state file, `$XDG_STATE_HOME/popbox/fetch/NAME.json`, so that
accounts can run side by side (a run locks its state file); `state` chooses another.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from popbox.client import oauth, popurl
from popbox.client import tls as client_tls
from popbox.client.destinations import (
    LmtpTarget,
    MaildirTarget,
    MboxTarget,
    MdaTarget,
    SmtpTarget,
    Target,
)
from popbox.client.fetcher import AUTH_METHODS, Options, Source
from popbox.client.oauth import OAuthTokens
from popbox.client.secret_store import SecretStore, password_name
from popbox.client.tokens import TokenCommand, TokenSource

DESTINATIONS = ("maildir", "mbox", "mda", "lmtp", "smtp")
PASSWORDS = ("password", "password_file", "password_command", "password_keyring")
OAUTH_KEYS = ("provider", "client_id", "client_secret", "token_url", "device_url", "auth_url",
              "scope")
TOKEN_AUTH = ("xoauth2", "oauthbearer")
DEFAULT_INTERVAL = 300.0
DEFAULT_PARALLEL = 4

Positive = Annotated[float, Field(strict=True, gt=0)]
Count = Annotated[int, Field(strict=True, ge=0)]
Flag = Annotated[bool, Field(strict=True)]
Text = Annotated[str, Field(strict=True, min_length=1)]
Argv = Annotated[list[Text], Field(min_length=1)]


def _named_value(value: Any) -> Any:
    if isinstance(value, bool) or (isinstance(value, str) and value):
        return value
    raise ValueError("should be true, false or a name")


# true: under the account's own name; a string: under that name
Named = Annotated[bool | str, BeforeValidator(_named_value)]
AuthMethod = Literal["auto", "user", "apop", "plain", "login", "cram-md5", "scram-sha-1",
                     "scram-sha-256", "xoauth2", "oauthbearer"]
assert set(AuthMethod.__args__) == set(AUTH_METHODS)  # type: ignore[attr-defined]


class AccountsError(Exception):
    """The accounts file (or the flags) cannot be used: one line per problem."""


class _Keys(BaseModel):
    """Every key an account may have, all optional: what `[defaults]` may set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server: Text | None = None
    port: Annotated[int, Field(strict=True, gt=0, lt=65536)] | None = None
    tls: Literal["implicit", "starttls", "none"] | None = None
    user: Text | None = None
    auth: AuthMethod = "auto"
    password: Annotated[str | None, Field(strict=True, min_length=1, repr=False)] = None
    password_file: Path | None = None
    password_command: Argv | None = None
    password_keyring: Named | None = None
    token_command: Argv | None = None
    oauth: Named | None = None
    provider: Literal["google", "microsoft"] | None = None
    client_id: Text | None = None
    client_secret: Annotated[str | None, Field(strict=True, min_length=1, repr=False)] = None
    token_url: Text | None = None
    device_url: Text | None = None
    auth_url: Text | None = None
    scope: Text | None = None
    url: Text | None = None
    cafile: Path | None = None
    insecure: Flag = False
    tls_fingerprint: Text | None = None
    tls_min_version: Literal["1.2", "1.3"] | None = None
    allow_plaintext: Flag = False
    keep: Flag = False
    keep_days: Positive | None = None
    max_size: Annotated[int, Field(strict=True, gt=0)] | None = None
    oversize: Literal["skip", "delete", "headers"] | None = None
    limit: Count | None = None
    timeout: Positive = 60.0
    batch: Annotated[int, Field(strict=True, ge=1)] = 32
    state: Path | None = None
    interval: Positive = DEFAULT_INTERVAL
    maildir: Path | None = None
    mbox: Path | None = None
    mda: Argv | None = None
    lmtp: Text | None = None
    smtp: Text | None = None
    recipient: Text | None = None


class AccountConfig(_Keys):
    """One account, defaults merged in: the required keys present, the rest consistent."""

    server: Text
    user: Text

    @model_validator(mode="after")
    def _consistent(self) -> AccountConfig:
        where = [key for key in DESTINATIONS if getattr(self, key) is not None]
        if len(where) != 1:
            found = " and ".join(where) if where else "none"
            raise ValueError(f"exactly one destination ({', '.join(DESTINATIONS)}) is "
                             f"needed, found {found}")
        secrets = [key for key in PASSWORDS if getattr(self, key) not in (None, False)]
        if len(secrets) > 1:
            raise ValueError(f"{' and '.join(secrets)}: at most one password source")
        tokens = [key for key in ("token_command", "oauth") if getattr(self, key)
                  not in (None, False)]
        if self.oauth_settings is not None and "oauth" not in tokens:
            tokens.append("oauth")
        if len(tokens) > 1 or (tokens and secrets):
            raise ValueError(f"{' and '.join(secrets + tokens)}: a password or an access "
                             "token, from one source")
        if self.auth in TOKEN_AUTH and not tokens:
            raise ValueError(f"auth {self.auth} needs an access token: token_command, "
                             "oauth or provider")
        if self.oauth_settings is not None:
            try:
                oauth.settings(self.provider, **self.oauth_settings)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        if self.tls_fingerprint is not None:
            client_tls.parse_fingerprint(self.tls_fingerprint)
        if self.recipient is not None and where[0] not in ("lmtp", "smtp"):
            raise ValueError("recipient needs lmtp or smtp")
        if self.keep and self.keep_days is not None:
            raise ValueError("keep and keep_days exclude each other")
        if self.oversize is not None and self.max_size is None:
            raise ValueError("oversize needs max_size")
        if self.tls == "none" and (self.cafile is not None or self.insecure or
                                   self.tls_fingerprint or self.tls_min_version):
            raise ValueError("cafile, insecure and tls_* need TLS")
        return self

    @property
    def oauth_settings(self) -> dict[str, str] | None:
        """The OAuth2 keys set but `provider` (whose preset completes them); None when
        neither is."""
        found = {key: getattr(self, key) for key in OAUTH_KEYS[1:]}
        keys = {key: value for key, value in found.items() if value is not None}
        return keys if keys or self.provider else None


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_parallel: Annotated[int, Field(strict=True, ge=1)] = DEFAULT_PARALLEL
    defaults: dict[str, Any] = {}
    accounts: dict[str, dict[str, Any]] = {}


@dataclass(frozen=True)
class Account:
    """An account ready to run. `name` is None for the one-off account of the flags."""

    name: str | None
    config: AccountConfig
    state: Path

    @property
    def label(self) -> str:
        """How output names the account."""
        return self.name if self.name is not None else f"{self.config.user}@{self.server}"

    @property
    def tls(self) -> Literal["implicit", "starttls", "none"]:
        if self.config.tls is not None:
            return self.config.tls
        return "implicit" if self.config.port in (None, 995) else "starttls"

    @property
    def port(self) -> int:
        return self.config.port or (995 if self.tls == "implicit" else 110)

    @property
    def server(self) -> str:
        return f"{self.config.server.lower()}:{self.port}"

    @property
    def target(self) -> Target:
        c = self.config
        if c.maildir is not None:
            return MaildirTarget(c.maildir)
        if c.mbox is not None:
            return MboxTarget(c.mbox)
        if c.mda is not None:
            return MdaTarget(tuple(c.mda))
        if c.lmtp is not None:
            return LmtpTarget(c.lmtp, c.recipient)
        assert c.smtp is not None
        return SmtpTarget(c.smtp, c.recipient)


@dataclass(frozen=True)
class Accounts:
    accounts: dict[str, Account]
    max_parallel: int = DEFAULT_PARALLEL


def default_config() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "popbox" / "fetch.toml"


def state_home() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "popbox"


def one_off_state() -> Path:
    """The state file of an account made by the command line's flags alone."""
    return state_home() / "fetch.json"


def _problems(exc: ValidationError, where: str, origin: str,
              names: dict[str, str] | None = None) -> list[str]:
    lines = []
    for error in exc.errors():
        parts = [str(part) for part in error["loc"]]
        if names is not None and parts:
            parts[0] = names.get(parts[0], parts[0])
        key = ".".join(([where] if where else []) + parts) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{origin}: {key}: {message}")
    return lines


def _resolve(config: AccountConfig, base: Path) -> AccountConfig:
    def fix(path: Path | None) -> Path | None:
        if path is None:
            return None
        path = path.expanduser()
        return path if path.is_absolute() else base / path

    keys = ("password_file", "cafile", "state", "maildir", "mbox")
    return config.model_copy(update={key: fix(getattr(config, key)) for key in keys})


def parse(data: dict[str, Any], origin: str, base: Path) -> Accounts:
    """The accounts of a parsed file; `origin` names it in errors, `base` is its folder."""
    try:
        top = _File.model_validate(data)
    except ValidationError as exc:
        raise AccountsError("\n".join(_problems(exc, "", origin))) from None
    problems: list[str] = []
    try:
        defaults = _Keys.model_validate(top.defaults)
    except ValidationError as exc:
        raise AccountsError("\n".join(_problems(exc, "defaults", origin))) from None
    accounts: dict[str, Account] = {}
    for name, table in top.accounts.items():
        if not name or "/" in name or name.startswith("."):
            problems.append(f"{origin}: accounts.{name}: not a usable account name")
            continue
        try:
            merged = {**defaults.model_dump(exclude_unset=True), **url_keys(table), **table}
            config = _resolve(AccountConfig.model_validate(merged), base)
        except popurl.PopUrlError as exc:
            problems.append(f"{origin}: accounts.{name}.url: {exc}")
            continue
        except ValidationError as exc:
            problems += _problems(exc, f"accounts.{name}", origin)
            continue
        state = config.state or state_home() / "fetch" / f"{name}.json"
        accounts[name] = Account(name, config, state)
    if problems:
        raise AccountsError("\n".join(problems))
    return Accounts(accounts, top.max_parallel)


def url_keys(keys: dict[str, Any]) -> dict[str, Any]:
    """The keys `keys["url"]` (a POP URL) stands for, none without one; PopUrlError."""
    url = keys.get("url")
    if not isinstance(url, str):
        return {}  # absent, or a type the model reports
    return popurl.account_keys(popurl.parse(url), AUTH_METHODS)


def load(path: Path) -> Accounts:
    """Read and check the accounts file at `path`."""
    origin = path.name
    try:
        with path.open("rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = tomllib.load(f)
    except OSError as exc:
        raise AccountsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AccountsError(f"{origin}: not valid TOML: {exc}") from None
    tables = [data.get("defaults"), *(data.get("accounts") or {}).values()]
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and any(
            isinstance(t, dict) and "password" in t for t in tables):
        raise AccountsError(f"{origin}: holds a password but others may read it (mode "
                            f"{stat.S_IMODE(mode):o}): chmod 600 {path}, or use "
                            "password_file or password_command")
    return parse(data, origin, path.resolve().parent)


def one_off(keys: dict[str, Any], state: Path) -> Account:
    """The account the command-line flags describe (keys named like the file's)."""
    names = {key: "--" + key.replace("_", "-") for key in _Keys.model_fields}
    names["url"] = "the POP URL"
    try:
        config = AccountConfig.model_validate({**url_keys(keys), **keys})
    except popurl.PopUrlError as exc:
        raise AccountsError(str(exc)) from None
    except ValidationError as exc:
        lines = _problems(exc, "", "command line", names)
        first = lines[0].removeprefix("command line: ").removeprefix("(top level): ")
        raise AccountsError(first) from None
    return Account(None, config, config.state or state)


def options(account: Account) -> Options:
    """The fetcher's options for `account`."""
    c = account.config
    return Options(keep=c.keep, limit=c.limit, batch=c.batch, keep_days=c.keep_days,
                   max_size=c.max_size, oversize=c.oversize or "skip")


class PasswordError(Exception):
    """No password could be had (the message never holds one)."""


class PasswordCommandFailed(PasswordError):
    """The password command ran but gave no password in time, or failed."""


def _named(account: Account, value: bool | str) -> str:
    """The name a secret of `account` is kept under (`password_keyring`, `oauth`)."""
    if isinstance(value, str):
        return value
    if account.name is None:
        raise AccountsError("a one-off account's secrets need a name")
    return account.name


async def password(account: Account, env_fallback: str | None = None,
                   store: SecretStore | None = None) -> str:
    """The account's password: the key itself, the first line of `password_file`, the
    first line `password_command` prints (run without a shell, `timeout` seconds at most),
    or the keyring's (`store`, by default the system's; SecretStoreError when it fails).
    `env_fallback` (the one-off account's environment variable) when none is set; "" when
    the account logs in with an access token instead."""
    c = account.config
    if c.password is not None:
        return c.password
    if c.password_keyring not in (None, False):
        assert c.password_keyring is not None
        name = _named(account, c.password_keyring)
        store = store or SecretStore()
        found = await store.aget(password_name(name))
        if not found:
            raise PasswordError(f"no password for {name} in {store.where}: run "
                                f"popbox fetch password set {name}")
        return found
    if token_source(account) is not None:
        return ""
    if c.password_file is not None:
        try:
            text = await asyncio.to_thread(c.password_file.read_text, encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PasswordError(f"cannot read {c.password_file}: {exc}") from None
        found = text.splitlines()[0] if text else ""
        if not found:
            raise PasswordError(f"no password: {c.password_file} is empty")
        return found
    if c.password_command is not None:
        return await _run_password_command(c.password_command, c.timeout)
    if env_fallback:
        return env_fallback
    raise PasswordError("no password: set password, password_file or password_command")


async def _run_password_command(argv: list[str], seconds: float) -> str:
    name = argv[0]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise PasswordError(f"password_command {name}: {exc.strerror or exc}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), seconds)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise PasswordCommandFailed(f"password_command {name} gave no password within "
                            f"{seconds:g} s") from None
    if proc.returncode != 0:
        lines = err.decode("utf-8", "replace").strip().splitlines()
        why = f": {lines[0][:200]}" if lines else ""
        raise PasswordCommandFailed(f"password_command {name} exited with status "
                            f"{proc.returncode}{why}")
    text = out.decode("utf-8", "replace").splitlines()
    if not text or not text[0]:
        raise PasswordError(f"password_command {name} printed no password")
    return text[0]


def context(account: Account) -> ssl.SSLContext | None:
    """The TLS context (None without TLS); AccountsError when the CA file is unusable."""
    c = account.config
    if account.tls == "none":
        return None
    if c.tls_fingerprint is not None and c.cafile is None:
        return None  # the pin is the check (popbox.client.tls)
    try:
        ctx = ssl.create_default_context(cafile=c.cafile)
    except (OSError, ssl.SSLError) as exc:
        raise AccountsError(f"cannot load {c.cafile}: {exc}") from None
    if c.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def token_source(account: Account, store: SecretStore | None = None) -> TokenSource | None:
    """Where the account's access tokens come from (None: it logs in with a password)."""
    c = account.config
    if c.token_command is not None:
        return TokenCommand(c.token_command, c.timeout)
    if c.oauth_settings is not None:
        conf = oauth.settings(c.provider, **c.oauth_settings)
        return OAuthTokens(_named(account, c.oauth or True), store, conf=conf)
    if c.oauth not in (None, False):
        assert c.oauth is not None
        return OAuthTokens(_named(account, c.oauth), store)
    return None


def source(account: Account, secret: str, ssl_context: ssl.SSLContext | None,
           token: TokenSource | None = None) -> Source:
    c = account.config
    return Source(server=c.server.lower(), port=account.port, user=c.user, password=secret,
                  tls=account.tls, ssl_context=ssl_context, timeout=c.timeout, auth=c.auth,
                  allow_plaintext=c.allow_plaintext, token=token,
                  tls_fingerprint=c.tls_fingerprint, tls_min_version=c.tls_min_version)
