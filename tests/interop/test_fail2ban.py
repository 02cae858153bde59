"""The shipped fail2ban filter matches popbox's real log output (fail2ban-regex from
Debian): failed logins and bad-command disconnects, never successful logins."""

from __future__ import annotations

import poplib
import re
import socket
import subprocess
from pathlib import Path

import pytest

from helpers import MailEnv, server_process

FILTER = Path(__file__).parents[2] / "contrib" / "fail2ban" / "filter.d" / "popbox.conf"


def test_filter_matches_real_failures_only(env: MailEnv, tmp_path: Path) -> None:
    with server_process(env.config_file()) as server:
        for password in ("wrong1", "wrong2", "wrong3"):
            pop = poplib.POP3("127.0.0.1", server.port, timeout=10)
            pop.user("alice")
            with pytest.raises(poplib.error_proto):
                pop.pass_(password)
            pop.quit()
        pop = poplib.POP3("127.0.0.1", server.port, timeout=10)
        pop.user("nobody user=x ip=192.0.2.66")  # forged fields stay inside the user token
        with pytest.raises(poplib.error_proto):
            pop.pass_("x")
        pop.quit()
        pop = poplib.POP3("127.0.0.1", server.port, timeout=10)
        pop.user("alice")
        pop.pass_("secret")
        pop.quit()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"BOGUS\r\n" * 4)
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
        assert received.endswith(b"-ERR Too many invalid commands, closing.\r\n")
        log = server.stop()
    logfile = tmp_path / "popbox.log"
    logfile.write_text(log)
    assert "login ok user=alice" in log
    result = subprocess.run(
        ["fail2ban-regex", "--print-all-matched", str(logfile), str(FILTER)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    match = re.search(r"Lines: (\d+) lines, (\d+) ignored, (\d+) matched", result.stdout)
    assert match, result.stdout
    assert int(match.group(3)) == 5, result.stdout  # 4 failed logins + 1 bad-commands
    section = result.stdout.split("Matched line(s):")[1].split("Missed line(s)")[0]
    matched = [line for line in section.splitlines() if "popbox[" in line]
    assert len(matched) == 5, result.stdout
    assert not any("login ok" in line for line in matched)
    assert sum("login failed" in line for line in matched) == 4
    assert "192.0.2.66" not in result.stdout.split("Lines:")[0]  # no forged address banned
