"""The figures the benchmark reports: one row of RESULTS.md each."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Figure:
    key: str
    title: str
    unit: str
    higher_is_better: bool
    digits: int = 0

    def fmt(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        if self.digits == 0 and abs(value) >= 100:
            return f"{value:,.0f}"
        digits = self.digits if self.digits else (1 if abs(value) >= 10 else 2)
        return f"{value:,.{digits}f}"


LOGIN_CONCURRENCY = (1, 16, 64)
RETR_CONCURRENCY = (1, 8)
SCHEMES = (("plain", "{PLAIN}"), ("crypt", "{SHA512-CRYPT}"))
STLS_CONCURRENCY = (1, 16)  # {PLAIN} users, after STLS (RFC 2595)
SIZES = (("r10k", "10 KB"), ("r1m", "1 MB"))


def all_figures(idle_counts: tuple[int, ...], big_msgs: int, huge_mb: int) -> list[Figure]:
    big = f"{big_msgs:,}-message maildrop"
    out: list[Figure] = []
    for scheme, label in SCHEMES:
        for c in LOGIN_CONCURRENCY:
            out.append(Figure(f"login.{scheme}.c{c}.rate",
                              f"Logins/s, {label}, {c} client{'s' if c > 1 else ''}",
                              "logins/s", True))
            out.append(Figure(f"login.{scheme}.c{c}.cpu",
                              f"Server CPU per login, {label}, c={c}", "ms", False, 2))
    for c in STLS_CONCURRENCY:
        out.append(Figure(f"login.stls.c{c}.rate",
                          f"Logins/s with STLS, {{PLAIN}}, {c} client{'s' if c > 1 else ''}",
                          "logins/s", True))
        out.append(Figure(f"login.stls.c{c}.cpu", f"Server CPU per login with STLS, c={c}",
                          "ms", False, 2))
    for size, label in SIZES:
        for c in RETR_CONCURRENCY:
            out.append(Figure(f"retr.{size}.c{c}.mbps",
                              f"RETR {label} messages, {c} client{'s' if c > 1 else ''}",
                              "MB/s", True, 1))
            out.append(Figure(f"retr.{size}.c{c}.msgs", f"Messages/s, {label}, c={c}",
                              "msgs/s", True))
            out.append(Figure(f"retr.{size}.c{c}.cpu", f"Server CPU per GB, {label}, c={c}",
                              "s/GB", False, 1))
    out += [
        Figure("uidl.cold", f"{big}: PASS+STAT+UIDL, first login ever", "s", False, 2),
        Figure("uidl.cold.cpu", "Server CPU, that first login", "s", False, 2),
        Figure("uidl.warm", f"{big}: PASS+STAT+UIDL, later logins", "s", False, 3),
        Figure("uidl.warm.cpu", "Server CPU, one later login", "s", False, 3),
    ]
    for n in idle_counts:
        out += [
            Figure(f"idle.{n}.ok", f"Idle sessions: logged in of {n:,}", "sessions", True),
            Figure(f"idle.{n}.total", f"Server memory with {n:,} sessions (PSS)", "MiB",
                   False, 1),
            Figure(f"idle.{n}.per", f"Memory per idle session (PSS growth / {n:,})",
                   "KiB", False, 1),
        ]
    out += [
        Figure("huge.growth", f"{huge_mb} MB message RETR: peak RSS growth", "MiB", False, 1),
        Figure("huge.mbps", f"RETR speed of the {huge_mb} MB message", "MB/s", True, 1),
    ]
    return out
