"""`popbox who`, `kick`, `reload` and `stats` against a running `popbox serve`, with one
worker and with two. A kicked session ends without the UPDATE state (RFC 1939 §6): what
it marked with DELE is still there."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import sys
from pathlib import Path

import pytest

from helpers import Client, MailEnv, ServerProcess, children_of


async def popbox(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "popbox", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def who(config: Path, *user: str) -> list[dict[str, object]]:
    code, out, err = await popbox("who", "--config", str(config), "--json", *user)
    assert code == 0, err
    sessions: list[dict[str, object]] = json.loads(out)
    return sessions


@pytest.mark.parametrize("workers", [1, 2])
async def test_who_and_kick(env: MailEnv, workers: int) -> None:
    for i in range(3):
        env.put("alice", b"Subject: %d\n\nbody\n" % i)
    env.add_user("bob")
    socket_path = env.root / "admin.sock"
    config = env.config_file(server={"workers": workers}, admin={"socket": str(socket_path)})
    server = ServerProcess(config)
    try:
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
        pids = children_of(server.proc.pid) if workers > 1 else {server.proc.pid}
        alice, bob = await Client.connect(server.port), await Client.connect(server.port)
        assert (await alice.login("alice")).startswith(b"+OK")
        assert (await bob.login("bob")).startswith(b"+OK")
        assert await alice.cmd("DELE 1") == b"+OK Message 1 deleted."
        status, body = await alice.multi("RETR 2")
        assert status.startswith(b"+OK") and body == [b"Subject: 1", b"", b"body"]
        idle = [await Client.connect(server.port) for _ in range(14)]
        for client in idle:
            assert (await client.line()).startswith(b"+OK")

        sessions = await who(config)
        assert len(sessions) == 16
        assert {s["worker"] for s in sessions} == pids  # every worker answered
        (seen,) = await who(config, "alice")
        assert seen["state"] == "transaction" and seen["ip"] == "127.0.0.1"
        assert seen["mechanism"] == "USER" and seen["tls"] == ""
        assert seen["bytes"] == len(b"Subject: 1\r\n\r\nbody\r\n")
        assert sum(s["state"] == "authorization" for s in sessions) == 14
        code, table, _ = await popbox("who", "--config", str(config))
        assert code == 0
        assert table.splitlines()[0].split() == [
            "user", "ip", "since", "state", "tls", "mechanism", "bytes", "worker"]
        assert len(table.splitlines()) == 17

        code, out, err = await popbox("kick", "--config", str(config), "alice")
        assert (code, out) == (0, "1 session ended\n"), err
        assert (await alice.line()).startswith(b"-ERR [SYS/TEMP]")
        assert await alice.reader.read() == b""
        assert len(env.messages("alice")) == 3  # the DELE was not committed
        assert [s["user"] for s in await who(config, "alice")] == []

        code, out, _ = await popbox("kick", "--config", str(config), "--ip", "127.0.0.1")
        assert (code, out) == (0, "15 sessions ended\n")
        assert await bob.reader.read() != b""  # the -ERR, then the end
        assert await who(config) == []
        code, out, _ = await popbox("kick", "--config", str(config), "nobody")
        assert (code, out) == (0, "0 sessions ended\n")
        for client in [alice, bob, *idle]:
            await client.close()
    finally:
        log = server.stop()
    assert "logout user=alice ip=127.0.0.1 reason=kicked" in log
    assert "logout user=bob ip=127.0.0.1 reason=kicked" in log


@pytest.mark.parametrize("workers", [1, 2])
async def test_reload_applies_at_once_and_refuses_a_broken_file(
    env: MailEnv, workers: int
) -> None:
    env.put("alice", b"Subject: x\n\nbody\n")
    socket_path = env.root / "admin.sock"
    settings = {"server": {"workers": workers, "greeting": "old greeting"},
                "admin": {"socket": str(socket_path)}}
    config = env.config_file(**settings)
    server = ServerProcess(config)
    try:
        held = await Client.connect(server.port)
        assert (await held.login()).startswith(b"+OK")

        settings["server"] = {"workers": workers + 1, "greeting": "new greeting"}
        env.config_file(**settings)
        code, out, err = await popbox("reload", "--config", str(config))
        assert code == 0, err
        suffix = "s" if workers > 1 else ""
        assert out == (f"configuration reloaded ({workers} worker{suffix})\n"
                       "  not applied until a restart: server.workers\n")
        for _ in range(4):  # every worker greets the new way
            client = await Client.connect(server.port)
            assert await client.line() == b"+OK new greeting"
            await client.close()
        # The session logged in before the reload goes on.
        status, body = await held.multi("RETR 1")
        assert status == b"+OK 20 octets" and body == [b"Subject: x", b"", b"body"]

        good = config.read_text()
        env.config_file(**settings, limits={"idle_timeout": 5})  # RFC 1939 §3: >= 10 min
        code, out, err = await popbox("reload", "--config", str(config))
        assert code == 1 and out == ""
        assert "limits.idle_timeout" in err
        config.write_text(good + "[limits\n")
        code, out, err = await popbox("reload", "--config", str(config))
        assert code == 2 and "not valid TOML" in err  # the socket is not even found
        client = await Client.connect(server.port)
        assert await client.line() == b"+OK new greeting"
        await client.close()
        assert (await held.cmd("QUIT")).startswith(b"+OK")
        await held.close()
    finally:
        log = server.stop()
    assert "reload: server.workers changed; it takes effect at the next restart" in log
    assert "reload refused, the old configuration stays" in log


async def test_reload_rereads_the_users_file_and_refuses_a_broken_one(env: MailEnv) -> None:
    socket_path = env.root / "admin.sock"
    config = env.config_file(admin={"socket": str(socket_path)})
    server = ServerProcess(config)
    try:
        env.users.write_text(env.users.read_text() + "broken line without fields\n")
        code, _, err = await popbox("reload", "--config", str(config))
        assert code == 1 and "users" in err
        env.users.write_text("alice:{PLAIN}changed::::::\n")
        code, _, err = await popbox("reload", "--config", str(config))
        assert code == 0, err
        client = await Client.connect(server.port)
        assert (await client.login("alice", "changed")).startswith(b"+OK")
        assert (await client.cmd("QUIT")).startswith(b"+OK")
        await client.close()
    finally:
        server.stop()


async def test_stats_prints_the_counters(env: MailEnv) -> None:
    socket_path = env.root / "admin.sock"
    config = env.config_file(server={"workers": 2}, admin={"socket": str(socket_path)})
    server = ServerProcess(config)
    try:
        for _ in range(3):
            client = await Client.connect(server.port)
            assert (await client.login()).startswith(b"+OK")
            assert (await client.cmd("QUIT")).startswith(b"+OK")
            assert await client.reader.read() == b""
            await client.close()
        code, out, err = await popbox("stats", "--config", str(config))
    finally:
        server.stop()
    assert code == 0, err
    assert 'popbox_logins_total{mechanism="USER",result="ok"} 3.0' in out.splitlines()
    assert not any(line.startswith("#") for line in out.splitlines())


async def test_an_unsafe_socket_folder_is_refused(env: MailEnv) -> None:
    folder = env.root / "open"
    folder.mkdir()
    os.chmod(folder, 0o777)  # noqa: S103
    config = env.config_file(admin={"socket": str(folder / "admin.sock")})
    code, _, err = await popbox("serve", "--config", str(config))
    assert code == 2
    assert "is writable by anyone" in err
    code, _, err = await popbox("who", "--config", str(env.config_file()))
    assert code == 2 and "admin.socket is not set" in err


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize("workers", [1, 2])
async def test_reload_adds_and_removes_listeners(env: MailEnv, workers: int) -> None:
    env.put("alice", b"Subject: x\n\nbody\n")
    settings = {"server": {"workers": workers}, "admin": {"socket": str(env.root / "admin.sock")}}
    config = env.config_file(**settings)
    server = ServerProcess(config)
    try:
        held = await Client.connect(server.port)
        assert (await held.login()).startswith(b"+OK")
        with socket.socket() as taken:  # a port something else listens on: refused, no change
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = f"127.0.0.1:{taken.getsockname()[1]}"
            settings["server"] = {"workers": workers, "listen": ["127.0.0.1:0", busy]}
            env.config_file(**settings)
            code, _, err = await popbox("reload", "--config", str(config))
            assert code == 1 and "cannot listen" in err
        other = await Client.connect(server.port)
        assert (await other.line()).startswith(b"+OK")
        await other.close()
        new_port = free_port()
        settings["server"] = {"workers": workers, "listen": [f"127.0.0.1:{new_port}"]}
        env.config_file(**settings)
        code, out, err = await popbox("reload", "--config", str(config))
        assert code == 0 and "not applied" not in out, err
        client = await Client.connect(new_port)
        assert (await client.login()).startswith(b"-ERR [IN-USE]")  # alice is held
        await client.close()
        with pytest.raises(ConnectionRefusedError):
            await Client.connect(server.port)
        # The session on the listener that is gone goes on, and commits.
        assert await held.cmd("DELE 1") == b"+OK Message 1 deleted."
        assert (await held.cmd("QUIT")).startswith(b"+OK")
        await held.close()
        assert env.messages("alice") == []
    finally:
        log = server.stop()
    assert f"stopped listening on 127.0.0.1:{server.port}" in log


async def test_a_worker_started_after_a_reload_serves_the_new_configuration(
    env: MailEnv,
) -> None:
    settings = {"server": {"workers": 2, "greeting": "old greeting"},
                "admin": {"socket": str(env.root / "admin.sock")}}
    config = env.config_file(**settings)
    server = ServerProcess(config)
    try:
        settings["server"] = {"workers": 2, "greeting": "new greeting"}
        env.config_file(**settings)
        code, _, err = await popbox("reload", "--config", str(config))
        assert code == 0, err
        workers = children_of(server.proc.pid)
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        now = workers
        for _ in range(200):
            now = children_of(server.proc.pid)
            if len(now) == 2 and victim not in now:
                break
            await asyncio.sleep(0.05)
        (replacement,) = now - workers
        assert await asyncio.to_thread(
            server.wait_log, f"popbox[{replacement}]: configuration reloaded")
        clients = [await Client.connect(server.port) for _ in range(16)]
        for client in clients:  # the kernel spreads them over both workers
            assert await client.line() == b"+OK new greeting"
        assert {s["worker"] for s in await who(config)} == now
        for client in clients:
            await client.close()
    finally:
        server.stop()
