"""What `popbox fetch` leaves on the server: when a delivered message is DELE'd
(RFC 1939 §5), and what stands in for a message over `max_size`.

A `Retention` is the account's rule after the server had its say: `keep` (never),
`keep_days` (that many days after the first recorded delivery), or neither (at once). The
server's EXPIRE capability (RFC 2449 §6.7) is how many days it keeps retrieved mail
itself: `EXPIRE 0` means it will not keep any, `NEVER` that it keeps all; the value after
login is the user's own (`n USER` before login only says it varies). When it is smaller
than `keep_days`, it wins, and a note says so; with `keep`, a finite EXPIRE is noted (the
server removes the mail anyway).

The stand-in for `oversize = "headers"` is built from `TOP n 0` (RFC 1939 §7: the headers
and the empty line): the headers without their MIME structure (MIME-Version and
Content-*), then a plain-text note that the message is too large and where it still is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DAY = 86400.0


def server_expire(capabilities: dict[str, list[str]] | None) -> int | None:
    """Days after which the server removes retrieved mail (`EXPIRE n`, or `EXPIRE n USER`),
    None for `NEVER`, no EXPIRE or a value not understood."""
    args = (capabilities or {}).get("EXPIRE") or []
    if args and args[0].isdigit():
        return int(args[0])
    return None


@dataclass(frozen=True)
class Retention:
    keep_for: float | None  # seconds after the first delivery; None: never DELE

    @classmethod
    def of(cls, keep: bool, keep_days: float | None, expire: int | None
           ) -> tuple[Retention, str | None]:
        """The rule for these options and the server's EXPIRE, and a note when the server's
        value matters."""
        if keep:
            note = None if expire is None else (
                f"the server removes retrieved mail after {expire} day(s) (EXPIRE {expire}), "
                "whatever keep says")
            return cls(None), note
        if keep_days is None:
            return cls(0.0), None
        if expire is not None and expire < keep_days:
            return cls(expire * DAY), (
                f"the server keeps retrieved mail for {expire} day(s) (EXPIRE {expire}), "
                f"less than keep_days = {keep_days:g}: messages are deleted after "
                f"{expire} day(s)")
        return cls(keep_days * DAY), None

    @property
    def counts_days(self) -> bool:
        """Delivery times matter (a positive number of days)."""
        return bool(self.keep_for)

    def due(self, delivered_at: float | None, now: float) -> bool:
        """Whether a message first delivered at `delivered_at` is to be DELE'd now."""
        if self.keep_for is None:
            return False
        if self.keep_for <= 0:
            return True
        return delivered_at is not None and now - delivered_at >= self.keep_for


_MIME_HEADER = re.compile(rb"(?im)^(content-[a-z-]*|mime-version):[^\n]*\n(?:[ \t][^\n]*\n)*")


def stand_in(top: bytes, size: int, limit: int, server: str, uidl: str) -> bytes:
    """What `oversize = "headers"` delivers: the message's headers (from `TOP n 0`, CRLF)
    without its MIME structure, and a short plain-text note saying where the message is."""
    head = top.replace(b"\r\n", b"\n")
    end = head.find(b"\n\n")
    head = head[: end + 1] if end >= 0 else (head if head.endswith(b"\n") else head + b"\n")
    head = _MIME_HEADER.sub(b"", head)
    note = (f"MIME-Version: 1.0\n"
            f"Content-Type: text/plain; charset=us-ascii\n"
            f"X-Popbox-Fetch: headers only; {size} octets left on the server\n\n"
            f"This message is {size} octets, more than the {limit} that popbox fetch takes\n"
            f"for this account (max_size), so only its headers are here. The whole\n"
            f"message is still on {server} (UIDL {uidl}).\n")
    return (head + note.encode("ascii", "replace")).replace(b"\n", b"\r\n")
