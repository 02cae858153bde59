"""popbox and Dovecot side by side: ``python -m bench.run [--quick] [--smoke] [--out DIR]``.

Writes DIR/RESULTS.md (the table), DIR/chart.png and DIR/results.json (every sample).
bench/README.md explains what is measured and how. In short:

1. a deterministic corpus is written to a temp dir (bench.corpus), and each server gets
   its own hard-linked copy of it;
2. popbox (PostgreSQL) gets a throwaway database, filled once from the corpus with
   ``popbox import`` (bench.pg, bench.servers.PopboxPg) and dropped at the end;
3. for each round, each server in turn (popbox, popbox (PostgreSQL), Dovecot default,
   Dovecot high-performance; the order rotates every round) is started on 127.0.0.1,
   checked (STAT of a sample of users equals the corpus), warmed up, measured and
   stopped;
4. the load generator (bench.load) runs in its own process for every measurement;
   server CPU time is read from /proc before and after each one (and that of the
   PostgreSQL backends serving popbox (PostgreSQL));
5. medians over the rounds go into the table, with popbox / best Dovecot and popbox
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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import pg, procstat
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
    RETR_CONCURRENCY,
    SCHEMES,
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
    budget_s: float  # no new round starts if it would end after this


PRESETS = {
    "full": Preset(
        "full", Scale(login_users=256, login_msgs=10, retr_users=8, r10k_msgs=300,
                      r1m_msgs=12, idle_users=10_000, big_msgs=100_000, huge_bytes=100 * MIB),
        rounds=2, login_seconds=2, login_max=20_000, retr_seconds=2, retr_max=1000,
        warm_uidl=3, idle_counts=(1000, 10_000), big_idle_rounds=1,
        # Dovecot's two modes differ only in login processes, gone once a session is
        # logged in; 10,000 sessions take Dovecot's default mode over 3 minutes to open;
        # popbox (PostgreSQL): see the note in _run()
        big_idle_servers=("popbox", "dovecot-hp"), tls_idle=1000, idle_servers=ALL_SERVERS,
        budget_s=14 * 60),
    "quick": Preset(
        "quick", Scale(login_users=64, login_msgs=10, retr_users=8, r10k_msgs=100,
                       r1m_msgs=4, idle_users=1000, big_msgs=10_000, huge_bytes=100 * MIB),
        rounds=1, login_seconds=1.0, login_max=5000, retr_seconds=1.0, retr_max=1000,
        warm_uidl=2, idle_counts=(1000,), big_idle_rounds=1,
        big_idle_servers=ALL_SERVERS, tls_idle=1000,
        # Dovecot's default mode takes longest to open sessions (a login process each)
        # and needs as much memory per session as its high-performance mode
        idle_servers=("popbox", "popbox-pg", "dovecot-hp"), budget_s=170),
    "smoke": Preset(
        "smoke", Scale(login_users=64, login_msgs=2, retr_users=8, r10k_msgs=5,
                       r1m_msgs=1, idle_users=20, big_msgs=300, huge_bytes=2 * MIB),
        rounds=1, login_seconds=0.3, login_max=64, retr_seconds=0.1, retr_max=1,
        warm_uidl=1, idle_counts=(20,), big_idle_rounds=1,
        big_idle_servers=ALL_SERVERS, tls_idle=20, idle_servers=ALL_SERVERS, budget_s=120),
}


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
    # time spent on the largest plaintext idle count, when later rounds leave it out
    big_idle_s: float = 0.0
    rounds_done: int = 0
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

    def logins(self, server: Server) -> None:
        p = self.preset
        runs: list[tuple[str, int, dict[str, Any]]] = [
            (scheme, c, {}) for scheme, _label in SCHEMES for c in LOGIN_CONCURRENCY]
        runs += [("stls", c, {"stls": True, "cafile": str(server.cert)})
                 for c in STLS_CONCURRENCY]
        for scheme, c, extra in runs:
            if scheme not in server.login_kinds:
                continue
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

    def retr(self, server: Server) -> None:
        p = self.preset
        for size, _label in SIZES:
            users = self.rows(size)
            for c in RETR_CONCURRENCY:
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
            t0 = time.monotonic()
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
            if tls or (len(self.preset.idle_counts) > 1 and n == max(self.preset.idle_counts)):
                self.big_idle_s += time.monotonic() - t0  # first rounds only

    def round(self, server: Server, number: int, only: set[str]) -> None:
        log(f"round {number + 1}: {server.label}")
        server.start()
        try:
            if number == 0:
                self.verify(server)
            if "logins" in only:
                self.logins(server)
            if "retr" in only:
                self.retr(server)
            if "uidl" in only:
                self.uidl(server)
            if "huge" in only:
                self.huge(server)
            if "idle" in only and server.name in self.preset.idle_servers:
                counts = self.preset.idle_counts
                if len(counts) > 1 and (number >= self.preset.big_idle_rounds
                                        or server.name not in self.preset.big_idle_servers):
                    counts = counts[:-1]
                self.idle(server, counts)
                if server.tls_idle and self.preset.tls_idle \
                        and number < self.preset.big_idle_rounds:
                    self.idle(server, (self.preset.tls_idle,), tls=True)
        finally:
            server.stop()


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
    parser.add_argument("--quick", action="store_true", help="smaller corpus, 1 round (< 3 min)")
    parser.add_argument("--smoke", action="store_true",
                        help="with --quick: a tiny run (seconds) used by the test suite")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results",
                        help="where RESULTS.md, chart.png and results.json go")
    parser.add_argument("--rounds", type=int, help="override the preset's number of rounds")
    parser.add_argument("--only", default="logins,retr,uidl,huge,idle",
                        help="comma-separated subset of: logins,retr,uidl,huge,idle")
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
        round_times: list[float] = []
        try:
            for number in range(preset.rounds):
                t0 = time.monotonic()
                elapsed = t0 - started
                if round_times and elapsed + max(round_times) > preset.budget_s:
                    bench.notes.append(f"Stopped after {number} of {preset.rounds} rounds to "
                                       f"stay within {preset.budget_s / 60:.0f} minutes.")
                    log(bench.notes[-1])
                    break
                k = number % len(servers)
                for server in servers[k:] + servers[:k]:
                    bench.round(server, number, only)
                bench.rounds_done += 1
                # later rounds skip the largest idle count when the preset says so
                skipped = bench.big_idle_s if preset.big_idle_rounds <= number + 1 else 0.0
                round_times.append(time.monotonic() - t0 - skipped)
                bench.big_idle_s = 0.0
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
            tls_idle_servers=tuple(s.name for s in servers if s.tls_idle))
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
