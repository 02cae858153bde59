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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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


class ServerSection(_Section):
    listen: list[str] = Field(default_factory=lambda: ["127.0.0.1:1110"])
    hostname: str = "localhost"
    greeting: str = "popbox ready."
    workers: Annotated[int, Field(ge=1, le=256)] = 1

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_address(item)
        return value


class LimitsSection(_Section):
    idle_timeout: Annotated[float, Field(ge=RFC1939_MIN_IDLE)] = 600.0
    login_timeout: Annotated[float, Field(gt=0)] = 60.0
    send_timeout: Annotated[float, Field(gt=0)] = 300.0
    shutdown_grace: Annotated[float, Field(ge=0)] = 10.0
    bad_commands_before_login: Annotated[int, Field(ge=1)] = 3
    bad_commands_after_login: Annotated[int, Field(ge=1)] = 20
    login_delay: Annotated[int, Field(ge=0)] = 0  # RFC 2449 §6.8: seconds between logins


class AuthSection(_Section):
    passwd_file: Path = Path("/etc/popbox/users")
    mail_location: str = "/var/vmail/{domain}/{local}/Maildir"
    apop: bool = False  # MD5 challenge-response is weak: off unless asked for
    cleartext: Literal["loopback", "always"] = "loopback"


class StoreSection(_Section):
    backend: Literal["maildir"] = "maildir"
    mark_seen: bool = True
    uidl_import: Literal["dovecot", "courier"] | None = None


class LogSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Section):
    server: ServerSection = Field(default_factory=ServerSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    auth: AuthSection = Field(default_factory=AuthSection)
    store: StoreSection = Field(default_factory=StoreSection)
    log: LogSection = Field(default_factory=LogSection)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [parse_address(item) for item in self.server.listen]


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
    if config.auth.passwd_file and not config.auth.passwd_file.is_absolute() and origin[0] != "<":
        base = Path(origin).resolve().parent
        auth = config.auth.model_copy(update={"passwd_file": base / config.auth.passwd_file})
        config = config.model_copy(update={"auth": auth})
    return config
