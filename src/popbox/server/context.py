"""What every session of one server process shares: configuration, backends, and the
small amount of process-wide state (last login times for LOGIN-DELAY, live sessions for
shutdown, the APOP timestamp counter).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from dataclasses import dataclass, field

from popbox.auth.base import PassDB, UserDB
from popbox.config import Config
from popbox.store.base import MailStore


@dataclass(frozen=True, slots=True)
class Backends:
    passdb: PassDB
    userdb: UserDB
    store: MailStore


@dataclass(slots=True)
class ServerContext:
    config: Config
    backends: Backends
    last_login: dict[str, float] = field(default_factory=dict)
    sessions: set[asyncio.Task[None]] = field(default_factory=set)
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    def apop_timestamp(self) -> str:
        """A unique `<pid.counter.clock@host>` (RFC 1939 §7, APOP)."""
        return (
            f"<{os.getpid()}.{next(self._counter)}.{time.time_ns() // 1000}"
            f"@{self.config.server.hostname}>"
        )

    def login_too_soon(self, user: str, now: float) -> bool:
        delay = self.config.limits.login_delay
        last = self.last_login.get(user)
        return bool(delay) and last is not None and now - last < delay

    def record_login(self, user: str, now: float) -> None:
        if self.config.limits.login_delay:
            self.last_login[user] = now
