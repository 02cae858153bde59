"""Configuration: one TOML file, validated by pydantic into frozen data.

Every key has a safe default, so an empty file is a valid (if useless) configuration.
A bad file is reported as one `ConfigError` naming the file, the key and the problem;
the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import functools
import ipaddress
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from popbox.proto import sasl

RFC1939_MIN_IDLE = 600  # RFC 1939 §3: the autologout timer is at least 10 minutes


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_address(value: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all addresses)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r} is not host:port")
    host = host.strip("[]")
    if host and host != "*" and host != "localhost":
        ipaddress.ip_address(host)
    return (host if host not in ("", "*") else "", int(port_text))


def check_loopback(listen: str, public: bool) -> None:
    """Metrics on `listen`: refused on a non-loopback address unless `public`."""
    host, _ = parse_address(listen)
    loopback = host == "localhost" or (host != "" and ipaddress.ip_address(host).is_loopback)
    if not loopback and not public:
        raise ValueError(f"listen {listen!r} is not a loopback address; metrics would be "
                         "public: set public = true if that is intended")


def check_networks(value: list[str]) -> list[str]:
    for item in value:
        ipaddress.ip_network(item, strict=False)
    return value


@functools.lru_cache(maxsize=64)
def _parsed(networks: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def in_networks(address: str, networks: list[str]) -> bool:
    """Whether an IP address (IPv4-mapped IPv6 included) is in one of `networks`."""
    return bool(networks) and _in_networks(address, tuple(networks))


@functools.lru_cache(maxsize=4096)  # asked at every login: clients come back
def _in_networks(address: str, networks: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in net for net in _parsed(networks))


class ServerSection(_Section):
    listen: list[str] = Field(default_factory=lambda: ["127.0.0.1:1110"])
    hostname: str = "localhost"
    greeting: str = "popbox ready."
    workers: Annotated[int, Field(ge=1, le=256)] = 1
    # Started as root: bind, then run as this user and group. Serving as root is refused
    # unless allow_root is set.
    user: str | None = None
    group: str | None = None
    allow_root: bool = False
    # HAProxy PROXY protocol v1/v2 is required from these networks, refused from others.
    proxy_networks: list[str] = Field(default_factory=list)
    # Named client workarounds, as in Dovecot's pop3_workarounds: "outlook-no-nuls" sends
    # NUL octets in messages as 0x80; "8bit-headers" sends 8-bit header octets as stored
    # to clients that did not say UTF8 (else they become "?", RFC 6856 §2.1).
    workarounds: list[Literal["outlook-no-nuls", "8bit-headers"]] = Field(default_factory=list)
    # RFC 1460's LAST (the highest message number accessed), for clients older than
    # RFC 1725, which dropped it. Off: LAST is an unknown command.
    enable_last: bool = False
    # Keep each user's last login time and client address beside the mail
    # (popbox.store.last_login; `popbox last USER`).
    last_login: bool = False

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_address(item)
        return value

    _check_proxy = field_validator("proxy_networks")(classmethod(
        lambda cls, value: check_networks(value)))


class LimitsSection(_Section):
    idle_timeout: Annotated[float, Field(ge=RFC1939_MIN_IDLE)] = 600.0
    login_timeout: Annotated[float, Field(gt=0)] = 60.0
    send_timeout: Annotated[float, Field(gt=0)] = 300.0
    shutdown_grace: Annotated[float, Field(ge=0)] = 10.0
    bad_commands_before_login: Annotated[int, Field(ge=1)] = 3
    bad_commands_after_login: Annotated[int, Field(ge=1)] = 20
    login_delay: Annotated[int, Field(ge=0)] = 0  # RFC 2449 §6.8: seconds between logins
    max_connections: Annotated[int, Field(ge=1)] = 10000
    max_connections_per_ip: Annotated[int, Field(ge=1)] = 50
    # Sessions of one user from one address at once, across workers (server.userip);
    # 0: no limit. As Dovecot's mail_max_userip_connections.
    max_connections_per_user_ip: Annotated[int, Field(ge=0, le=2048)] = 10
    # Failed logins: each failure is answered after a delay that doubles from
    # penalty_initial to penalty_cap, per client network and per user name (0 turns it
    # off); after max_auth_failures on one connection it is closed.
    penalty_initial: Annotated[float, Field(ge=0)] = 2.0
    penalty_cap: Annotated[float, Field(ge=0)] = 15.0
    penalty_window: Annotated[float, Field(gt=0)] = 900.0
    penalty_ipv6_prefix: Annotated[int, Field(ge=1, le=128)] = 64
    penalty_exempt: list[str] = Field(default_factory=list)  # trusted networks
    max_auth_failures: Annotated[int, Field(ge=1)] = 3

    _check_exempt = field_validator("penalty_exempt")(classmethod(
        lambda cls, value: check_networks(value)))

    @field_validator("max_connections_per_user_ip")
    @classmethod
    def _check_user_ip(cls, value: int) -> int:
        if value == 1:
            raise ValueError("1 would refuse a second login with this limit instead of "
                             "[IN-USE] (the maildrop lock allows one session already): "
                             "use 0 (no limit) or at least 2")
        return value


class AuthSection(_Section):
    # Where passwords and mail locations come from: a Dovecot passwd-file, or the
    # `users` table of [postgres] (popbox.auth.postgres).
    backend: Literal["passwd-file", "postgres"] = "passwd-file"
    passwd_file: Path = Path("/etc/popbox/users")
    mail_location: str = "/var/vmail/{domain}/{local}/Maildir"
    apop: bool = False  # MD5 challenge-response is weak: off unless asked for
    # Plaintext mechanisms (USER/PASS, PLAIN, LOGIN) without TLS: "local" allows them only
    # from `local_networks`; "always" is for legacy networks (logged as a warning).
    cleartext: Literal["local", "always"] = "local"
    local_networks: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    # SASL mechanisms to offer, in this order (RFC 5034). None: PLAIN LOGIN SCRAM-SHA-256
    # SCRAM-SHA-256-PLUS SCRAM-SHA-1 CRAM-MD5, plus OAUTHBEARER XOAUTH2 with [oauth].
    # Each is offered only where it can work: the passdb can serve its credential for
    # every user, -PLUS only over TLS, password- and token-sending ones only where
    # cleartext is allowed (SCRAM and CRAM-MD5 never send the password).
    mechanisms: list[str] | None = None
    # Serve CRAM-MD5 and SCRAM to users stored as {PLAIN}, deriving the credential at each
    # login. Off by default: a plaintext users file still offers only PLAIN and LOGIN.
    derive_credentials: bool = False
    # A file of random bytes shared by every popbox process and frontend: it keys the
    # salts derived for {PLAIN} users and the mock salts shown for unknown users
    # (RFC 5802 §5.1), so they stay the same across processes. Unset: random per process.
    secret_file: Path | None = None
    # Seconds a successful verification of a slow hash (crypt, Argon2, SCRAM) is
    # remembered, as Dovecot's auth cache: the same password for the same stored hash is
    # then accepted without hashing again. Wrong passwords are never remembered. 0: off.
    cache_ttl: Annotated[float, Field(ge=0, le=86_400)] = 300.0
    # Characters translated in user names before anything looks them up, as Dovecot's
    # auth_username_translation: each entry is a pair "from to", so ["+@", "%@"] serves
    # john+example.org and john%example.org (SDPS-style names) as john@example.org.
    username_translation: list[str] = Field(default_factory=list)

    @field_validator("username_translation")
    @classmethod
    def _check_translation(cls, value: list[str]) -> list[str]:
        for pair in value:
            if len(pair) != 2:
                raise ValueError(f"{pair!r} is not a pair of characters")
        if len({pair[0] for pair in value}) != len(value):
            raise ValueError("a character is translated twice")
        return value
    # A user the userdb gives a uid/gid has their mail read, and delivered mail written,
    # only with that identity (popbox.mailproc); as Dovecot's, lower uids and gids
    # (system accounts) and uid/gid 0 are refused. A mail process with no session or
    # delivery exits after mail_process_idle.
    first_valid_uid: Annotated[int, Field(ge=1)] = 500
    first_valid_gid: Annotated[int, Field(ge=1)] = 1
    mail_process_idle: Annotated[float, Field(gt=0, le=86_400)] = 60.0

    @field_validator("mechanisms")
    @classmethod
    def _check_mechanisms(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        names = [name.upper() for name in value]
        for name in names:
            if name not in sasl.INFO:
                raise ValueError(f"unknown SASL mechanism {name!r}")
        if len(set(names)) != len(names):
            raise ValueError("a SASL mechanism is listed twice")
        return names

    _check_local = field_validator("local_networks")(classmethod(
        lambda cls, value: check_networks(value)))

    def is_local(self, address: str) -> bool:
        return address == "local" or in_networks(address, self.local_networks)


MboxLock = Literal["dotlock", "fcntl", "flock"]
DEFAULT_MBOX_LOCKS: tuple[MboxLock, ...] = ("dotlock", "fcntl")  # as Debian's Postfix local


class StoreSection(_Section):
    backend: Literal["maildir", "postgres"] = "maildir"
    mark_seen: bool = True
    uidl_import: Literal["dovecot", "courier"] | None = None
    # mbox spools (locations "mbox:PATH", popbox.store.mbox): the format read and
    # written, the spool locks in the order taken, how long to wait for them, after how
    # many seconds without change a dotlock is broken, and where the index files go
    # (None: ".popbox" beside the spool).
    mbox_format: Literal["mboxrd", "mboxo"] = "mboxrd"
    mbox_lock: list[MboxLock] = Field(default_factory=lambda: list(DEFAULT_MBOX_LOCKS))
    mbox_lock_timeout: Annotated[float, Field(gt=0)] = 30.0
    mbox_dotlock_stale: Annotated[float, Field(gt=0)] = 300.0
    mbox_index_dir: Path | None = None
    # A group (Dovecot's mail_privileged_group, e.g. "mail") whose gid a per-uid mail
    # process keeps as its saved set-group-ID and takes on only to create or remove an
    # mbox dotlock (or a missing spool) in a folder like /var/mail (root:mail 2775).
    mail_privileged_group: str | None = None

    @field_validator("mbox_lock")
    @classmethod
    def _check_locks(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a lock method is listed twice")
        return value
    # A maildir (or its cur/, new/, tmp/) that is a symlink is refused unless this is set;
    # message files that are symlinks are never served.
    follow_symlinks: bool = False
    # RFC 2449 §6.7 EXPIRE: `popbox expire` deletes messages retrieved this many days ago
    # (a user's `expire_days` userdb field wins); None: never (EXPIRE NEVER). Unretrieved
    # mail is kept unless expire_unretrieved, then it goes this many days after delivery.
    expire_days: Annotated[int, Field(ge=0, le=100_000)] | None = None
    expire_unretrieved: bool = False
    # What QUIT does with DELE'd messages: "remove" them, or move them to the trash
    # (Maildir: the .Trash folder; PostgreSQL: deleted_at), whence `popbox undelete`
    # puts them back and `popbox expire` purges them after trash_days.
    deleted: Literal["remove", "trash"] = "remove"
    trash_days: Annotated[int, Field(ge=0, le=100_000)] = 30


class CertPair(_Section):
    cert: Path
    key: Path


class TlsSection(_Section):
    """Certificates for STLS (RFC 2595) and implicit TLS (RFC 8314) listeners."""

    cert: Path | None = None
    key: Path | None = None
    implicit: list[str] = Field(default_factory=list)  # POP3S listeners, e.g. ":995"
    sni: dict[str, CertPair] = Field(default_factory=dict)
    min_version: Literal["1.2", "1.3"] = "1.2"
    handshake_timeout: Annotated[float, Field(gt=0)] = 30.0
    follow_symlinks: bool = False  # certificate or key files that are symlinks are refused

    @field_validator("implicit")
    @classmethod
    def _check_implicit(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_address(item)
        return value

    @property
    def enabled(self) -> bool:
        return self.cert is not None and self.key is not None


class OAuthSection(_Section):
    """Bearer tokens for OAUTHBEARER (RFC 7628) and XOAUTH2. Off unless `validator` is set.

    "jwt": signed JWTs checked locally (RFC 7519, RFC 8725): signature with a key from
    `jwks_file` or `public_key_file`, `issuer`, `audience`, expiry. "introspection": the
    token is sent to `introspection_url` (RFC 7662) with the client credentials.
    """

    validator: Literal["jwt", "introspection"] | None = None
    username_claim: str | None = None  # default: "email" (jwt), "username" (introspection)
    issuer: str | None = None
    audience: str | None = None
    leeway: Annotated[float, Field(ge=0, le=600)] = 30.0  # clock skew allowed on exp/nbf
    # jwt
    jwks_file: Path | None = None
    public_key_file: Path | None = None
    algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "PS256", "ES256", "ES384", "EdDSA"]
    )
    # introspection
    introspection_url: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    ca_file: Path | None = None
    timeout: Annotated[float, Field(gt=0)] = 10.0
    # what the OAUTHBEARER/XOAUTH2 error challenge tells the client (RFC 7628 §3.2.2)
    scope: str | None = None
    openid_configuration: str | None = None

    @property
    def enabled(self) -> bool:
        return self.validator is not None

    @field_validator("algorithms")
    @classmethod
    def _check_algorithms(cls, value: list[str]) -> list[str]:
        if not value or any(a.lower() == "none" for a in value):
            raise ValueError('list at least one algorithm; "none" is never accepted')
        return value

    @model_validator(mode="after")
    def _complete(self) -> OAuthSection:
        if self.validator == "jwt":
            if (self.jwks_file is None) == (self.public_key_file is None):
                raise ValueError("jwt needs exactly one of jwks_file and public_key_file")
            if not self.issuer or not self.audience:
                raise ValueError("jwt needs issuer and audience")
        if self.validator == "introspection":
            if not self.introspection_url or not self.introspection_url.startswith(
                ("https://", "http://")
            ):
                raise ValueError("introspection needs an http(s) introspection_url")
            if self.client_secret is not None and self.client_secret_file is not None:
                raise ValueError("give client_secret or client_secret_file, not both")
        return self


class PostgresSection(_Section):
    """The database of the postgres store and passdb/userdb (`popbox db upgrade` makes its
    schema). One pool per process; each process also keeps one connection for the
    maildrop locks (popbox.store.pg_lock)."""

    dsn: SecretStr = SecretStr("postgresql://popbox@localhost/popbox")  # libpq URI
    pool_min: Annotated[int, Field(ge=0)] = 1
    pool_max: Annotated[int, Field(ge=1)] = 10
    connect_timeout: Annotated[float, Field(gt=0)] = 10.0
    command_timeout: Annotated[float, Field(gt=0)] = 30.0
    chunk_size: Annotated[int, Field(ge=4096, le=16 * 1024 * 1024)] = 256 * 1024  # RETR
    listing_cache: Annotated[int, Field(ge=0)] = 200_000  # listing rows kept per process

    @model_validator(mode="after")
    def _pool(self) -> PostgresSection:
        if self.pool_min > self.pool_max:
            raise ValueError("pool_min must not exceed pool_max")
        return self


class LmtpSection(_Section):
    """`popbox lmtp` (RFC 2033) and `popbox deliver`: mail in, into the configured store."""

    listen: list[str] = Field(default_factory=list)  # "host:port" or a unix socket "/path"
    socket_mode: Annotated[int, Field(ge=0, le=0o777)] = 0o660  # of unix sockets
    hostname: str | None = None  # in the greeting and LHLO reply; default server.hostname
    max_message_size: Annotated[int, Field(ge=1024)] = 50 * 1024 * 1024  # RFC 1870 SIZE
    max_recipients: Annotated[int, Field(ge=1)] = 100  # RFC 5321 §4.5.3.1.8: at least 100
    timeout: Annotated[float, Field(gt=0)] = 300.0  # RFC 5321 §4.5.3.2: 5 minutes
    recipient_delimiter: str = ""  # e.g. "+": alice+lists@x is delivered to alice@x
    strip_domain: bool = False  # look recipients up by their local part only
    # seconds a recipient found in the userdb is remembered (popbox.lmtp.agent); 0: never
    recipient_cache: Annotated[float, Field(ge=0)] = 5.0
    # Prometheus /metrics of `popbox lmtp` (popbox_lmtp_deliveries_total), as [metrics]
    metrics_listen: str | None = None

    @field_validator("metrics_listen")
    @classmethod
    def _check_metrics(cls, value: str | None) -> str | None:
        if value is not None:
            check_loopback(value, public=False)
        return value

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item.startswith("/"):
                parse_address(item)
        return value


LOGOUT_FIELDS = ("user", "ip", "reason", "top", "retr", "dele", "bytes", "duration", "mech",
                 "tls", "commands")


class LogSection(_Section):
    """Where log lines go and how they look (see the README's logs section)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    # "text": `date popbox[pid]: event key=value ...`; "json": one object a line, the same
    # fields, with "v" (the format's version).
    format: Literal["text", "json"] = "text"
    # "stderr", "syslog" (/dev/log, facility mail) or a file name (SIGUSR1 reopens it).
    target: str = "stderr"
    # The fields of a logged-in session's `logout` line, in order (pop3_logout_format).
    logout_fields: list[str] = Field(
        default_factory=lambda: ["user", "ip", "reason", "retr", "dele", "bytes"])

    @field_validator("logout_fields")
    @classmethod
    def _check_fields(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in LOGOUT_FIELDS:
                known = ", ".join(LOGOUT_FIELDS)
                raise ValueError(f"unknown logout field {name!r}; known: {known}")
        return value

    @field_validator("target")
    @classmethod
    def _check_target(cls, value: str) -> str:
        if not value:
            raise ValueError('give "stderr", "syslog" or a file name')
        return value


class MetricsSection(_Section):
    """Prometheus `/metrics` over HTTP. Off unless `listen` is set; only on a loopback
    address unless `public` says the operator has protected the port some other way."""

    listen: str | None = None  # e.g. "127.0.0.1:9110"
    public: bool = False

    @model_validator(mode="after")
    def _loopback(self) -> MetricsSection:
        if self.listen is not None:
            check_loopback(self.listen, self.public)
        return self


class AdminSection(_Section):
    """The admin socket of `popbox who`, `kick`, `reload`, `stats` (a unix socket)."""

    socket: Path | None = None  # e.g. /run/popbox/admin.sock; off when unset
    group: str | None = None  # may use it too (mode 0660); otherwise only root and the owner


class Config(_Section):
    server: ServerSection = Field(default_factory=ServerSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    auth: AuthSection = Field(default_factory=AuthSection)
    store: StoreSection = Field(default_factory=StoreSection)
    tls: TlsSection = Field(default_factory=TlsSection)
    oauth: OAuthSection = Field(default_factory=OAuthSection)
    postgres: PostgresSection = Field(default_factory=PostgresSection)
    lmtp: LmtpSection = Field(default_factory=LmtpSection)
    log: LogSection = Field(default_factory=LogSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    admin: AdminSection = Field(default_factory=AdminSection)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [parse_address(item) for item in self.server.listen]

    @property
    def tls_addresses(self) -> list[tuple[str, int]]:
        return [parse_address(item) for item in self.tls.implicit]

    @model_validator(mode="after")
    def _tls_complete(self) -> Config:
        if (self.tls.cert is None) != (self.tls.key is None):
            raise ValueError("tls.cert and tls.key must be given together")
        if self.tls.implicit and not self.tls.enabled:
            raise ValueError("tls.implicit listeners need tls.cert and tls.key")
        bearer = set(sasl.BEARER_MECHANISMS) & set(self.auth.mechanisms or ())
        if bearer and not self.oauth.enabled:
            raise ValueError(f"auth.mechanisms {sorted(bearer)} need [oauth] validator")
        return self

    @model_validator(mode="after")
    def _postgres_location(self) -> Config:
        """With the postgres store a mail location names a mailbox: the user name, unless
        auth.mail_location says otherwise."""
        if self.store.backend == "postgres" and "mail_location" not in self.auth.model_fields_set:
            auth = self.auth.model_copy(update={"mail_location": "{user}"})
            return self.model_copy(update={"auth": auth})
        return self


class ConfigError(Exception):
    """A configuration file that cannot be used; the message is for the operator."""


def load(path: Path) -> Config:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return from_dict(data, str(path))


def from_dict(data: dict[str, object], origin: str = "<config>") -> Config:
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"]) or "(top level)"
            problems.append(f"{origin}: {key}: {error['msg']}")
        raise ConfigError("\n".join(problems)) from None
    if origin[0] != "<":
        config = _resolve_paths(config, Path(origin).resolve().parent)
    return config


def _resolve_paths(config: Config, base: Path) -> Config:
    """Relative file names in a config file are relative to the file's folder."""

    def fix(path: Path | None) -> Path | None:
        return base / path if path is not None and not path.is_absolute() else path

    tls = config.tls.model_copy(update={
        "cert": fix(config.tls.cert), "key": fix(config.tls.key),
        "sni": {
            domain: CertPair(cert=base / pair.cert, key=base / pair.key)
            for domain, pair in config.tls.sni.items()
        },
    })
    auth = config.auth.model_copy(update={
        "passwd_file": fix(config.auth.passwd_file), "secret_file": fix(config.auth.secret_file),
    })
    oauth = config.oauth.model_copy(update={
        key: fix(getattr(config.oauth, key))
        for key in ("jwks_file", "public_key_file", "client_secret_file", "ca_file")
    })
    admin = config.admin.model_copy(update={"socket": fix(config.admin.socket)})
    index_dir = config.store.mbox_index_dir  # "~/...": each user's home, when used
    if index_dir is not None and not str(index_dir).startswith("~"):
        index_dir = fix(index_dir)
    store = config.store.model_copy(update={"mbox_index_dir": index_dir})
    return config.model_copy(
        update={"tls": tls, "auth": auth, "oauth": oauth, "admin": admin, "store": store})
