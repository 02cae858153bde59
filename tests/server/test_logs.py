"""`[log] format = "json"` and `[log] target = FILE`: JSON lines parsed one by one for a
full session (RFC 1939 §6 QUIT commits) and a failed login; SIGUSR1 reopens the file after
logrotate's rename, in every worker."""

from __future__ import annotations

import json
import os
import poplib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import MailEnv, ServerProcess, children_of
from popbox import logs


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for(check: object, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def session(port: int, password: str = "secret", dele: bool = True) -> None:
    pop = poplib.POP3("127.0.0.1", port, timeout=10)
    pop.user("alice")
    try:
        pop.pass_(password)
    except poplib.error_proto:
        pop.quit()
        return
    pop.top(1, 0)
    pop.retr(1)
    if dele:
        pop.dele(1)
    pop.quit()


def open_by(pids: set[int], path: Path) -> bool:
    """Whether one of `pids` has `path` open."""
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        for fd in fds.iterdir():
            try:
                if os.readlink(fd) == str(path):
                    return True
            except OSError:
                continue
    return False


def test_json_lines_have_the_text_lines_fields(env: MailEnv) -> None:
    env.put("alice", b"Subject: a\n\nhello\n")
    env.put("alice", b"Subject: b\n\nworld\n")
    log = env.root / "popbox.log"
    fields = ["user", "ip", "reason", "top", "retr", "dele", "bytes", "duration", "mech"]
    server = ServerProcess(env.config_file(
        log={"format": "json", "target": str(log), "logout_fields": fields}))
    try:
        session(server.port, password="wrong")
        session(server.port)
        assert wait_for(lambda: any(r.get("event") == "logout" for r in records(log)))
    finally:
        stderr = server.stop()
    assert "login ok" not in stderr  # everything went to the file
    lines = records(log)
    assert all(line["v"] == logs.JSON_VERSION and line["pid"] == server.proc.pid
               for line in lines)
    assert all(isinstance(line["ts"], str) and str(line["ts"]).endswith("Z") for line in lines)
    by_event: dict[object, list[dict[str, object]]] = {}
    for line in lines:
        by_event.setdefault(line.get("event"), []).append(line)
    (failed,) = by_event["login failed"]
    assert failed["user"] == "alice" and failed["reason"] == "rejected"
    assert failed["mech"] == "USER" and failed["ip"] == "127.0.0.1"
    assert failed["msg"] == "login failed user=alice mech=USER ip=127.0.0.1 reason=rejected"
    (ok,) = by_event["login ok"]
    assert ok["messages"] == "2" and ok["level"] == "info"
    (logout,) = by_event["logout"]
    assert list(logout)[5:-1] == fields  # after v, ts, level, pid, event; before msg
    assert logout["reason"] == "quit" and logout["top"] == "1" and logout["retr"] == "1"
    assert logout["dele"] == "1" and logout["mech"] == "USER"
    assert logout["bytes"] == str(len(b"Subject: a\r\n\r\n") + len(b"Subject: a\r\n\r\nhello\r\n"))
    assert float(str(logout["duration"])) >= 0
    assert [d["reason"] for d in by_event["disconnect"]] == ["quit"]  # the failed session
    assert len(by_event["connect"]) == 2


@pytest.mark.parametrize("workers", [1, 2])
def test_sigusr1_reopens_the_log_file_after_a_rename(env: MailEnv, workers: int) -> None:
    for i in range(3):
        env.put("alice", b"Subject: %d\n\nx\n" % i)
    log = env.root / "popbox.log"
    rotated = env.root / "popbox.log.1"
    server = ServerProcess(env.config_file(
        server={"workers": workers}, log={"target": str(log)}))
    try:
        pids = {server.proc.pid} | children_of(server.proc.pid)
        # The supervisor (with workers), the workers, and, started as root, the mail host
        # a single-process server forks (a worker's host is the worker's child).
        assert len(pids) == workers + (workers > 1) + (workers == 1 and os.geteuid() == 0)
        session(server.port, dele=False)
        assert wait_for(lambda: "logout user=alice" in log.read_text())
        log.rename(rotated)
        server.proc.send_signal(signal.SIGUSR1)
        # Every process lets go of the renamed file and writes to the new one.
        assert wait_for(lambda: log.exists() and not open_by(pids, rotated))
        assert all(Path(f"/proc/{pid}").exists() for pid in pids)  # SIGUSR1 killed nobody
        session(server.port, dele=False)
        assert wait_for(lambda: "logout user=alice" in log.read_text())
    finally:
        server.stop()
    old, new = rotated.read_text(), log.read_text()
    assert old.count("login ok user=alice") == 1 and new.count("login ok user=alice") == 1
    assert "popbox[" in new and "shutdown complete" in new


def test_a_log_file_that_cannot_be_opened_is_a_configuration_error(env: MailEnv) -> None:
    config = env.config_file(log={"target": str(env.root / "missing" / "popbox.log")})
    done = subprocess.run([sys.executable, "-m", "popbox", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "log.target" in done.stderr and "No such file or directory" in done.stderr


def test_fields_of_a_line() -> None:
    assert logs.fields("logout user=a ip=::1 reason=quit") == (
        "logout", {"user": "a", "ip": "::1", "reason": "quit"})
    assert logs.fields("TLS certificates reloaded") == ("TLS certificates reloaded", {})
    assert logs.fields("postgres: x=1 then free text") == ("", {})
