"""A private Dovecot (dovecot-pop3d) on 127.0.0.1, the reference server for the client
tests, started the way bench/servers.py starts the benchmark's: ``dovecot -F -c CONF``
(foreground, so the child is the master) with a self-contained configuration in a temp
dir: base_dir, state_dir and log there, ``protocols = pop3``, a POP3 listener (STLS
offered) and a POP3S listener on 127.0.0.1 only, a passwd-file as passdb and userdb,
``pop3_lock_session = yes``, mail processes as uid/gid 65534, and no fixed delay before
answering a failed login. With ``lmtp=True`` it also runs Dovecot's LMTP server
(dovecot-lmtpd, RFC 2033) on a loopback port and on the Unix socket ``run/lmtp``,
delivering into the same Maildirs. Dovecot's master must start as root; the folder is
world-readable so that its unprivileged processes reach the mail.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import trustme

DOVECOT = "/usr/sbin/dovecot"
MAIL_UID = 65534
MECHANISMS = "plain login cram-md5 scram-sha-1 scram-sha-256 apop"
USERS = 30


def unavailable() -> str | None:
    if not os.access(DOVECOT, os.X_OK):
        return f"{DOVECOT} not found: install dovecot-core and dovecot-pop3d"
    if os.geteuid() != 0:
        return "Dovecot's master must start as root"
    return None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies (PR_SET_PDEATHSIG),
    so that a killed test run leaves no Dovecot behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Dovecot:
    def __init__(self, cert: bytes, key: bytes, *, lmtp: bool = False) -> None:
        self.lmtp = lmtp
        self.lmtp_port = 0
        self.root = Path(tempfile.mkdtemp(prefix="popbox-test-dovecot-"))
        self.root.chmod(0o755)
        self.cert, self.key = self.root / "cert.pem", self.root / "key.pem"
        self.cert.write_bytes(cert)
        self.key.write_bytes(key)
        self.key.chmod(0o600)
        self.users = self.root / "users"
        self.users.write_text("".join(f"user{n}:{{PLAIN}}secret::::::\n"
                                      for n in range(1, USERS + 1)))
        self._users = 0
        self.mail = self.root / "mail"
        self.mail.mkdir(mode=0o755)
        os.chown(self.mail, MAIL_UID, MAIL_UID)
        self.port = self.tls_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._counter = 0

    @property
    def lmtp_socket(self) -> Path:
        return self.root / "run" / "lmtp"

    def config_text(self) -> str:
        return self._pop3_text() + (self._lmtp_text() if self.lmtp else "")

    def _lmtp_text(self) -> str:
        return f"""protocols = $protocols lmtp
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.lmtp_port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
"""

    def _pop3_text(self) -> str:
        return f"""# a private Dovecot for popbox's client tests, on 127.0.0.1 only
base_dir = {self.root}/run
state_dir = {self.root}/state
log_path = {self.root}/dovecot.log
instance_name = popbox-test-{os.getpid()}-{self.port}
protocols = pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{self.key}
disable_plaintext_auth = no
auth_failure_delay = 0
auth_mechanisms = {MECHANISMS}
default_internal_user = dovecot
default_login_user = dovenull
mail_uid = {MAIL_UID}
mail_gid = {MAIL_UID}
mail_location = maildir:{self.mail}/%u/Maildir
pop3_lock_session = yes
passdb {{
  driver = passwd-file
  args = {self.users}
}}
userdb {{
  driver = passwd-file
  args = {self.users}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {self.tls_port}
    ssl = yes
  }}
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
        self.port, self.tls_port = free_port(), free_port()
        if self.lmtp:
            self.lmtp_port = free_port()
        for sub in ("run", "state"):
            (self.root / sub).mkdir(mode=0o755, exist_ok=True)
        conf = self.root / "dovecot.conf"
        conf.write_text(self.config_text())
        check = subprocess.run(["doveconf", "-c", str(conf), "-n"], capture_output=True,
                               text=True, timeout=30, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"doveconf refused the configuration:\n{check.stderr}")
        with (self.root / "master.log").open("ab") as log:
            self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)], stdout=log,
                                         stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 30
        while not self._greets():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"Dovecot did not start:\n{tail}")
            time.sleep(0.05)

    def _greets(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                if sock.recv(512).startswith(b"+OK"):
                    sock.sendall(b"QUIT\r\n")
                    return True
        except OSError:
            pass
        return False

    def log_tail(self) -> str:
        out = []
        for name in ("dovecot.log", "master.log"):
            with contextlib.suppress(OSError):
                out += (self.root / name).read_text(errors="replace").splitlines()[-20:]
        return "\n".join(out)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def sessions_ended(self, timeout: float = 15) -> None:
        """Wait until no pop3 process is left (a killed client's session has ended and
        released the maildrop lock)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self._pop3_processes(self.proc.pid):
            if time.monotonic() > deadline:
                raise RuntimeError("a Dovecot pop3 session did not end")
            time.sleep(0.05)

    @staticmethod
    def _pop3_processes(session: int) -> list[int]:
        """Processes named pop3 in the master's session (it was started with setsid)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            if comm == "pop3" and int(fields[3]) == session:  # field 6: session id
                found.append(int(entry.name))
        return found

    # --- users and mail ---

    def maildir(self, user: str) -> Path:
        return self.mail / user / "Maildir"

    def add_user(self) -> str:
        """A user no test has used yet (password "secret"), with an empty Maildir. The
        users are all in the passwd-file before Dovecot starts: it notices a changed
        file only now and then."""
        self._users += 1
        if self._users > USERS:
            raise RuntimeError(f"only {USERS} users: raise dovecot_peer.USERS")
        user = f"user{self._users}"
        for path in (self.mail / user, self.maildir(user)):
            path.mkdir(mode=0o700)
            os.chown(path, MAIL_UID, MAIL_UID)
        for sub in ("cur", "new", "tmp"):
            (self.maildir(user) / sub).mkdir(mode=0o700)
            os.chown(self.maildir(user) / sub, MAIL_UID, MAIL_UID)
        return user

    def put(self, user: str, message: bytes) -> None:
        self._counter += 1
        name = f"{1700000000 + self._counter}.M{self._counter}P1.testhost"
        path = self.maildir(user) / "new" / name
        path.write_bytes(message)
        os.chown(path, MAIL_UID, MAIL_UID)

    def count(self, user: str) -> int:
        return sum(1 for sub in ("new", "cur") for _ in (self.maildir(user) / sub).iterdir())


@contextlib.contextmanager
def running_dovecot(ca: trustme.CA, *, lmtp: bool = False) -> Iterator[Dovecot]:
    """A started Dovecot with a certificate for 127.0.0.1 and localhost from `ca`,
    stopped (and its folder removed) on exit."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server = Dovecot(b"".join(p.bytes() for p in cert.cert_chain_pems),
                     cert.private_key_pem.bytes(), lmtp=lmtp)
    server.start()
    try:
        yield server
    finally:
        server.stop()
