"""A worker that dies is started again and listens, with or without the supervisor's own
threads (metrics, admin socket) running when it forks."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from helpers import Client, MailEnv, ServerProcess, children_of


@pytest.mark.parametrize("services", [False, True])
async def test_a_replaced_worker_listens_and_serves(env: MailEnv, services: bool) -> None:
    extra = {"admin": {"socket": str(env.root / "admin.sock")},
             "metrics": {"listen": "127.0.0.1:0"}} if services else {}
    server = ServerProcess(env.config_file(server={"workers": 2}, **extra))
    try:
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
        listening = await asyncio.to_thread(
            server.wait_log, f"popbox[{replacement}]: listening on 127.0.0.1:{server.port}")
        assert listening, server.read_log()
        assert children_of(server.proc.pid) == now  # it stays up
        clients = [await Client.connect(server.port) for _ in range(16)]
        for client in clients:
            assert (await client.line()).startswith(b"+OK")
            await client.close()
    finally:
        log = server.stop()
    assert "exited with 1" not in log
    assert f"popbox[{replacement}]: connect ip=127.0.0.1" in log  # the kernel gave it some
