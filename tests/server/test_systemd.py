"""The systemd units in contrib/systemd (checked with systemd-analyze) and the sd_notify(3)
protocol popbox speaks to a `Type=notify` unit: READY, WATCHDOG, RELOADING, STOPPING."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import MailEnv, ServerProcess

UNITS = Path(__file__).resolve().parents[2] / "contrib" / "systemd"
NAMES = ("popbox.service", "popbox-lmtp.service")


def installed(tmp_path: Path) -> list[Path]:
    """The units as installed here: ExecStart names this environment's popbox."""
    popbox = Path(sys.executable).parent / "popbox"
    assert popbox.exists()
    out = []
    for name in NAMES:
        unit = tmp_path / name
        unit.write_text((UNITS / name).read_text().replace("/usr/local/bin/popbox", str(popbox)))
        out.append(unit)
    return out


def directives(unit: Path) -> dict[str, str]:
    found = {}
    for line in unit.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            found[key] = value
    return found


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    units = installed(tmp_path)
    done = subprocess.run(["systemd-analyze", "verify", *map(str, units)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    serve, lmtp = map(directives, units)
    assert serve["Type"] == lmtp["Type"] == "notify"
    assert serve["ExecReload"].endswith("popbox reload --config /etc/popbox/popbox.toml")
    assert serve["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID"
    for unit in (serve, lmtp):
        assert unit["NoNewPrivileges"] == unit["PrivateTmp"] == "yes"
        assert unit["ProtectSystem"] == "strict" and unit["ReadWritePaths"] == "/var/vmail"
        assert unit["SystemCallFilter"] == "@system-service"
        assert unit["RestrictAddressFamilies"] == "AF_INET AF_INET6 AF_UNIX"


def test_units_are_rated_ok_by_systemd_analyze_security(tmp_path: Path) -> None:
    for unit in installed(tmp_path):
        done = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
            capture_output=True, text=True, timeout=60, check=False)
        match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", done.stdout)
        assert match, done.stdout + done.stderr
        assert float(match.group(1)) <= 3.0 and match.group(2) == "OK"


class Notifications:
    """The datagrams popbox sends to $NOTIFY_SOCKET, read as they come."""

    def __init__(self, address: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(address))
        self.sock.setblocking(False)
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.queue.put_nowait((await loop.sock_recv(self.sock, 4096)).decode())

    async def next(self) -> list[str]:
        return (await asyncio.wait_for(self.queue.get(), 15)).split("\n")

    async def until(self, wanted: str) -> list[str]:
        """Messages until one that contains `wanted` (watchdog pings skipped): that one."""
        while True:
            message = await self.next()
            if wanted in message:
                return message
            assert message == ["WATCHDOG=1"], message

    def close(self) -> None:
        self.task.cancel()
        self.sock.close()


@pytest.mark.parametrize("workers", [1, 2])
async def test_sd_notify_ready_watchdog_reload_stopping(env: MailEnv, workers: int) -> None:
    notifications = Notifications(env.root / "notify.sock")
    config = env.config_file(server={"workers": workers},
                             admin={"socket": str(env.root / "admin.sock")})
    server = await asyncio.to_thread(
        ServerProcess, config,
        env={"NOTIFY_SOCKET": str(env.root / "notify.sock"), "WATCHDOG_USEC": "200000"})
    try:
        ready = await notifications.until("READY=1")
        assert f"MAINPID={server.proc.pid}" in ready
        assert await notifications.next() == ["WATCHDOG=1"]  # every 0.1 s
        reload = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "popbox", "reload", "--config", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(reload.communicate(), 60)
        assert reload.returncode == 0 and out.startswith(b"configuration reloaded"), err
        reloading = await notifications.until("RELOADING=1")
        assert any(re.fullmatch(r"MONOTONIC_USEC=\d+", item) for item in reloading)
        assert await notifications.until("READY=1") == ["READY=1"]
        server.proc.send_signal(signal.SIGTERM)
        assert await notifications.until("STOPPING=1") == ["STOPPING=1"]
        assert await asyncio.to_thread(server.proc.wait, 20) == 0
    finally:
        server.stop()
        notifications.close()
