"""Privileges: bind as root, then serve as an unprivileged user; never serve as root by
accident."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys

from helpers import MailEnv, server_process
from popbox import privileges


def status_ids(pid: int) -> tuple[int, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return int(fields["Uid"][1]), int(fields["Gid"][1])  # effective ids


def test_serves_as_the_configured_user(env: MailEnv) -> None:
    """Started as root with server.user = nobody: the serving process runs as nobody
    and still answers on the socket it bound as root."""
    nobody = pwd.getpwnam("nobody")
    if os.geteuid() != 0:
        # Not root here: asking for another user must be refused, not ignored.
        config = env.config_file(server={"user": "nobody", "allow_root": False})
        result = subprocess.run([sys.executable, "-m", "popbox", "serve", "--config", str(config)],
                                capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 2
        assert "not started as root" in result.stderr
        return
    config = env.config_file(server={"user": "nobody", "allow_root": False})
    with server_process(config) as server:
        assert status_ids(server.proc.pid) == (nobody.pw_uid, nobody.pw_gid)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            assert sock.recv(100).startswith(b"+OK")


def test_home_follows_the_user() -> None:
    """Libraries that read $HOME (libpq's ~/.postgresql) must not look in root's."""
    if os.geteuid() != 0:  # nothing to drop: the environment stays the user's own
        home = os.environ.get("HOME")
        old = os.umask(0o022)
        try:
            privileges.drop(None, None, allow_root=False)
        finally:
            os.umask(old)
        assert os.environ.get("HOME") == home
        return
    script = ("import os; from popbox import privileges; "
              "privileges.drop('nobody', None, False); print(os.environ['HOME'], os.getuid())")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=30, check=True, env={**os.environ, "HOME": "/root"})
    nobody = pwd.getpwnam("nobody")
    assert result.stdout.split() == [nobody.pw_dir, str(nobody.pw_uid)]


def test_refuses_to_serve_as_root_by_default(env: MailEnv) -> None:
    if os.geteuid() != 0:  # an unprivileged user simply serves as itself
        old = os.umask(0o022)
        try:
            privileges.drop(None, None, allow_root=False)
            assert os.umask(0o022) == 0o077
        finally:
            os.umask(old)
        return
    config = env.config_file(server={"allow_root": False})
    result = subprocess.run([sys.executable, "-m", "popbox", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2, result.stderr
    assert "refusing to serve as root" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_user_is_a_clear_error(env: MailEnv) -> None:
    config = env.config_file(server={"user": "no-such-user-here", "allow_root": False})
    result = subprocess.run([sys.executable, "-m", "popbox", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "no-such-user-here" in result.stderr
    assert "Traceback" not in result.stderr
