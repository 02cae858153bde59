"""The figures the benchmark reports: one row of RESULTS.md each."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Figure:
    key: str
    title: str
    unit: str
    higher_is_better: bool
    digits: int = 0
    servers: tuple[str, ...] | None = None  # the servers that measure it; None: all of them
    # A database CPU row: the key of the row with the server process's own CPU, to which
    # it adds (the ratio of such a row compares the sum of the two).
    base: str | None = None

    def measured_by(self, server: str) -> bool:
        return self.servers is None or server in self.servers

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
LOGIN_KINDS = ("plain", "crypt", "stls")
MIXED_CONCURRENCY = 16
# QUIT after RETR of a whole maildrop: nothing to change, every message to flag seen
# (new/ -> cur/ with S), every message DELE'd
QUIT_CASES = ("seen", "flag", "dele")
# The servers of the figures that put a maildrop back before each sample (QUIT to flag
# or DELE, the first login from disk): popbox (Maildir) and one Dovecot mode. Dovecot's
# two modes differ only in their login processes, which have handed the session to
# the same `pop3` process by then; and the full run has no time for both.
RESET_SERVERS = ("popbox", "dovecot-hp")


def all_figures(idle_counts: tuple[int, ...], big_msgs: int, huge_mb: int, *,
                login_kinds: Mapping[str, tuple[str, ...]] | None = None,
                db_servers: tuple[str, ...] = (),
                big_idle_servers: tuple[str, ...] | None = None,
                tls_idle: int = 0,
                tls_idle_servers: tuple[str, ...] | None = None,
                quit_msgs: int = 1000) -> list[Figure]:
    """The table's rows. `login_kinds`: server -> the login figures it runs ("plain",
    "crypt", "stls"; None: all of them everywhere); `db_servers`: the servers with a
    database, whose CPU gets a row of its own under each server-CPU row they measure;
    `big_idle_servers`: those that run the largest idle count (when there are two);
    `tls_idle`: the number of idle TLS (STLS) sessions (0: no such figure), measured by
    `tls_idle_servers` (None: all of them)."""
    big = f"{big_msgs:,}-message maildrop"
    out: list[Figure] = []

    def who(kind: str) -> tuple[str, ...] | None:
        if login_kinds is None:
            return None
        return tuple(name for name, kinds in login_kinds.items() if kind in kinds)

    def cpu(fig: Figure, title: str) -> None:
        out.append(fig)
        db = tuple(n for n in db_servers if fig.measured_by(n))
        if db:
            out.append(Figure(fig.key + ".db", title, fig.unit, False, fig.digits, db,
                              base=fig.key))

    for scheme, label in SCHEMES:
        for c in LOGIN_CONCURRENCY:
            out.append(Figure(f"login.{scheme}.c{c}.rate",
                              f"Logins/s, {label}, {c} client{'s' if c > 1 else ''}",
                              "logins/s", True, servers=who(scheme)))
            cpu(Figure(f"login.{scheme}.c{c}.cpu",
                       f"Server CPU per login, {label}, c={c}", "ms", False, 2, who(scheme)),
                f"PostgreSQL CPU per login, {label}, c={c}")
    for c in STLS_CONCURRENCY:
        out.append(Figure(f"login.stls.c{c}.rate",
                          f"Logins/s with STLS, {{PLAIN}}, {c} client{'s' if c > 1 else ''}",
                          "logins/s", True, servers=who("stls")))
        cpu(Figure(f"login.stls.c{c}.cpu", f"Server CPU per login with STLS, c={c}",
                   "ms", False, 2, who("stls")),
            f"PostgreSQL CPU per login with STLS, c={c}")
    for size, label in SIZES:
        for c in RETR_CONCURRENCY:
            out.append(Figure(f"retr.{size}.c{c}.mbps",
                              f"RETR {label} messages, {c} client{'s' if c > 1 else ''}",
                              "MB/s", True, 1))
            out.append(Figure(f"retr.{size}.c{c}.msgs", f"Messages/s, {label}, c={c}",
                              "msgs/s", True))
            cpu(Figure(f"retr.{size}.c{c}.cpu", f"Server CPU per GB, {label}, c={c}",
                       "s/GB", False, 1),
                f"PostgreSQL CPU per GB, {label}, c={c}")
    quit_titles = {"seen": "all already seen", "flag": "all to flag seen (new/ -> cur/)",
                   "dele": "all DELE'd"}
    for case in QUIT_CASES:
        out.append(Figure(f"quit.{case}", f"QUIT after RETR of {quit_msgs:,} messages, "
                          f"{quit_titles[case]}: p50", "ms", False, 2,
                          None if case == "seen" else RESET_SERVERS))
    c = MIXED_CONCURRENCY
    out.append(Figure(f"mixed.c{c}.rate", f"Mixed sessions/s (STAT, UIDL, RETR, DELE), {c} "
                      "clients", "sessions/s", True))
    cpu(Figure(f"mixed.c{c}.cpu", f"Server CPU per mixed session, c={c}", "ms", False, 2),
        f"PostgreSQL CPU per mixed session, c={c}")
    first = "first login ever" + (" (PostgreSQL: the first after the import)"
                                  if db_servers else "")
    out.append(Figure("uidl.cold", f"{big}: PASS+STAT+UIDL, {first}", "s", False, 2))
    cpu(Figure("uidl.cold.cpu", "Server CPU, that first login", "s", False, 2),
        "PostgreSQL CPU, that first login")
    out.append(Figure("uidl.warm", f"{big}: PASS+STAT+UIDL, later logins", "s", False, 3))
    cpu(Figure("uidl.warm.cpu", "Server CPU, one later login", "s", False, 3),
        "PostgreSQL CPU, one later login")
    out.append(Figure("uidl.disk", f"{big}: PASS+STAT+UIDL, first login ever, page cache "
                      "dropped", "s", False, 2, RESET_SERVERS))
    out.append(Figure("uidl.disk.cpu", "Server CPU, that first login from disk", "s", False,
                      2, RESET_SERVERS))
    for n in idle_counts:
        only = (big_idle_servers if len(idle_counts) > 1 and n == max(idle_counts)
                else None)
        out += [
            Figure(f"idle.{n}.ok", f"Idle sessions: logged in of {n:,}", "sessions", True,
                   servers=only),
            Figure(f"idle.{n}.total", f"Server memory with {n:,} sessions (PSS)", "MiB",
                   False, 1, only),
            Figure(f"idle.{n}.per", f"Memory per idle session (PSS growth / {n:,})",
                   "KiB", False, 1, only),
        ]
    if tls_idle:
        n, only = tls_idle, tls_idle_servers
        out += [
            Figure(f"idle.tls.{n}.ok", f"Idle TLS sessions (STLS): logged in of {n:,}",
                   "sessions", True, servers=only),
            Figure(f"idle.tls.{n}.total", f"Server memory with {n:,} TLS sessions (PSS)",
                   "MiB", False, 1, only),
            Figure(f"idle.tls.{n}.per", f"Memory per idle TLS session (PSS growth / {n:,})",
                   "KiB", False, 1, only),
        ]
    out += [
        Figure("huge.growth", f"{huge_mb} MB message RETR: peak RSS growth", "MiB", False, 1),
        Figure("huge.mbps", f"RETR speed of the {huge_mb} MB message", "MB/s", True, 1),
    ]
    return out
