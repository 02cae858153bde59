"""Failed-login penalties, like Dovecot's auth_penalty.

Every failed login counts against the client's address (IPv6 grouped by a configurable
prefix, /64 by default, so one host cannot dodge by rotating addresses inside its
network) and against the user name it tried. Before the answer to a login attempt, the
session waits `initial * 2**(failures-1)` seconds, capped at `cap`, for the larger of the
two counts. The wait is a timer, not a blocked worker: a thousand penalised connections
cost no CPU. A success clears the address's and the user's counts; counts also expire
after `window` seconds without failures. The table is bounded: the oldest entries go
first.

The clock is passed in (`now`), so the policy is testable without waiting.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass


@functools.lru_cache(maxsize=4096)
def _network(address: str, v4_prefix: int, v6_prefix: int) -> str:
    """The penalty key of a client address (parsed once per address: clients come back)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "addr:" + address
    prefix = v6_prefix if ip.version == 6 else v4_prefix
    return "net:" + str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


@dataclass(slots=True)
class _Entry:
    failures: int
    last: float


class PenaltyBook:
    __slots__ = ("_entries", "cap", "initial", "max_entries", "v4_prefix", "v6_prefix", "window")

    def __init__(
        self, initial: float = 2.0, cap: float = 15.0, window: float = 900.0,
        v4_prefix: int = 32, v6_prefix: int = 64, max_entries: int = 100_000,
    ) -> None:
        self.initial = initial
        self.cap = cap
        self.window = window
        self.v4_prefix = v4_prefix
        self.v6_prefix = v6_prefix
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def keys(self, address: str, user: str | None) -> tuple[str, ...]:
        """The table keys a login attempt counts against."""
        keys = [self.network(address)]
        if user:
            keys.append("user:" + user.lower())
        return tuple(keys)

    def network(self, address: str) -> str:
        return _network(address, self.v4_prefix, self.v6_prefix)

    def delay(self, keys: tuple[str, ...], now: float) -> float:
        """Seconds to wait before answering this attempt."""
        if self.initial <= 0:
            return 0.0
        worst = 0
        for key in keys:
            entry = self._entries.get(key)
            if entry is not None and now - entry.last < self.window:
                worst = max(worst, entry.failures)
        if worst == 0:
            return 0.0
        return float(min(self.cap, self.initial * 2 ** min(worst - 1, 32)))

    def failed(self, keys: tuple[str, ...], now: float) -> None:
        for key in keys:
            entry = self._entries.pop(key, None)
            if entry is None or now - entry.last >= self.window:
                entry = _Entry(0, now)
            entry.failures += 1
            entry.last = now
            self._entries[key] = entry
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def succeeded(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
