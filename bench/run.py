"""popbox and Dovecot side by side: ``python -m bench.run [--quick] [--smoke] [--out DIR]``.

Writes DIR/RESULTS.md (the table), DIR/chart.png and DIR/results.json (every sample).
bench/README.md explains what is measured and how. In short:

1. a deterministic corpus is written to a temp dir (bench.corpus), and each server gets
   its own hard-linked copy of it;
2. popbox (PostgreSQL) gets a throwaway database, filled once from the corpus with
   ``popbox import`` (bench.pg, bench.servers.PopboxPg) and dropped at the end;
3. every server (popbox, popbox (PostgreSQL), Dovecot default, Dovecot high-performance)
   is started on 127.0.0.1 and checked (STAT of a sample of users equals the corpus,
   after a warm-up); they stay up side by side;
4. figure by figure (`Bench.units`: RETR, QUIT, mixed sessions, logins, the large
   maildrop, its first login from disk, the large message, idle sessions), each server
   is measured in turn, one right after the other, and the figure is repeated with the
   order rotated by one while the run has time for it (`Preset.repeat_until_s`), so
   the machine's drift over minutes falls on every server alike;
5. the load generator (bench.load) runs in its own process for every measurement;
   server CPU time is read from /proc before and after each one (and that of the
   PostgreSQL backends serving popbox (PostgreSQL));
6. medians over the samples go into the table, with popbox / best Dovecot and popbox
   (PostgreSQL) / best Dovecot.

Every run is bounded in time and operations; every process started is stopped.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import platform
import resource
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench import pg, procstat
from bench.cache import drop_page_cache, warm_page_cache
from bench.corpus import (
    MIB,
    PASSWORD,
    Corpus,
    Scale,
    clone,
    generate,
    remove_tree,
    reset_maildir,
)
from bench.figures import (
    LOGIN_CONCURRENCY,
    LOGIN_KINDS,
    MIXED_CONCURRENCY,
    QUIT_CASES,
    RESET_SERVERS,
    RETR_CONCURRENCY,
    SIZES,
    STLS_CONCURRENCY,
    all_figures,
)
from bench.servers import (
    Dovecot,
    Popbox,
    PopboxPg,
    Server,
    ServerError,
    child_setup,
    raise_fd_limit,
)
from popbox.cli.selfsigned import make_self_signed

REPO = Path(__file__).resolve().parent.parent
ALL_SERVERS = ("popbox", "popbox-pg", "dovecot", "dovecot-hp")
ALL_FIGURES = ("retr", "quit", "mixed", "logins", "uidl", "disk", "huge", "idle")


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    scale: Scale
    rounds: int
    login_seconds: float  # per login run (one scheme, one concurrency)
    login_max: int  # logins per run at most
    retr_seconds: float  # per RETR run; sessions started are finished
    retr_max: int  # sessions per worker at most
    warm_uidl: int  # later logins measured on the large maildrop, per round
    idle_counts: tuple[int, ...]
    big_idle_rounds: int  # rounds that run the largest idle count and the TLS one (slow)
    big_idle_servers: tuple[str, ...]  # servers that run it
    tls_idle: int  # idle sessions over TLS (STLS), first rounds, servers with `tls_idle`
    idle_servers: tuple[str, ...]  # servers that run the idle figures at all
    quit_sessions: int  # measured sessions per QUIT figure (after one warm-up)
    repeat_until_s: float  # a figure is measured again only before this (from the start)
    budget_s: float  # no figure is started after this


PRESETS = {
    "full": Preset(
        "full", Scale(login_users=256, login_msgs=10, retr_users=8, r10k_msgs=300,
                      r1m_msgs=12, idle_users=10_000, big_msgs=100_000, huge_bytes=100 * MIB,
                      mixed_users=64, mixed_msgs=30, quit_msgs=1000),
        rounds=2, login_seconds=2, login_max=20_000, retr_seconds=2, retr_max=1000,
        warm_uidl=3, idle_counts=(1000, 10_000), big_idle_rounds=1,
        # Dovecot's two modes differ only in login processes, gone once a session is
        # logged in; 10,000 sessions take Dovecot's default mode over 3 minutes to open;
        # popbox (PostgreSQL): see the note in _run()
        big_idle_servers=("popbox", "dovecot-hp"), tls_idle=1000, idle_servers=ALL_SERVERS,
        quit_sessions=5, repeat_until_s=5.5 * 60, budget_s=14 * 60),
    "quick": Preset(
        "quick", Scale(login_users=64, login_msgs=10, retr_users=8, r10k_msgs=100,
                       r1m_msgs=4, idle_users=1000, big_msgs=10_000, huge_bytes=100 * MIB,
                       mixed_users=32, mixed_msgs=20, quit_msgs=1000),
        rounds=1, login_seconds=1.0, login_max=5000, retr_seconds=1.0, retr_max=1000,
        warm_uidl=2, idle_counts=(1000,), big_idle_rounds=1,
        big_idle_servers=ALL_SERVERS, tls_idle=1000,
        # Dovecot's default mode takes longest to open sessions (a login process each)
        # and needs as much memory per session as its high-performance mode
        idle_servers=("popbox", "popbox-pg", "dovecot-hp"), quit_sessions=3,
        repeat_until_s=120, budget_s=300),
    "smoke": Preset(
        "smoke", Scale(login_users=64, login_msgs=2, retr_users=8, r10k_msgs=5,
                       r1m_msgs=1, idle_users=20, big_msgs=300, huge_bytes=2 * MIB,
                       mixed_users=8, mixed_msgs=8, quit_msgs=20),
        rounds=1, login_seconds=0.3, login_max=64, retr_seconds=0.1, retr_max=1,
        warm_uidl=1, idle_counts=(20,), big_idle_rounds=1,
        big_idle_servers=ALL_SERVERS, tls_idle=20, idle_servers=ALL_SERVERS,
        quit_sessions=1, repeat_until_s=120, budget_s=420),
}


@dataclass(frozen=True, slots=True)
class Unit:
    """One figure (or a few that are measured together), run for every server that
    measures it, one right after the other, then again in the next order (the order
    rotates by one per repetition): the machine's drift over minutes hits every server
    alike. `reps`: how many times at most (None: the preset's rounds)."""

    name: str
    run: Callable[[Server], None]
    servers: tuple[str, ...] | None = None
    reps: int | None = None


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the load generator -------------------------------------------------------------------

_children: set[subprocess.Popen[str]] = set()


def _kill_children() -> None:
    for proc in list(_children):
        with contextlib.suppress(OSError):
            proc.kill()


atexit.register(_kill_children)


def run_load(job: dict[str, Any], timeout: float, logfile: Path,
             on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run one job in a bench.load process; `on_event` is called at each checkpoint and
    the job continues when it returns."""
    job = {**job, "timeout": max(1.0, timeout - 5)}
    with logfile.open("a") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.load"], cwd=REPO, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
            preexec_fn=child_setup,
        )
    _children.add(proc)
    assert proc.stdin is not None and proc.stdout is not None
    deadline = time.monotonic() + timeout
    try:
        proc.stdin.write(json.dumps(job) + "\n")
        proc.stdin.flush()
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
                raise BenchError(f"load generator ({job['kind']}) exceeded {timeout:.0f}s")
            line = proc.stdout.readline()
            if not line:
                raise BenchError(f"load generator ({job['kind']}) died; see {logfile}")
            event = json.loads(line)
            if event.get("event") == "result":
                proc.wait(10)
                return dict(event)
            if on_event is not None:
                on_event(event)
            proc.stdin.write("\n")
            proc.stdin.flush()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        _children.discard(proc)


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


@dataclass
class Measured:
    out: dict[str, Any]
    server_cpu: float
    client_cpu: float
    db_cpu: float | None = None  # the PostgreSQL backends serving popbox (PostgreSQL)


# --- one benchmark run ----------------------------------------------------------------------


@dataclass
class Bench:
    preset: Preset
    corpus: Corpus
    work: Path
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    errors: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stats_seen: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    reps: dict[str, int] = field(default_factory=dict)  # unit -> repetitions measured
    mixed_state: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    drop_methods: list[str] = field(default_factory=list)  # how the page cache was dropped
    tls_servers: tuple[str, ...] = ()  # the servers that run the idle TLS figure
    schedule: list[tuple[str, int, str]] = field(default_factory=list)  # (unit, rep, server)
    first_logins: set[str] = field(default_factory=set)  # servers without a cold reset
    setup: dict[str, dict[str, float]] = field(default_factory=dict)  # server -> step -> s

    def add(self, key: str, server: Server, value: float | None) -> None:
        if value is not None:
            self.samples.setdefault(key, {}).setdefault(server.name, []).append(value)

    def add_errors(self, key: str, server: Server, out: dict[str, Any]) -> None:
        n = int(out.get("errors", 0))
        if n:
            self.errors.setdefault(key, {}).setdefault(server.name, 0)
            self.errors[key][server.name] += n
            log(f"  {server.name} {key}: {n} errors, e.g. {out.get('samples', [])[:2]}")

    def rows(self, prefix: str, count: int | None = None) -> list[list[Any]]:
        return [[u, PASSWORD, *self.corpus.expected[u]] for u in self.corpus.users(prefix, count)]

    def measure(self, server: Server, job: dict[str, Any], timeout: float,
                on_event: Callable[[dict[str, Any]], None] | None = None) -> Measured:
        server.quiesce()
        db0 = server.db_snapshot()
        cpu0, client0 = server.cpu(), _children_cpu()
        out = run_load({**job, "port": server.port}, timeout, self.work / "load.log", on_event)
        out["seconds"] = max(float(out.get("seconds") or 0.0), 1e-9)  # a failed job has none
        server.quiesce()
        cpu1, client1 = server.cpu(), _children_cpu()
        return Measured(out, cpu1 - cpu0, client1 - client0, server.db_cpu_since(db0))

    def add_db(self, key: str, server: Server, m: Measured, per: float) -> str:
        """The database's CPU for the figure `key` (the same unit: CPU seconds * `per`);
        returns a text for the log."""
        if m.db_cpu is None:
            return ""
        self.add(key + ".db", server, m.db_cpu * per)
        return f", PostgreSQL {m.db_cpu * per:.2f}"

    # --- the steps ----------------------------------------------------------------------

    def verify(self, server: Server) -> None:
        """Log in once as every user the rate figures use (each server's first login of a
        maildrop builds its cache or index: the figures measure the logins after that),
        retrieve every RETR maildrop once (the first session marks messages seen), and
        check that STAT equals the corpus for all of them."""
        users = self.rows("plain") + self.rows("crypt") + self.rows("huge")
        m = self.measure(server, {"kind": "logins", "users": users, "concurrency": 4,
                                  "max_ops": len(users), "seconds": 120}, 150)
        retr = self.rows("r10k") + self.rows("r1m")
        r = self.measure(server, {"kind": "retr", "users": retr, "concurrency": len(retr),
                                  "max_ops": 1, "seconds": 0}, 300)
        if m.out["errors"] or r.out["errors"] or m.out["ok"] != len(users):
            raise BenchError(f"{server.label} does not serve the corpus as expected: "
                             f"{m.out.get('samples')} {r.out.get('samples')}")
        self.stats_seen[server.name] = {u[0]: u[2:] for u in users + retr}

    def login_run(self, server: Server, scheme: str, c: int) -> None:
        """Logins of one kind ("plain", "crypt" or "stls": {PLAIN} users after STLS) at
        `c` concurrent clients."""
        if scheme not in server.login_kinds:
            return
        p = self.preset
        extra: dict[str, Any] = {"stls": True, "cafile": str(server.cert)} \
            if scheme == "stls" else {}
        users = self.rows("plain" if scheme == "stls" else scheme)
        m = self.measure(server, {"kind": "logins", "users": users, "concurrency": c,
                                  "max_ops": p.login_max, "seconds": p.login_seconds,
                                  **extra}, p.login_seconds + 60)
        key = f"login.{scheme}.c{c}"
        ok = m.out["ok"]
        self.add_errors(key + ".rate", server, m.out)
        db = ""
        if ok:
            self.add(key + ".rate", server, ok / m.out["seconds"])
            self.add(key + ".cpu", server, 1000 * m.server_cpu / ok)
            db = self.add_db(key + ".cpu", server, m, 1000 / ok)
        log(f"  {server.name} {key}: {ok / m.out['seconds']:.0f} logins/s, "
            f"server {1000 * m.server_cpu / max(ok, 1):.2f} ms CPU/login{db}, "
            f"client {1000 * m.client_cpu / max(ok, 1):.2f}")

    def retr_run(self, server: Server, size: str, c: int) -> None:
        p = self.preset
        users = self.rows(size)
        m = self.measure(server, {"kind": "retr", "users": users[:c], "concurrency": c,
                                  "max_ops": p.retr_max, "seconds": p.retr_seconds},
                         p.retr_seconds + 120)
        key = f"retr.{size}.c{c}"
        self.add_errors(key + ".mbps", server, m.out)
        octets, secs = m.out["octets"], m.out["seconds"]
        db = ""
        if octets:
            self.add(key + ".mbps", server, octets / secs / 1e6)
            self.add(key + ".msgs", server, m.out["messages"] / secs)
            self.add(key + ".cpu", server, m.server_cpu / (octets / 1e9))
            db = self.add_db(key + ".cpu", server, m, 1 / (octets / 1e9))
        log(f"  {server.name} {key}: {octets / secs / 1e6:.1f} MB/s, "
            f"{m.out['messages'] / secs:.0f} msgs/s, server "
            f"{m.server_cpu / max(octets / 1e9, 1e-9):.1f} s CPU/GB{db}, client "
            f"{m.client_cpu / max(octets / 1e9, 1e-9):.1f}")

    def uidl(self, server: Server) -> None:
        """The large maildrop's first login (a Maildir reset to how the MTA left it in
        every round; in the database, the first login after the import: first round
        only), then its later logins."""
        job = {"kind": "uidl", "users": self.rows("big")}
        first = server.resettable or server.name not in self.first_logins
        if server.resettable:
            reset_maildir(self.corpus, server.mail_root, "big", server.owner)
            os.sync()  # so that no later fsync has to wait for this tree's writeback
            # "Page cache warm" must hold for whoever comes first: the kernel may have
            # paged the cold files out since the corpus was written (proactive reclaim,
            # e.g. DAMON's), and the servers' trees share their inodes (hard links), so
            # the first server would read them from disk for the others.
            warm_page_cache(server.mail_root / "big")
        self.first_logins.add(server.name)
        for i in range(self.preset.warm_uidl + (1 if first else 0)):
            kind = "cold" if first and i == 0 else "warm"
            m = self.measure(server, job, 600 if kind == "cold" else 300)
            self.add_errors(f"uidl.{kind}", server, m.out)
            if m.out["ok"]:
                self.add(f"uidl.{kind}", server, m.out["latency_s"])
                self.add(f"uidl.{kind}.cpu", server, m.server_cpu)
                db = self.add_db(f"uidl.{kind}.cpu", server, m, 1)
                log(f"  {server.name} uidl {kind}: {m.out['latency_s']:.3f}s "
                    f"(PASS {m.out['login_s']:.3f}s), server CPU {m.server_cpu:.3f}s{db}")

    def huge(self, server: Server) -> None:
        state: dict[str, int] = {}

        def on_event(event: dict[str, Any]) -> None:
            if event["event"] == "logged-in":
                pid = server.session_pid()
                state.update(pid=pid, rss=procstat.rss_kib(pid))
                procstat.reset_hwm(pid)
            elif event["event"] == "retrieved":
                state["hwm"] = procstat.hwm_kib(state["pid"])

        m = self.measure(server, {"kind": "huge", "users": self.rows("huge")}, 300, on_event)
        self.add_errors("huge.growth", server, m.out)
        if m.out["ok"] and "hwm" in state:
            growth = (state["hwm"] - state["rss"]) / 1024
            self.add("huge.growth", server, growth)
            self.add("huge.mbps", server, m.out["octets"] / m.out["seconds"] / 1e6)
            log(f"  {server.name} huge: peak RSS +{growth:.1f} MiB "
                f"(pid {state['pid']}: RSS before {state['rss']} KiB, peak {state['hwm']} KiB), "
                f"{m.out['octets'] / m.out['seconds'] / 1e6:.0f} MB/s")

    def idle(self, server: Server, counts: tuple[int, ...], *, tls: bool = False) -> None:
        """For each count: restart the server (so that memory freed by earlier runs does
        not hide the sessions' cost), warm it up with a few logins, read its PSS, log the
        sessions in, read its PSS again while they are all open. With `tls`, every
        session (and the warm-up's logins) starts with STLS."""
        extra: dict[str, Any] = {"stls": True, "cafile": str(server.cert)} if tls else {}
        name = "idle TLS" if tls else "idle"
        for n in counts:
            server.stop()
            server.start()
            self.measure(server, {"kind": "logins", "users": self.rows("plain", 8)
                                  + self.rows("crypt", 1), "concurrency": 1, "max_ops": 9,
                                  "seconds": 30, **extra}, 60)
            time.sleep(0.5)
            base, _ = server.pss_kib()
            state: dict[str, float] = {}

            def on_event(event: dict[str, Any], state: dict[str, float] = state) -> None:
                time.sleep(1.0)  # let handed-off login processes exit
                pss, nproc = server.pss_kib()
                state.update(pss=pss, nproc=nproc, alive=event["alive"])

            m = self.measure(server, {"kind": "idle", "users": self.rows("idle", n),
                                      "concurrency": 50, "seconds": 300, **extra}, 360,
                             on_event)
            server.quiesce(120)
            key = f"idle.tls.{n}" if tls else f"idle.{n}"
            self.add_errors(key + ".ok", server, m.out)
            ok = int(state.get("alive", 0))
            self.add(key + ".ok", server, ok)
            if ok and "pss" in state:
                self.add(key + ".total", server, state["pss"] / 1024)
                self.add(key + ".per", server, (state["pss"] - base) / ok)
            log(f"  {server.name} {name} {n}: {ok} logged in, PSS {state.get('pss', 0) / 1024:.1f}"
                f" MiB in {state.get('nproc', 0):.0f} processes (idle server: {base / 1024:.1f}"
                f" MiB), {(state.get('pss', 0) - base) / max(ok, 1):.1f} KiB/session")

    def mixed(self, server: Server) -> None:
        """Mixed sessions (bench.load's "mixed" job) on the "mix" users, whose state
        (messages, octets) is carried from run to run per server: their sessions DELE."""
        p = self.preset
        state = self.mixed_state.setdefault(
            server.name, {u: list(self.corpus.expected[u]) for u in self.corpus.users("mix")})
        users = [[u, PASSWORD, *v] for u, v in sorted(state.items())]
        c = MIXED_CONCURRENCY
        m = self.measure(server, {"kind": "mixed", "users": users, "concurrency": c,
                                  "max_ops": p.login_max, "seconds": p.login_seconds},
                         p.login_seconds + 120)
        self.mixed_state[server.name] = {u: list(v) for u, v in m.out.get("state", {}).items()}
        key = f"mixed.c{c}"
        self.add_errors(key + ".rate", server, m.out)
        ok = m.out["ok"]
        db = ""
        if ok:
            self.add(key + ".rate", server, ok / m.out["seconds"])
            self.add(key + ".cpu", server, 1000 * m.server_cpu / ok)
            db = self.add_db(key + ".cpu", server, m, 1000 / ok)
        log(f"  {server.name} {key}: {ok / m.out['seconds']:.0f} sessions/s, "
            f"server {1000 * m.server_cpu / max(ok, 1):.2f} ms CPU/session{db}")

    def quit(self, server: Server, case: str) -> None:
        """QUIT after RETR of every message of the "quit" maildrop. `case`: "seen" (the
        maildrop is reset once, then the warm-up session marks every message seen),
        "flag" (reset before every session: every message in new/, nothing cached, so
        the QUIT moves each to cur/ with the S flag) or "dele" (reset before every
        session; the session DELEs every message it retrieved)."""
        def on_event(event: dict[str, Any]) -> None:
            if case != "seen" or event["session"] == 0:
                server.quiesce()
                reset_maildir(self.corpus, server.mail_root, "quit", server.owner)
                # so that the server's fsync at QUIT does not wait for the journal to
                # commit this reset's links and unlinks (Bench.uidl does the same)
                os.sync()

        n = self.preset.quit_sessions + 1
        if not server.resettable:  # case "seen" only: the warm-up marks them seen
            on_event = None  # type: ignore[assignment]
        m = self.measure(server, {"kind": "quit", "users": self.rows("quit"), "sessions": n,
                                  "dele": case == "dele"}, 60 + 30 * n, on_event)
        key = f"quit.{case}"
        self.add_errors(key, server, m.out)
        samples = m.out.get("latencies") or []
        for ms in samples[1:]:  # the first session is the warm-up
            self.add(key, server, ms)
        if samples[1:]:
            log(f"  {server.name} {key}: QUIT p50 {statistics.median(samples[1:]):.2f} ms "
                f"({len(samples) - 1} sessions)")

    def disk(self, server: Server) -> None:
        """The large maildrop's first login ever, with the page cache dropped too."""
        reset_maildir(self.corpus, server.mail_root, "big", server.owner)
        how = drop_page_cache(server.mail_root / "big")
        if how not in self.drop_methods:
            self.drop_methods.append(how)
        m = self.measure(server, {"kind": "uidl", "users": self.rows("big")}, 900)
        self.add_errors("uidl.disk", server, m.out)
        if m.out["ok"]:
            self.add("uidl.disk", server, m.out["latency_s"])
            self.add("uidl.disk.cpu", server, m.server_cpu)
            log(f"  {server.name} uidl disk ({how}): {m.out['latency_s']:.3f}s, "
                f"server CPU {m.server_cpu:.3f}s")

    def units(self, only: set[str]) -> list[Unit]:
        """Every figure to measure, in the order they are run. The short, noisy ones
        come first (they are the ones measured again while there is time); the one that
        drops the page cache runs after the others that read the large maildrop, and
        the 100 MB message is read back into the page cache before its figure."""
        p = self.preset
        out: list[Unit] = []
        if "retr" in only:
            out += [Unit(f"retr.{size}.c{c}", partial(self.retr_run, size=size, c=c))
                    for size, _label in SIZES for c in RETR_CONCURRENCY]
        if "quit" in only:
            out += [Unit(f"quit.{case}", partial(self.quit, case=case),
                         None if case == "seen" else RESET_SERVERS) for case in QUIT_CASES]
        if "mixed" in only:
            out.append(Unit("mixed", self.mixed))
        if "logins" in only:
            out += [Unit(f"login.{scheme}.c{c}", partial(self.login_run, scheme=scheme, c=c))
                    for scheme in LOGIN_KINDS
                    for c in (STLS_CONCURRENCY if scheme == "stls" else LOGIN_CONCURRENCY)]
        if "uidl" in only:
            out.append(Unit("uidl", self.uidl))
        if "disk" in only:
            out.append(Unit("uidl.disk", self.disk, RESET_SERVERS))
        if "huge" in only:
            out.append(Unit("huge", self.huge))
        if "idle" in only:
            small, *big = p.idle_counts
            out.append(Unit(f"idle.{small}", partial(self.idle, counts=(small,)),
                            p.idle_servers))
            if big:
                out.append(Unit(f"idle.{big[0]}", partial(self.idle, counts=(big[0],)),
                                tuple(n for n in p.idle_servers if n in p.big_idle_servers),
                                reps=p.big_idle_rounds))
            if p.tls_idle:
                out.append(Unit(f"idle.tls.{p.tls_idle}",
                                partial(self.idle, counts=(p.tls_idle,), tls=True),
                                tuple(n for n in p.idle_servers if n in self.tls_servers),
                                reps=p.big_idle_rounds))
        return out

    def run(self, servers: list[Server], only: set[str], started: float) -> None:
        """Start every server, check it serves the corpus, then measure figure by figure:
        each figure for every server in turn, repeated (order rotated by one) while the
        run has time for it."""
        for server in servers:
            log(f"starting and checking {server.label}")
            server.start()
            self.verify(server)
        once: list[str] = []
        for unit in self.units(only):
            mine = [s for s in servers if unit.servers is None or s.name in unit.servers]
            if unit.name == "huge" and "disk" in only:
                warm_page_cache(self.corpus.pristine / "huge")
            t0 = time.monotonic()
            for rep in range(unit.reps or self.preset.rounds):
                elapsed = time.monotonic() - started
                if rep == 0 and elapsed > self.preset.budget_s:
                    self.notes.append(f"{unit.name} was not measured: the run had used its "
                                      f"{self.preset.budget_s / 60:.0f} minutes.")
                    log(self.notes[-1])
                    break
                if rep and elapsed + (time.monotonic() - t0) / rep > self.preset.repeat_until_s:
                    once.append(unit.name)
                    break
                k = rep % len(mine)
                log(f"{unit.name}, repetition {rep + 1}")
                for server in mine[k:] + mine[:k]:
                    self.schedule.append((unit.name, rep, server.name))
                    unit.run(server)
                self.reps[unit.name] = rep + 1
        if once and self.preset.rounds > 1:
            self.notes.append(f"Measured once, not {self.preset.rounds} times, to stay within "
                              f"the run's time: {', '.join(once)}.")

# --- machine, report ------------------------------------------------------------------------


def machine(servers: list[Server]) -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    dovecot = next((s.version() for s in servers if isinstance(s, Dovecot)), "n/a")
    postgres = next((s.database.version for s in servers if isinstance(s, PopboxPg)), "n/a")
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=10)
        commit = rev.stdout.strip() + (" (src/ modified)" if dirty.stdout.strip() else "")
    from popbox import __version__

    mem_kib = 0
    with contextlib.suppress(OSError, ValueError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dovecot": dovecot,
        "postgresql": postgres,
        "popbox": f"{__version__} (git {commit})",
    }


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="popbox-bench-"))
    path.chmod(0o755)  # the servers' unprivileged processes must reach the mail below
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            remove_tree(path)


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split(
        "\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smaller corpus, each figure once (about 5 min)")
    parser.add_argument("--smoke", action="store_true",
                        help="with --quick: a tiny run (seconds) used by the test suite")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results",
                        help="where RESULTS.md, chart.png and results.json go")
    parser.add_argument("--rounds", type=int, help="override the preset's number of rounds")
    parser.add_argument("--only", default=",".join(ALL_FIGURES),
                        help="comma-separated subset of: " + ",".join(ALL_FIGURES))
    parser.add_argument("--servers", default=",".join(ALL_SERVERS),
                        help="comma-separated subset of: " + ",".join(ALL_SERVERS))
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (corpus, logs)")
    parser.add_argument("--popbox-workers", type=int, default=Popbox.workers,
                        help=f"popbox's server.workers (default: {Popbox.workers}, the cores)")
    args = parser.parse_args(argv)
    if args.popbox_workers < 1:
        parser.error("--popbox-workers must be at least 1")
    Popbox.workers = args.popbox_workers
    if args.smoke and not args.quick:
        parser.error("--smoke is a variant of --quick: give both")
    preset = PRESETS["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.rounds:
        preset = Preset(**{**asdict(preset), "scale": preset.scale, "rounds": args.rounds})
    only = set(args.only.split(","))
    if only - set(ALL_FIGURES):
        parser.error(f"unknown figure(s) {sorted(only - set(ALL_FIGURES))}: choose from "
                     + ",".join(ALL_FIGURES))
    wanted = args.servers.split(",")
    command = "python -m bench.run" + "".join(f" {a}" for a in (argv or sys.argv[1:]))

    unknown = [name for name in wanted if name not in ALL_SERVERS]
    if unknown or not wanted:
        parser.error(f"unknown server(s) {unknown}: choose from {','.join(ALL_SERVERS)}")
    database: pg.BenchDatabase | None = None
    if "popbox-pg" in wanted:
        database = pg.BenchDatabase()
        problem = pg.reachable(database.server)
        if problem:
            log(f"FAILED: popbox (PostgreSQL) needs a PostgreSQL server at "
                f"{pg.redacted(database.server)} (set ${pg.DSN_ENV}, or leave popbox-pg out "
                f"of --servers): {problem}")
            return 1

    signal.signal(signal.SIGTERM, _terminate)
    raise_fd_limit()
    try:
        return _run(args, preset, wanted, only, command, database)
    finally:
        if database is not None:
            database.drop()


def _run(args: argparse.Namespace, preset: Preset, wanted: list[str], only: set[str],
         command: str, database: pg.BenchDatabase | None) -> int:
    started = time.monotonic()
    servers: list[Server] = []
    with workdir(args.keep) as work:
        log(f"{preset.name} run in {work}: writing the corpus")
        corpus = generate(work / "corpus", preset.scale)
        corpus.users_file.chmod(0o644)
        max_sessions = max(*preset.idle_counts, preset.tls_idle)
        (work / "tls").mkdir()
        tls = (work / "tls" / "cert.pem", work / "tls" / "key.pem")
        make_self_signed(*tls, hostname="localhost")  # popbox's own demo helper
        for name in wanted:
            wdir, mail = work / name, work / "mail" / name
            if name == "popbox":
                server: Server = Popbox(wdir, corpus.users_file, mail, max_sessions, tls)
            elif name == "popbox-pg":
                assert database is not None
                server = PopboxPg(wdir, corpus.users_file, mail, max_sessions, tls, database)
            else:
                server = Dovecot(wdir, corpus.users_file, mail, max_sessions, tls,
                                 high_performance=name == "dovecot-hp")
            # the Maildir servers' "big" is made at each first login (Bench.uidl); the
            # PostgreSQL import reads every maildir, "big" too, from a copy of its own
            clone(corpus.pristine, mail, server.owner,
                  skip=("big",) if server.resettable else ())
            servers.append(server)
        os.sync()
        fds = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if fds < 2 * max_sessions + 1000:
            bench_note = (f"RLIMIT_NOFILE could not be raised above {fds:,} here (the hard "
                          "limit; raising it needs CAP_SYS_RESOURCE). Every process of the run "
                          "has that limit.")
            log(bench_note)
        else:
            bench_note = ""
        log(f"corpus ready ({time.monotonic() - started:.0f}s)")
        bench = Bench(preset, corpus, work)
        if bench_note:
            bench.notes.append(bench_note)
        try:
            for server in servers:
                if isinstance(server, PopboxPg):
                    t0 = time.monotonic()
                    messages = sum(n for n, _octets in corpus.expected.values())
                    steps = server.prepare(messages, log)
                    remove_tree(server.mail_root)  # everything is in the database now
                    steps["total"] = time.monotonic() - t0
                    bench.setup[server.name] = steps
                    bench.notes.append(pg_note(server, messages, steps, preset))
        except ServerError as exc:
            log(f"FAILED: {exc}")
            return 1
        if len(preset.idle_counts) > 1:
            left_out = [s.label for s in servers if s.name not in preset.big_idle_servers
                        and isinstance(s, Dovecot)]
            if left_out:
                bench.notes.append(
                    f"{max(preset.idle_counts):,} idle sessions are not measured for "
                    f"{', '.join(left_out)}: Dovecot's two modes differ only in their login "
                    "processes, which have handed the session over and exited once it is "
                    "logged in (compare the two modes at "
                    f"{preset.idle_counts[0]:,}), and opening them takes several minutes.")
            if any(isinstance(s, PopboxPg) and s.name not in preset.big_idle_servers
                   for s in servers):
                bench.notes.append(
                    f"{max(preset.idle_counts):,} idle sessions are not measured for popbox "
                    "(PostgreSQL): each session holds an advisory lock, and PostgreSQL's "
                    "shared lock table (max_locks_per_transaction 64 x max_connections 100 by "
                    "default) ran out at about 12,500 locks on this machine, shared with every "
                    "other client of the server; and the time budget.")
        if preset.tls_idle:
            left_out = [s.label for s in servers if not s.tls_idle]
            if left_out:
                bench.notes.append(
                    f"{preset.tls_idle:,} idle TLS sessions are not measured for "
                    f"{', '.join(left_out)}, as its STLS logins are not: popbox's TLS layer "
                    "(the connection's `loop.start_tls`) is the same whatever the store, so "
                    "a session's TLS state costs the process what it costs popbox with its "
                    "Maildir store, and leaving them out keeps the run within its time.")
        left_out = [s.label for s in servers if s.name not in preset.idle_servers]
        if left_out and "idle" in only:
            bench.notes.append(f"In {preset.name} mode the idle figures are not measured for "
                               f"{', '.join(left_out)}.")
        bench.tls_servers = tuple(s.name for s in servers if s.tls_idle)
        try:
            bench.run(servers, only, started)
        except (ServerError, BenchError) as exc:
            log(f"FAILED: {exc}")
            for server in servers:
                server.stop()
            return 1
        finally:
            for server in servers:
                server.stop()
        if any(isinstance(s, PopboxPg) for s in servers) and not any(
                key.endswith(".db") for key in bench.samples):
            bench.notes.append("PostgreSQL's CPU could not be read: its backends are not "
                               "in this machine's /proc (another host or pid namespace?).")
        from bench.report import write_report

        info = machine(servers)
        total = time.monotonic() - started
        figures = all_figures(
            preset.idle_counts, preset.scale.big_msgs, preset.scale.huge_bytes // MIB,
            login_kinds={s.name: s.login_kinds for s in servers},
            db_servers=tuple(s.name for s in servers if isinstance(s, PopboxPg)),
            big_idle_servers=preset.big_idle_servers,
            tls_idle=preset.tls_idle,
            tls_idle_servers=tuple(s.name for s in servers if s.tls_idle),
            quit_msgs=preset.scale.quit_msgs)
        write_report(args.out, bench, figures, servers, info, command, total)
        log(f"done in {total:.0f}s: {args.out / 'RESULTS.md'}")
    return 0


def pg_note(server: PopboxPg, messages: int, steps: dict[str, float], preset: Preset) -> str:
    """What the report says about how popbox (PostgreSQL) was set up and measured."""
    return (
        f"popbox (PostgreSQL): `[store]` and `[auth]` `backend = \"postgres\"`, pool as by "
        f"default (`pool_max` 10, plus one lock connection), on a fresh database "
        f"({server.database.name}, PostgreSQL {server.database.version}, dropped at the end). "
        f"Set up once per run, before round 1, in {steps['total']:.0f}s: `popbox db upgrade`, "
        f"the passwd-file's users copied into `users` as stored, all {messages:,} messages of "
        f"the same corpus (the {preset.scale.big_msgs:,}-message maildrop and the "
        f"{preset.scale.huge_bytes // MIB} MiB message too) copied with `popbox import` "
        f"({steps['import']:.0f}s, two processes, `synchronous_commit = off` during the "
        "import only), then `VACUUM (ANALYZE)` and `CHECKPOINT`. Every round reuses it (no "
        "test deletes mail). Measured: logins {PLAIN}, RETR, the large maildrop (its \"first "
        "login\" is the first after the import, round 1 only: a database has no cache to "
        "reset), idle sessions (plaintext), the large message; not the {SHA512-CRYPT} or "
        "STLS logins or the idle TLS sessions. Its CPU and memory rows count the popbox "
        "process only, as for the Maildir popbox; the \"PostgreSQL CPU\" rows add the "
        "user+system time of the PostgreSQL backends that served it (client backends of "
        "the bench database in pg_stat_activity, read from /proc; not PostgreSQL's "
        "walwriter, checkpointer or autovacuum). Its ratio on those rows is "
        "(popbox + PostgreSQL) / best Dovecot. PostgreSQL's memory is not counted.")


if __name__ == "__main__":
    sys.exit(main())
