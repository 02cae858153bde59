"""The server as a real process: crashes, signals, locks across processes, the command
line's exit statuses and messages, and the README's demo command."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import Client, MailEnv, ServerProcess, crlf, server_process
from popbox import __version__

CLI_TIMEOUT = 30

MSG1 = b"From: a@example.org\nSubject: one\n\nbody one\n.dotted line\n"
MSG2 = b"From: b@example.org\nSubject: two\n\nline 1\nline 2\n"
MSG3 = b"Subject: three\n\nno final newline"



def fill(env: MailEnv) -> None:
    for message in (MSG1, MSG2, MSG3):
        env.put("alice", message)


def snapshot(env: MailEnv) -> dict[str, bytes]:
    """Every file of alice's Maildir (new/, cur/, tmp/) by its path: names and bytes."""
    md = env.maildir("alice")
    return {
        f"{sub}/{p.name}": p.read_bytes()
        for sub in ("new", "cur", "tmp") for p in (md / sub).iterdir()
    }


def popbox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "popbox", *args],
        capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def read_until(proc: subprocess.Popen[bytes], pattern: bytes, timeout: float) -> bytes:
    """Read the child's stdout until `pattern` matches, failing after `timeout` seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, data):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {pattern!r} within {timeout}s in {data!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"exited with {proc.wait(10)} after {data!r}"
            data += chunk
    return data


# --- crashes, signals, locks ---


async def test_sigkill_mid_session_loses_nothing_and_leaves_no_lock(env: MailEnv) -> None:
    """RFC 1939 §6: only QUIT enters the UPDATE state. A server killed with SIGKILL after
    DELE and RETR, before QUIT, leaves every file as it was (names and bytes); the
    maildrop lock died with the process, so a new server process on the same Maildir
    logs in at once and shows every message."""
    fill(env)
    before = snapshot(env)
    config = env.config_file()
    with server_process(config) as server:
        client = await Client.connect(server.port)
        assert (await client.login()).startswith(b"+OK Logged in. 3 messages")
        assert (await client.cmd("DELE 1")).startswith(b"+OK")
        assert (await client.cmd("DELE 3")).startswith(b"+OK")
        assert (await client.cmd("RETR 2")).startswith(b"+OK")
        assert await client.body() == crlf(MSG2)
        server.kill()
        with contextlib.suppress(ConnectionResetError):
            assert await client.reader.read() == b""
        await client.close()
    assert snapshot(env) == before

    with server_process(config) as server:
        client = await Client.connect(server.port)
        start = time.monotonic()
        total = sum(len(crlf(m)) for m in (MSG1, MSG2, MSG3))
        assert await client.login() == f"+OK Logged in. 3 messages ({total} octets).".encode()
        assert time.monotonic() - start < 5
        assert await client.cmd("QUIT") == b"+OK Logging out, 0 messages deleted."
        await client.close()
    assert env.messages("alice") == [MSG1, MSG2, MSG3]


async def test_sigterm_mid_session_says_sys_temp_and_deletes_nothing(env: MailEnv) -> None:
    """SIGTERM: the server stops, waits `limits.shutdown_grace` for running sessions,
    then tells the one still open `-ERR [SYS/TEMP]` (RFC 3206 §4) and closes it without
    committing its DELE (RFC 1939 §6); the process exits with status 0."""
    fill(env)
    before = snapshot(env)
    grace = 1
    server = ServerProcess(env.config_file(limits={"shutdown_grace": grace}))
    try:
        client = await Client.connect(server.port)
        assert (await client.login()).startswith(b"+OK")
        assert (await client.cmd("DELE 1")).startswith(b"+OK")
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert await client.line() == b"-ERR [SYS/TEMP] Server shutting down."
        assert time.monotonic() - start < grace + 5
        assert await client.reader.read() == b""
        await client.close()
        assert server.proc.wait(15) == 0
    finally:
        err = server.stop()
    assert "Traceback" not in err
    assert snapshot(env) == before


async def test_sigterm_lets_a_running_session_finish(env: MailEnv) -> None:
    """SIGTERM closes the listening socket at once (new connections are refused) but a
    session that ends with QUIT within the grace period is committed normally."""
    fill(env)
    server = ServerProcess(env.config_file(limits={"shutdown_grace": 30}))
    try:
        client = await Client.connect(server.port)
        assert (await client.login()).startswith(b"+OK")
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:  # poll until the listener is gone
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        assert (await client.cmd("DELE 2")).startswith(b"+OK")
        assert await client.cmd("QUIT") == b"+OK Logging out, 1 messages deleted."
        await client.close()
        assert server.proc.wait(15) == 0
    finally:
        server.stop()
    assert env.messages("alice") == [MSG1, MSG3]


async def test_second_login_through_another_process_is_in_use(env: MailEnv) -> None:
    """RFC 2449 §8.1.1 [IN-USE]: the maildrop lock holds across server processes on the
    same Maildir tree and is answered at once; after QUIT the other process gets in."""
    fill(env)
    config = env.config_file()
    with server_process(config) as one, server_process(config) as two:
        first = await Client.connect(one.port)
        assert (await first.login()).startswith(b"+OK")
        second = await Client.connect(two.port)
        start = time.monotonic()
        assert await second.login() == b"-ERR [IN-USE] Mailbox is locked by another POP3 session."
        assert time.monotonic() - start < 5
        await second.close()
        assert (await first.cmd("QUIT")).startswith(b"+OK")
        await first.close()
        third = await Client.connect(two.port)
        assert (await third.login()).startswith(b"+OK Logged in. 3 messages")
        await third.close()


# --- the command line ---


def test_version() -> None:
    result = popbox("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"popbox {__version__}\n"


def test_check_config_good(env: MailEnv) -> None:
    """The installed `popbox` console script validates a good configuration: exit 0."""
    script = Path(sys.executable).with_name("popbox")
    assert script.exists(), script
    config = env.config_file()
    result = subprocess.run(
        [str(script), "check-config", "--config", str(config)],
        capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{config}: OK\n"


BROKEN_CONFIGS = {
    "invalid-toml": ('[server]\nhostname = "x"\n[limits\n', "line 3"),
    "duplicate-key": ("[limits]\nidle_timeout = 900\nidle_timeout = 901\n", "line 3"),
    "unknown-key": ("[limits]\nidel_timeout = 900\n", "limits.idel_timeout"),
    "unknown-section": ("[srever]\nlisten = []\n", "srever"),
    "wrong-type": ('[limits]\nidle_timeout = "x"\n', "limits.idle_timeout"),
    "idle-timeout-below-rfc1939": ("[limits]\nidle_timeout = 599\n", "limits.idle_timeout"),
    "listen-without-port": ('[server]\nlisten = ["localhost"]\n', "server.listen"),
    "listen-bad-ip": ('[server]\nlisten = ["300.1.2.3:110"]\n', "server.listen"),
    "listen-bad-port": ('[server]\nlisten = ["127.0.0.1:70000"]\n', "server.listen"),
    "listen-not-a-list": ('[server]\nlisten = "127.0.0.1:110"\n', "server.listen"),
    "bad-local-network": ('[auth]\nlocal_networks = ["10.0.0.0/33"]\n', "auth.local_networks"),
    "tls-cert-without-key": ('[tls]\ncert = "/etc/ssl/cert.pem"\n', "tls.key"),
}


@pytest.mark.parametrize("command", ["check-config", "serve"])
@pytest.mark.parametrize("case", sorted(BROKEN_CONFIGS))
def test_broken_config(tmp_path: Path, case: str, command: str) -> None:
    """A configuration that cannot be used: exit status 2 before anything is bound, one
    message naming the file and the key (or the line, for TOML syntax), no traceback."""
    text, where = BROKEN_CONFIGS[case]
    path = tmp_path / "broken.toml"
    path.write_text(text)
    result = popbox(command, "--config", str(path))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert str(path) in result.stderr
    assert where in result.stderr
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stdout


def test_check_config_reports_a_missing_users_file(env: MailEnv, tmp_path: Path) -> None:
    """check-config also reads the users file: a missing one is exit 2, named."""
    missing = tmp_path / "no-such-users"
    config = env.config_file(auth={"passwd_file": str(missing)})
    result = popbox("check-config", "--config", str(config))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_missing_config(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = popbox("serve", "--config", str(missing))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"{missing}: cannot read: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr


# --- the README's demo command ---


def test_demo(tmp_path: Path) -> None:
    """`popbox demo` (what scripts/demo runs) makes a demo maildrop, prints how to
    connect, serves it; curl fetches the welcome message with the printed user and
    password, over plain POP3 and over implicit TLS; SIGTERM stops it with status 0."""
    port, tls_port = free_port(), free_port()
    with subprocess.Popen(
        [sys.executable, "-m", "popbox", "demo", "--dir", str(tmp_path / "demo"),
         "--port", str(port), "--tls-port", str(tls_port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
    ) as proc:
        try:
            out = read_until(proc, rb"listening on 127\.0\.0\.1:\d+ \(TLS\)", timeout=30).decode()
            assert f"listening on 127.0.0.1:{port}" in out
            match = re.search(r'user "([^"]+)", password "([^"]+)"', out)
            assert match, out
            user, password = match.groups()
            assert (user, password) == ("demo", "demo")
            assert f"curl --user demo:demo pop3://127.0.0.1:{port}/1" in out
            fetched = subprocess.run(
                ["curl", "-sS", "--user", f"{user}:{password}", f"pop3://127.0.0.1:{port}/1"],
                capture_output=True, timeout=CLI_TIMEOUT, check=False,
            )
            assert fetched.returncode == 0, fetched.stderr
            assert b"Subject: Welcome to popbox\r\n" in fetched.stdout
            over_tls = subprocess.run(
                ["curl", "-sS", "--insecure", "--user", f"{user}:{password}",
                 f"pop3s://127.0.0.1:{tls_port}/1"],
                capture_output=True, timeout=CLI_TIMEOUT, check=False,
            )
            assert over_tls.returncode == 0, over_tls.stderr
            assert over_tls.stdout == fetched.stdout
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            assert proc.stderr is not None
            err = proc.stderr.read().decode()
    assert "Traceback" not in err
