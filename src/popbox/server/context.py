"""What every session of one server process shares: configuration, backends, and the
small amount of process-wide state (last login times for LOGIN-DELAY, live sessions for
shutdown, the APOP timestamp counter).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from popbox.backends import Backends
from popbox.config import Config
from popbox.mailproc import MailAccess, MailHost
from popbox.metrics import Metrics
from popbox.server.clock import SYSTEM, Clock
from popbox.server.observe import Observer
from popbox.server.penalty import PenaltyBook
from popbox.server.tls import TlsContexts
from popbox.server.userip import UserIpSlots

log = logging.getLogger("popbox")


@dataclass(slots=True)
class ServerContext:
    config: Config
    backends: Backends
    tls: TlsContexts | None = None
    last_login: dict[str, float] = field(default_factory=dict)
    sessions: set[asyncio.Task[None]] = field(default_factory=set)
    per_ip: collections.Counter[str] = field(default_factory=collections.Counter)
    penalties: PenaltyBook = field(default_factory=PenaltyBook)
    user_ip: UserIpSlots = field(default_factory=UserIpSlots.shared)
    clock: Clock = SYSTEM
    mail: MailAccess | None = None  # None: made from config and the store, in process only
    observe: Observer = field(default_factory=lambda: Observer(Config()))
    config_path: Path | None = None  # what `popbox reload` reads again
    # Listen on exactly these (plain, implicit TLS) addresses; set by the listener.
    rebind: Callable[[list[str], list[str]], Awaitable[tuple[list[str], list[str]]]] | None = None
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    @classmethod
    def create(
        cls, config: Config, backends: Backends, clock: Clock = SYSTEM,
        mail_host: MailHost | None = None,
    ) -> ServerContext:
        tls = TlsContexts(config.tls) if config.tls.enabled else None
        limits = config.limits
        penalties = PenaltyBook(
            initial=limits.penalty_initial, cap=limits.penalty_cap,
            window=limits.penalty_window, v6_prefix=limits.penalty_ipv6_prefix,
        )
        mail = MailAccess(config, backends.store, mail_host)
        metrics = Metrics() if config.metrics.listen or config.admin.socket else None
        return cls(config, backends, tls, penalties=penalties, clock=clock, mail=mail,
                   observe=Observer(config, metrics))

    def __post_init__(self) -> None:
        if self.mail is None:
            self.mail = MailAccess(self.config, self.backends.store)

    def reload_tls(self) -> None:
        if self.tls is None:
            return
        try:
            self.tls.reload()
        except (OSError, ssl.SSLError) as exc:
            log.error("TLS reload failed, keeping the old certificates: %s", exc)
        else:
            log.info("TLS certificates reloaded")

    def admit(self, peer: str) -> bool:
        """Count a new connection from `peer`, unless a connection limit says no."""
        limits = self.config.limits
        if len(self.sessions) > limits.max_connections:
            return False
        if self.per_ip[peer] >= limits.max_connections_per_ip:
            return False
        self.per_ip[peer] += 1
        return True

    def leave(self, peer: str) -> None:
        self.per_ip[peer] -= 1
        if self.per_ip[peer] <= 0:
            del self.per_ip[peer]

    def apop_timestamp(self) -> str:
        """A unique `<pid.counter.clock@host>` (RFC 1939 §7, APOP)."""
        return (
            f"<{os.getpid()}.{next(self._counter)}.{time.time_ns() // 1000}"
            f"@{self.config.server.hostname}>"
        )

    def login_too_soon(self, user: str, now: float, delay: int) -> bool:
        """RFC 2449 §6.8 LOGIN-DELAY: the last login of `user` was less than `delay` ago."""
        last = self.last_login.get(user)
        return bool(delay) and last is not None and now - last < delay

    def record_login(self, user: str, now: float, delay: int) -> None:
        if delay:
            self.last_login[user] = now
