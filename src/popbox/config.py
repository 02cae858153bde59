"""Configuration: one TOML file, validated by pydantic into frozen data.

Every key has a safe default, so an empty file is a valid (if useless) configuration.
A bad file is reported as one `ConfigError` naming the file, the key and the problem;
the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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


def check_networks(value: list[str]) -> list[str]:
    for item in value:
        ipaddress.ip_network(item, strict=False)
    return value


def in_networks(address: str, networks: list[str]) -> bool:
    """Whether an IP address (IPv4-mapped IPv6 included) is in one of `networks`."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


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


class AuthSection(_Section):
    passwd_file: Path = Path("/etc/popbox/users")
    mail_location: str = "/var/vmail/{domain}/{local}/Maildir"
    apop: bool = False  # MD5 challenge-response is weak: off unless asked for
    # Plaintext mechanisms (USER/PASS, PLAIN, LOGIN) without TLS: "local" allows them only
    # from `local_networks`; "always" is for legacy networks (logged as a warning).
    cleartext: Literal["local", "always"] = "local"
    local_networks: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])

    _check_local = field_validator("local_networks")(classmethod(
        lambda cls, value: check_networks(value)))

    def is_local(self, address: str) -> bool:
        return address == "local" or in_networks(address, self.local_networks)


class StoreSection(_Section):
    backend: Literal["maildir"] = "maildir"
    mark_seen: bool = True
    uidl_import: Literal["dovecot", "courier"] | None = None


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

    @field_validator("implicit")
    @classmethod
    def _check_implicit(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_address(item)
        return value

    @property
    def enabled(self) -> bool:
        return self.cert is not None and self.key is not None


class LogSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Section):
    server: ServerSection = Field(default_factory=ServerSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    auth: AuthSection = Field(default_factory=AuthSection)
    store: StoreSection = Field(default_factory=StoreSection)
    tls: TlsSection = Field(default_factory=TlsSection)
    log: LogSection = Field(default_factory=LogSection)

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
    auth = config.auth.model_copy(update={"passwd_file": fix(config.auth.passwd_file)})
    return config.model_copy(update={"tls": tls, "auth": auth})
