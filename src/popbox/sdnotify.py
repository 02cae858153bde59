"""systemd's readiness protocol (sd_notify(3)) for `Type=notify` units, spoken directly:
one datagram per state change to the unix socket named in $NOTIFY_SOCKET (a leading "@"
is the abstract namespace). Without that variable every call does nothing.

popbox sends READY=1 once it listens (every worker listens), RELOADING=1 and READY=1
around `popbox reload`, STOPPING=1 on SIGTERM/SIGINT, and WATCHDOG=1 every half of
$WATCHDOG_USEC while it is alive (from the event loop, or with several workers from the
supervisor while every worker is running).
"""

from __future__ import annotations

import os
import socket
import time


def notify(*states: str) -> bool:
    """Send `states` ("READY=1", ...); whether there was a socket to send them to."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.setblocking(False)  # a reader that is behind must not stop the server
        try:
            sock.sendto("\n".join(states).encode(), target)
        except OSError:
            return False
    return True


def reloading() -> None:
    notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half the unit's WatchdogSec), or None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
