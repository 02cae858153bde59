"""Several popbox frontends behind HAProxy (PROXY protocol v2), one PostgreSQL store:
the maildrop lock holds across frontends and dies with a killed frontend, and a bounded
load of POP3 sessions and LMTP deliveries loses and duplicates nothing.

HAProxy is Debian's `haproxy`, run in the foreground with its own configuration in a
temporary folder; every address is 127.0.0.1 with freshly found ports.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import random
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import Client, MailEnv, ServerProcess
from pg import LmtpClient, LmtpProcess, add_user, fetch, free_port, pg_config

pytest_plugins = ["pg"]

HAPROXY_CFG = """\
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 15m
    timeout server 15m
listen pop3_a
    bind 127.0.0.1:{port_a}
    server a 127.0.0.1:{a} send-proxy-v2
listen pop3_b
    bind 127.0.0.1:{port_b}
    server b 127.0.0.1:{b} send-proxy-v2
listen pop3
    bind 127.0.0.1:{port}
    balance roundrobin
    server a 127.0.0.1:{a} send-proxy-v2
    server b 127.0.0.1:{b} send-proxy-v2
"""


@dataclass
class Cluster:
    a: ServerProcess
    b: ServerProcess
    port_a: int  # HAProxy -> frontend a only
    port_b: int  # HAProxy -> frontend b only
    port: int  # HAProxy -> both, round robin
    config: Path
    dsn: str


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "haproxy exited"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"haproxy is not listening on {port}")


@pytest.fixture
def cluster(pg_dsn: str, tmp_path: Path) -> Iterator[Cluster]:
    haproxy = shutil.which("haproxy")
    assert haproxy is not None, "haproxy is missing: scripts/install-peers installs it"
    config = pg_config(MailEnv(tmp_path), pg_dsn,
                       server={"proxy_networks": ["127.0.0.0/8"]},
                       lmtp={"listen": ["127.0.0.1:0"]})
    a = ServerProcess(config)
    b = ServerProcess(config)
    ports = {"port_a": free_port(), "port_b": free_port(), "port": free_port()}
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(a=a.port, b=b.port, **ports))
    proxy = subprocess.Popen([haproxy, "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        for port in ports.values():
            _wait_listening(port, proxy)
        yield Cluster(a, b, config=config, dsn=pg_dsn, **ports)
    finally:
        proxy.terminate()
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait(10)
        a.stop()
        b.stop()


async def new_user(dsn: str, messages: int) -> str:
    from popbox.pg.pool import Database
    from popbox.store.postgres import PostgresStore

    user = f"u{uuid.uuid4().hex[:10]}@example.org"
    await add_user(dsn, user)
    store = PostgresStore(Database(dsn, max_size=1))
    for n in range(messages):
        assert await store.deliver(user, f"Subject: {n}\n\nbody {n}\n".encode()) is None
    await store.aclose()
    return user


async def count(dsn: str, user: str) -> int:
    rows = await fetch(dsn, "SELECT count(*) AS n FROM messages m JOIN mailboxes b "
                       "ON b.id = m.mailbox_id WHERE b.name = $1", user)
    return int(rows[0]["n"])


async def test_in_use_across_frontends_and_a_killed_frontend(cluster: Cluster) -> None:
    user = await new_user(cluster.dsn, 2)
    first = await Client.connect(cluster.port_a)
    assert (await first.login(user)).startswith(b"+OK")
    assert (await first.cmd("DELE 1")).startswith(b"+OK")
    second = await Client.connect(cluster.port_b)
    assert (await second.login(user)).startswith(b"-ERR [IN-USE]")
    await second.close()

    cluster.a.kill()  # SIGKILL the frontend that holds the session
    started = time.monotonic()
    while True:
        third = await Client.connect(cluster.port_b)
        reply = await third.login(user)
        if reply.startswith(b"+OK"):
            break
        await third.close()
        assert b"[IN-USE]" in reply and time.monotonic() - started < 2, reply
    taken = time.monotonic() - started
    assert (await third.cmd("STAT")).startswith(b"+OK 2 ")  # nothing was deleted
    assert (await third.cmd("QUIT")).startswith(b"+OK")
    await third.close()
    await first.close()
    assert await count(cluster.dsn, user) == 2
    assert taken < 2
    print(f"login through the other frontend {taken * 1000:.0f} ms after the kill")


SESSIONS = 200
WORKERS = 20
USERS = 20
DELIVERIES = 300


async def test_sessions_and_deliveries_under_load(cluster: Cluster) -> None:
    """~200 POP3 sessions through both frontends while LMTP delivers 300 messages: every
    message is retrieved exactly once, none is lost. Bounded: well under 60 seconds."""
    started = time.monotonic()
    users = [f"load{uuid.uuid4().hex[:8]}-{i}@example.org" for i in range(USERS)]
    for user in users:
        await add_user(cluster.dsn, user)
    lmtp = LmtpProcess(cluster.config)
    delivered: set[str] = set()
    retrieved: collections.Counter[str] = collections.Counter()
    stats = collections.Counter[str]()
    rng = random.Random(1939)

    async def deliverer(n: int) -> None:
        client = await LmtpClient.connect(lmtp.port)
        for i in range(n):
            token = f"tok-{uuid.uuid4().hex}"
            user = rng.choice(users)
            message = f"Subject: {token}\r\n\r\nmessage {i}\r\n".encode()
            replies = await client.transaction("load@example.org", [user], message)
            assert [code for code, _ in replies] == [250], replies
            delivered.add(token)
        await client.close()

    async def session(user: str) -> bool:
        client = await Client.connect(cluster.port)
        try:
            if not (await client.login(user)).startswith(b"+OK"):
                stats["in-use"] += 1
                return False
            _, listing = await client.multi("LIST")
            tokens = []
            for line in listing:
                number = int(line.split()[0])
                assert (await client.cmd(f"RETR {number}")).startswith(b"+OK")
                found = re.search(rb"Subject: (tok-[0-9a-f]+)", await client.body())
                assert found is not None
                tokens.append(found.group(1).decode())
                assert (await client.cmd(f"DELE {number}")).startswith(b"+OK")
            if (await client.cmd("QUIT")).startswith(b"+OK"):
                retrieved.update(tokens)
                stats["sessions"] += 1
                return True
            return False
        finally:
            await client.close()

    turn = itertools.count()

    async def worker() -> None:
        while stats["sessions"] < SESSIONS:
            await session(users[next(turn) % USERS])

    loaders = [asyncio.create_task(deliverer(DELIVERIES // 3)) for _ in range(3)]
    try:
        await asyncio.wait_for(asyncio.gather(*loaders, *(worker() for _ in range(WORKERS))),
                               timeout=50)
    finally:
        lmtp.stop()
    for user in users:  # what arrived after the last session of its user
        while not await session(user):
            pass
    assert len(delivered) == DELIVERIES
    assert set(retrieved) == delivered  # none lost
    assert max(retrieved.values()) == 1  # none twice
    assert stats["sessions"] >= SESSIONS
    for user in users:
        assert await count(cluster.dsn, user) == 0
    elapsed = time.monotonic() - started
    assert elapsed < 60, elapsed
    print(f"{stats['sessions']} sessions ({stats['in-use']} IN-USE retries), "
          f"{DELIVERIES} deliveries in {elapsed:.1f}s")
