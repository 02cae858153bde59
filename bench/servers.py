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
  session test fits; nothing else is tuned.

After start, `check_loopback` makes sure no process of the server listens anywhere but
127.0.0.1. `stop` sends SIGTERM, waits, then SIGKILLs the process group.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
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
from pathlib import Path

from bench import procstat

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

    def config_text(self) -> str:
        # As root, popbox drops to the same unprivileged uid Dovecot's mail processes use.
        user = f'user = "{pwd.getpwuid(MAIL_UID).pw_name}"\n' if self.owner is not None else ""
        return (
            "[server]\n"
            'listen = ["127.0.0.1:0"]\n'
            'hostname = "bench.example"\n'
            f"{user}"
            "[auth]\n"
            f'passwd_file = "{self.users_file}"\n'
            f'mail_location = "{self.mail_root}/{{user}}/Maildir"\n'
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

    def start(self) -> None:
        config = self.workdir / "popbox.toml"
        config.write_text(self.config_text())
        out = self.workdir / "stdout.log"
        self.port = 0
        with out.open("wb") as stdout, (self.workdir / "popbox.log").open("ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "popbox", "serve", "--config", str(config)],
                stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
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
default_internal_user = dovecot
default_login_user = dovenull
mail_uid = {MAIL_UID}
mail_gid = {MAIL_UID}
mail_location = maildir:{self.mail_root}/%u/Maildir
pop3_lock_session = yes
# room for the idle-session test: one pop3 process per session (Dovecot's default)
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
