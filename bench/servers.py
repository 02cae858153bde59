"""The servers under test, each started privately on 127.0.0.1 and always stopped.

* `Popbox`: ``python -m popbox serve --config X`` with a generated TOML file (STLS
  offered); the port is read from its ``popbox: listening on 127.0.0.1:PORT`` line.
* `Dovecot`: ``/usr/sbin/dovecot -F -c CONF`` (foreground, so the child we start is the
  master) with a generated, self-contained configuration: base_dir, state_dir and logs
  in a temp dir, ``protocols = pop3``, one POP3 listener on 127.0.0.1 offering STLS
  with the same certificate as popbox (no POP3S listener), the same passwd-file as
  passdb and userdb, ``pop3_lock_session = yes`` (popbox always locks the maildrop),
  mail processes as uid/gid 65534. Two modes: "default" (login process
  per connection, ``service_count = 1``) and "high-performance" (``service_count = 0``,
  ``process_min_avail = 2``). Process and client limits are raised so that the idle
  session tests fit (with TLS, the login process stays to proxy the session: one per
  session in the default mode), and the auth cache is on (``auth_cache_size = 10M``), as popbox's
  is by default; nothing else is tuned.

* `PopboxPg`: the same popbox with ``[store] backend = "postgres"`` and ``[auth] backend =
  "postgres"`` on a throwaway database (bench.pg): `prepare` makes the database, its schema
  (``popbox db upgrade``), its users (the corpus's passwd-file) and its mail (``popbox
  import`` of a hard-linked copy of the corpus), once per run; the harness drops the
  database at the end (`BenchDatabase.drop`).

After start, `check_loopback` makes sure no process of the server listens anywhere but
127.0.0.1. `stop` sends SIGTERM, waits, then SIGKILLs the process group.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import procstat
from bench.pg import BenchDatabase, PgError

FD_LIMIT = 65536
DOVECOT = "/usr/sbin/dovecot"
MAIL_UID = 65534  # nobody/nogroup: Dovecot will not run mail processes as root


class ServerError(RuntimeError):
    pass


_running: set[Server] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        server.stop()


def child_setup() -> None:
    """In a child before exec: more file descriptors, and SIGTERM when the harness dies
    (PR_SET_PDEATHSIG; the kernel clears it when popbox drops privileges, so popbox
    relies on the harness's finally blocks and atexit instead)."""
    raise_fd_limit()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def raise_fd_limit(limit: int = FD_LIMIT) -> None:
    """Raise RLIMIT_NOFILE as far as allowed (root may raise the hard limit too)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in ((limit, max(limit, hard)), (min(limit, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, want)
            return
        except (ValueError, OSError):
            continue


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_greeting(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(512).startswith(b"+OK"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            time.sleep(0.05)
    raise ServerError(f"no POP3 greeting on 127.0.0.1:{port} after {timeout:.0f}s")


class Server:
    """Common part: a process tree rooted at `pid`, mail under `mail_root`."""

    name = "server"
    label = "server"
    owner: int | None = None  # uid/gid owning the mail directories
    # The harness can put a maildir back to how the MTA left it (Bench.uidl); a server
    # with mail in a database has no such state: its "first login" is measured once.
    resettable = True
    # The login figures it runs (bench.figures.SCHEMES and "stls").
    login_kinds: tuple[str, ...] = ("plain", "crypt", "stls")
    # It runs the idle TLS (STLS) sessions figure (Bench.idle).
    tls_idle = True

    def __init__(self, workdir: Path, users_file: Path, mail_root: Path,
                 max_sessions: int, tls: tuple[Path, Path]) -> None:
        self.workdir = workdir
        self.users_file = users_file
        self.mail_root = mail_root
        self.max_sessions = max_sessions
        self.cert, self.key = tls  # for STLS (both servers offer it, as in production)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        raise NotImplementedError

    def log_tail(self, lines: int = 20) -> str:
        out = []
        for path in sorted(self.workdir.glob("*.log")):
            with contextlib.suppress(OSError):
                out += [f"{path.name}: {line}" for line in
                        path.read_text(errors="replace").splitlines()[-lines:]]
        return "\n".join(out)

    def check_loopback(self) -> None:
        pids = [st.pid for st in procstat.tree(self.pid)]
        addresses = procstat.listening_addresses(pids)
        wrong = [a for a in addresses if a[0] != "127.0.0.1"]
        if wrong or not addresses:
            self.stop()
            raise ServerError(f"{self.label} listens on {addresses}: only 127.0.0.1 allowed")

    def cpu(self) -> float:
        return procstat.cpu_seconds(self.pid)

    def pss_kib(self) -> tuple[int, int]:
        return procstat.tree_pss_kib(self.pid)

    def session_pid(self) -> int:
        """The process serving the (only) logged-in session."""
        return self.pid

    def quiesce(self, timeout: float = 5.0) -> None:
        """Wait until sessions that ended have left the process table."""

    def db_snapshot(self) -> dict[int, int] | None:
        """For a server with a database: its backends' CPU now (see bench.pg)."""
        return None

    def db_cpu_since(self, before: dict[int, int] | None) -> float | None:
        """The CPU seconds the database spent for this server since `db_snapshot`."""
        return None

    def cold(self, user: str) -> None:
        """Forget everything cached about `user`'s maildir."""
        raise NotImplementedError

    def stop(self) -> None:
        _running.discard(self)
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of our own process group
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


class Popbox(Server):
    name = "popbox"
    label = "popbox"
    owner = MAIL_UID if os.geteuid() == 0 else None
    # One worker process per core (`server.workers`), as a production configuration
    # would have it: Dovecot's per-session processes use every core too.
    workers = os.cpu_count() or 1

    def backend_text(self) -> str:
        return ("[auth]\n"
                f'passwd_file = "{self.users_file}"\n'
                f'mail_location = "{self.mail_root}/{{user}}/Maildir"\n')

    def environment(self) -> dict[str, str] | None:
        return None  # the harness's own

    def config_text(self) -> str:
        # As root, popbox drops to the same unprivileged uid Dovecot's mail processes use.
        user = f'user = "{pwd.getpwuid(MAIL_UID).pw_name}"\n' if os.geteuid() == 0 else ""
        return (
            "[server]\n"
            'listen = ["127.0.0.1:0"]\n'
            'hostname = "bench.example"\n'
            f"workers = {self.workers}\n"
            f"{user}"
            f"{self.backend_text()}"
            "[tls]\n"
            f'cert = "{self.cert}"\n'
            f'key = "{self.key}"\n'
            "[limits]\n"
            "shutdown_grace = 2\n"
            # every benchmark client comes from 127.0.0.1 (Dovecot has no per-IP limit)
            f"max_connections = {self.max_sessions + 1000}\n"
            f"max_connections_per_ip = {self.max_sessions + 1000}\n"
            "[log]\n"
            'level = "info"\n'
        )

    @property
    def config(self) -> Path:
        return self.workdir / "popbox.toml"

    def session_pid(self) -> int:
        """The worker holding the (only) session's connection."""
        if self.workers == 1:
            return self.pid
        workers = [st.pid for st in procstat.tree(self.pid) if st.pid != self.pid]
        pids = procstat.serving(workers, self.port)
        if len(pids) != 1:
            raise ServerError(f"expected one popbox worker with a session, found {len(pids)}")
        return pids[0]

    def write_config(self) -> Path:
        config = self.config
        config.touch(mode=0o600)  # the DSN of PopboxPg may hold a password
        config.write_text(self.config_text())
        return config

    def start(self) -> None:
        config = self.write_config()
        out = self.workdir / "stdout.log"
        self.port = 0
        with out.open("wb") as stdout, (self.workdir / "popbox.log").open("ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "popbox", "serve", "--config", str(config)],
                stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=self.environment(),
                start_new_session=True, preexec_fn=child_setup,
            )
        _running.add(self)
        deadline = time.monotonic() + 30
        while not self.port:
            match = re.search(r"popbox: listening on 127\.0\.0\.1:(\d+)", out.read_text())
            if match:
                self.port = int(match.group(1))
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise ServerError(f"popbox did not start:\n{tail}")
            else:
                time.sleep(0.05)
        try:
            _wait_greeting(self.port, self.proc, 30)
        except ServerError as exc:
            tail = self.log_tail()
            self.stop()
            raise ServerError(f"popbox did not start: {exc}\n{tail}") from None
        self.check_loopback()

    def cold(self, user: str) -> None:
        md = self.mail_root / user / "Maildir"
        with contextlib.suppress(FileNotFoundError):
            (md / "popbox-sizes").unlink()


class PopboxPg(Popbox):
    """popbox with its mail and its users in PostgreSQL, on a database of its own.

    The popbox process is the server: its CPU and memory are what the figures count, as
    for the Maildir popbox. `db_cpu_since` gives the CPU of the PostgreSQL backends that
    served it, for the report's separate rows. `mail_root` is only the tree that
    `prepare` imports from; it is removed once the mail is in the database."""

    name = "popbox-pg"
    label = "popbox (PostgreSQL)"
    owner = None  # the import reads the tree as the harness's user
    resettable = False
    # {SHA512-CRYPT} and TLS cost the popbox process the same work and memory whatever
    # the store: left out, as they are, to keep the run within its time
    login_kinds = ("plain",)
    tls_idle = False

    def __init__(self, workdir: Path, users_file: Path, mail_root: Path,
                 max_sessions: int, tls: tuple[Path, Path], database: BenchDatabase) -> None:
        super().__init__(workdir, users_file, mail_root, max_sessions, tls)
        self.database = database

    def backend_text(self) -> str:
        return ("[auth]\n"
                'backend = "postgres"\n'
                "[store]\n"
                'backend = "postgres"\n'
                "[postgres]\n"
                f"dsn = {json.dumps(self.database.dsn)}\n")  # a JSON string is a TOML one

    def environment(self) -> dict[str, str] | None:
        """Without HOME when popbox drops root, as under a service manager. asyncpg looks
        for client certificates in ~/.postgresql/ (sslmode "prefer", the default): after
        the drop, with HOME=/root, that check fails with EACCES and every login gets
        [SYS/TEMP]. Without HOME it looks in the home of the user popbox became."""
        if os.geteuid() != 0:
            return None
        return {k: v for k, v in os.environ.items() if k != "HOME"}

    def _popbox(self, args: list[str], timeout: float) -> None:
        _run_all([[sys.executable, "-m", "popbox", *args]], timeout,
                 self.workdir / "setup.log")

    def prepare(self, imported: int, log: Callable[[str], None]) -> dict[str, float]:
        """Make the database and fill it from `mail_root` (a copy of the corpus: the import
        writes its lock and size cache into each maildir) and `users_file`; `imported` is
        the number of messages the corpus has. Returns the seconds each step took."""
        steps: dict[str, float] = {}
        t0 = time.monotonic()
        db = self.database
        try:
            db.create()
            config = self.write_config()
            self._popbox(["db", "upgrade", "--config", str(config)], 120)
            users = db.load_users(self.users_file)
            steps["schema and users"] = time.monotonic() - t0
            log(f"  {self.label}: database {db.name} (PostgreSQL {db.version}), schema, "
                f"{users:,} users ({steps['schema and users']:.1f}s)")
            # Bulk load: no WAL flush per message (the import commits each message).
            # Serving runs with the server's own setting (the RESET below).
            db.set_database_option("synchronous_commit = off")
            t1 = time.monotonic()
            others = self.workdir / "import-users"
            others.write_text("".join(line + "\n" for line in self.users_file.read_text()
                                      .splitlines() if line and not line.startswith("big:")))
            base = [sys.executable, "-m", "popbox", "import", "--config", str(config),
                    "--quiet"]
            # the large maildrop and everyone else side by side: one maildir is copied by
            # one process (it holds the maildir's lock)
            _run_all([[*base, "--maildir", str(self.mail_root / "big" / "Maildir"),
                       "--user", "big"],
                      [*base, "--passwd-file", str(others),
                       "--mail-location", f"{self.mail_root}/{{user}}/Maildir"]],
                     900, self.workdir / "import.log")
            db.set_database_option(None)
            steps["import"] = time.monotonic() - t1
            t2 = time.monotonic()
            # what autovacuum would do soon after a bulk load, done now rather than during
            # a measurement; and the load's dirty pages written out before the first one
            db.execute("VACUUM (ANALYZE)")
            problem = db.try_execute("CHECKPOINT")
            if problem:
                log(f"  {self.label}: no CHECKPOINT after the import: {problem}")
            steps["vacuum"] = time.monotonic() - t2
            found = db.count("SELECT count(*) FROM messages")
            if found != imported:
                raise ServerError(f"{self.label}: {found} messages imported of {imported}"
                                  f"; see {self.workdir / 'import.log'}")
            log(f"  {self.label}: {found:,} messages imported in {steps['import']:.0f}s, "
                f"VACUUM (ANALYZE) + CHECKPOINT {steps['vacuum']:.1f}s")
        except PgError as exc:
            raise ServerError(f"{self.label}: {exc}") from None
        return steps

    def db_snapshot(self) -> dict[int, int] | None:
        try:
            return self.database.cpu_snapshot()
        except PgError:
            return None

    def db_cpu_since(self, before: dict[int, int] | None) -> float | None:
        try:
            return self.database.cpu_since(before)
        except PgError:
            return None

    def cold(self, user: str) -> None:
        """Nothing to forget: sizes and UIDLs are columns, fixed at import."""


def _run_all(commands: list[list[str]], timeout: float, logfile: Path) -> None:
    """Run the commands side by side, each in its own process group; all of them must
    succeed within `timeout` seconds. Whatever is left at the end is killed."""
    procs: list[subprocess.Popen[bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        with logfile.open("ab") as out:
            for argv in commands:
                procs.append(subprocess.Popen(
                    argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                    start_new_session=True, preexec_fn=child_setup))
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise ServerError(f"{' '.join(commands[procs.index(proc)][2:5])} took over "
                                  f"{timeout:.0f}s; see {logfile}") from None
            if proc.returncode != 0:
                tail = logfile.read_text(errors="replace").splitlines()[-10:]
                raise ServerError(f"{' '.join(commands[procs.index(proc)][2:5])} failed "
                                  f"(status {proc.returncode}):\n" + "\n".join(tail))
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)


class Dovecot(Server):
    owner = MAIL_UID

    def __init__(self, workdir: Path, users_file: Path, mail_root: Path,
                 max_sessions: int, tls: tuple[Path, Path], *, high_performance: bool) -> None:
        super().__init__(workdir, users_file, mail_root, max_sessions, tls)
        self.high_performance = high_performance
        self.name = "dovecot-hp" if high_performance else "dovecot"
        self.label = "Dovecot high-performance" if high_performance else "Dovecot default"
        self.conf = workdir / "dovecot.conf"
        self.baseline = 0

    def config_text(self) -> str:
        processes = self.max_sessions + 256
        login = ("  service_count = 0\n  process_min_avail = 2\n" if self.high_performance
                 else "  service_count = 1\n")
        return f"""# written by bench/servers.py: a private Dovecot on 127.0.0.1 only
base_dir = {self.workdir}/run
state_dir = {self.workdir}/state
log_path = {self.workdir}/dovecot.log
instance_name = bench-{self.name}-{os.getpid()}
protocols = pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{self.key}
disable_plaintext_auth = no
auth_mechanisms = plain login
# the auth cache on, as popbox's is by default (auth.cache_ttl)
auth_cache_size = 10M
default_internal_user = dovecot
default_login_user = dovenull
mail_uid = {MAIL_UID}
mail_gid = {MAIL_UID}
mail_location = maildir:{self.mail_root}/%u/Maildir
pop3_lock_session = yes
# room for the idle-session test: one pop3 process per session (Dovecot's default),
# and with TLS in the default mode a pop3-login process per session too (it proxies TLS)
default_process_limit = {processes}
default_client_limit = {2 * processes}
passdb {{
  driver = passwd-file
  args = {self.users_file}
}}
userdb {{
  driver = passwd-file
  args = {self.users_file}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
{login}}}
service pop3 {{
  process_limit = {processes}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""

    def start(self) -> None:
        if os.geteuid() != 0:
            raise ServerError("Dovecot's master must start as root: run the benchmark as root")
        if not os.access(DOVECOT, os.X_OK):
            raise ServerError(f"{DOVECOT} not found: install dovecot-core and dovecot-pop3d"
                              " (scripts/install-peers)")
        self.port = free_port()
        for sub in ("run", "state"):
            path = self.workdir / sub
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(mode=0o755)
        self.conf.write_text(self.config_text())
        check = subprocess.run(["doveconf", "-c", str(self.conf), "-n"],
                               capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise ServerError(f"doveconf refused the configuration:\n{check.stderr}")
        with (self.workdir / "master.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(self.conf)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=child_setup,
            )
        _running.add(self)
        try:
            _wait_greeting(self.port, self.proc, 30)
        except ServerError as exc:
            tail = self.log_tail()
            self.stop()
            raise ServerError(f"{self.label} did not start: {exc}\n{tail}") from None
        self.check_loopback()
        time.sleep(0.2)
        self.baseline = self._sessions()

    def _sessions(self) -> int:
        return sum(1 for st in procstat.tree(self.pid)
                   if st.comm == "pop3" or (st.comm == "pop3-login" and not self.high_performance))

    def quiesce(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self._sessions() > 0 and time.monotonic() < deadline:
            time.sleep(0.05)

    def session_pid(self) -> int:
        pids = [st.pid for st in procstat.tree(self.pid) if st.comm == "pop3"]
        if len(pids) != 1:
            raise ServerError(f"expected one pop3 process, found {len(pids)}")
        return pids[0]

    def cold(self, user: str) -> None:
        md = self.mail_root / user / "Maildir"
        for path in md.iterdir():
            if path.name.startswith(("dovecot.index", "dovecot-uidlist")):
                path.unlink()

    def version(self) -> str:
        out = subprocess.run([DOVECOT, "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
