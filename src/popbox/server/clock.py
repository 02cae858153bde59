"""Time for the session policies, as one object they are given rather than read.

`Authorization` reads the monotonic clock for the penalty book and LOGIN-DELAY
(RFC 2449 §6.8), wall time for OAuth token expiry (RFC 6750 §3), and waits out login
penalties with `sleep`. The server passes `SYSTEM`; tests pass a clock they move by hand,
so a 30-second penalty or a token that expires tomorrow is tested at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (intervals, deadlines)."""
        ...

    def time(self) -> float:
        """Seconds since the epoch (expiry dates)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` on this clock."""
        ...


class SystemClock:
    """The machine's clocks and asyncio's sleep."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM = SystemClock()
