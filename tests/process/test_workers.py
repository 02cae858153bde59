"""`server.workers`: several processes share the listening port; the maildrop lock holds
across them; SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

from helpers import Client, MailEnv, ServerProcess, children_of


async def test_two_workers_share_the_port_and_the_lock(env: MailEnv) -> None:
    env.put("alice", b"Subject: x\n\nbody\n")
    env.add_user("bob")
    server = ServerProcess(env.config_file(server={"workers": 2}))
    try:
        workers = children_of(server.proc.pid)
        assert len(workers) == 2
        # Many connections: both workers end up serving (the kernel spreads them).
        clients = [await Client.connect(server.port) for _ in range(40)]
        for client in clients:
            assert (await client.line()).startswith(b"+OK")
        holder = clients[0]
        assert (await holder.cmd("USER alice")) == b"+OK"
        assert (await holder.cmd("PASS secret")).startswith(b"+OK Logged in")
        in_use = 0
        for client in clients[1:]:
            await client.cmd("USER alice")
            reply = await client.cmd("PASS secret")
            in_use += reply.startswith(b"-ERR [IN-USE]")
        assert in_use == len(clients) - 1
        for client in clients:
            await client.close()
        server.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.proc.wait, 20) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    finally:
        log = server.stop()
    # Both workers served, and the lock held across them.
    serving = {int(m) for m in re.findall(r"popbox\[(\d+)\]: connect ip=", log)}
    assert serving == workers
    (holder_pid,) = {int(m) for m in re.findall(r"popbox\[(\d+)\]: login ok user=alice", log)}
    refused = {int(m) for m in re.findall(r"popbox\[(\d+)\]: login failed .*reason=in-use", log)}
    assert refused - {holder_pid}  # the other process saw the lock too


async def test_a_crashed_worker_is_replaced(env: MailEnv) -> None:
    server = ServerProcess(env.config_file(server={"workers": 2}))
    try:
        workers = children_of(server.proc.pid)
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        for _ in range(100):
            now = children_of(server.proc.pid)
            if len(now) == 2 and victim not in now:
                break
            await asyncio.sleep(0.1)
        assert len(now) == 2 and victim not in now
        client = await Client.connect(server.port)
        assert (await client.login()).startswith(b"+OK")
        await client.close()
    finally:
        server.stop()
