"""`popbox serve` on the postgres store and passdb/userdb, end to end over real sockets,
and `popbox db upgrade|status`."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from helpers import Client, MailEnv, ServerProcess
from pg import add_user, fetch, free_port, fresh_database, pg_config
from popbox.pg.pool import Database
from popbox.store.postgres import PostgresStore

pytest_plugins = ["pg"]

MESSAGES = [
    b"From: a@example.org\nSubject: one\n\nfirst\n",
    b"From: b@example.org\nSubject: two\n\n.dotted\nsecond\n",
    b"From: c@example.org\nSubject: three\n\nthird\n",
]


@pytest.fixture(scope="module")
def server(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = MailEnv(tmp_path_factory.mktemp("e2e"))
    process = ServerProcess(pg_config(env, pg_dsn))
    yield process
    process.stop()


@pytest.fixture
async def alice(pg_dsn: str) -> AsyncIterator[str]:
    """A new user with MESSAGES in their mailbox."""
    user = f"alice-{uuid.uuid4().hex[:8]}@example.org"
    await add_user(pg_dsn, user, "{PLAIN}secret")
    store = PostgresStore(Database(pg_dsn, max_size=2))
    for message in MESSAGES:
        assert await store.deliver(user, message) is None
    await store.aclose()
    yield user


async def rows(dsn: str, user: str) -> list[tuple[str, bool]]:
    found = await fetch(dsn, "SELECT m.uidl, m.seen FROM messages_state m JOIN mailboxes b "
                        "ON b.id = m.mailbox_id WHERE b.name = $1 ORDER BY m.id", user)
    return [(row["uidl"], row["seen"]) for row in found]


def crlf(message: bytes) -> bytes:
    return message.replace(b"\n", b"\r\n")


async def login(port: int, user: str, deadline: float = 5) -> Client:
    """Log in, retrying while the previous session's lock is still being given back."""
    started = time.monotonic()
    while True:
        client = await Client.connect(port)
        reply = await client.login(user)
        if reply.startswith(b"+OK"):
            return client
        await client.close()
        assert b"[IN-USE]" in reply and time.monotonic() - started < deadline, reply


async def test_retr_dele_quit(server: ServerProcess, pg_dsn: str, alice: str) -> None:
    before = await rows(pg_dsn, alice)
    client = await login(server.port, alice)
    assert await client.cmd("STAT") == f"+OK 3 {sum(len(crlf(m)) for m in MESSAGES)}".encode()
    _, uidls = await client.multi("UIDL")
    assert [line.split()[1].decode() for line in uidls] == [u for u, _ in before]
    assert (await client.cmd("RETR 2")).startswith(b"+OK")
    assert await client.body() == crlf(MESSAGES[1])
    assert await client.cmd("DELE 1") == b"+OK Message 1 deleted."
    assert (await client.cmd("QUIT")).startswith(b"+OK")
    await client.close()
    assert await rows(pg_dsn, alice) == [(before[1][0], True), (before[2][0], False)]


async def test_retr_in_order_from_the_read_ahead(
    server: ServerProcess, pg_dsn: str
) -> None:
    """RFC 1939 §7 RETR, messages retrieved in order, some pipelined (RFC 2449 §6.6): the
    ones the read-ahead holds whole are sent from it in one piece, the same bytes as the
    streamed ones (byte-stuffed, CRLF, a line end added where the message had none, 8-bit
    header octets as "?" for a client that has not said UTF8: RFC 6856 §2.1), and each
    is marked seen at QUIT."""
    user = f"bob-{uuid.uuid4().hex[:8]}@example.org"
    await add_user(pg_dsn, user, "{PLAIN}secret")
    kinds = [
        b"Subject: %d\n\n.dot\n..two\nbody\n",
        b"Subject: %d\r\n\r\ncrlf\r\n.\r\n",
        b"Subject: %d caf\xc3\xa9\n\nbody caf\xc3\xa9\n",
        b"Subject: %d\n\nno final newline",
    ]
    messages = [kinds[n % 4] % n + b"x" * (n * 300) for n in range(40)]
    expected = []
    for message in messages:
        wire = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        head, _, body = wire.partition(b"\r\n\r\n")
        wire = head.replace(b"\xc3\xa9", b"??") + b"\r\n\r\n" + body
        expected.append(wire if wire.endswith(b"\r\n") else wire + b"\r\n")
    store = PostgresStore(Database(pg_dsn, max_size=2))
    for message in messages:
        assert await store.deliver(user, message) is None
    await store.aclose()
    client = await login(server.port, user)
    got = []
    for n in range(1, 21):
        assert (await client.cmd(f"RETR {n}")).endswith(b" octets")
        got.append(await client.body())
    client.writer.write(b"".join(b"RETR %d\r\n" % n for n in range(21, 41)))
    for _ in range(21, 41):
        assert (await client.line()).endswith(b" octets")
        got.append(await client.body())
    assert got == expected
    assert await client.cmd("QUIT") == b"+OK Logging out, 0 messages deleted."
    await client.close()
    assert [seen for _, seen in await rows(pg_dsn, user)] == [True] * 40


async def test_dropped_session_deletes_nothing(
    server: ServerProcess, pg_dsn: str, alice: str
) -> None:
    before = await rows(pg_dsn, alice)
    client = await login(server.port, alice)
    for n in (1, 2, 3):
        assert (await client.cmd(f"DELE {n}")).startswith(b"+OK")
    client.writer.transport.abort()  # gone without QUIT
    again = await login(server.port, alice)
    assert (await again.cmd("STAT")).startswith(b"+OK 3 ")
    assert (await again.cmd("QUIT")).startswith(b"+OK")
    await again.close()
    assert await rows(pg_dsn, alice) == before


async def test_second_session_is_in_use(server: ServerProcess, alice: str) -> None:
    first = await login(server.port, alice)
    second = await Client.connect(server.port)
    reply = await second.login(alice)
    assert reply.startswith(b"-ERR [IN-USE]"), reply
    await second.close()
    assert (await first.cmd("QUIT")).startswith(b"+OK")
    await first.close()


async def test_wrong_password_and_unknown_user(server: ServerProcess, alice: str) -> None:
    for user, password in ((alice, "wrong"), ("nobody@example.org", "secret")):
        client = await Client.connect(server.port)
        assert (await client.login(user, password)).startswith(b"-ERR [AUTH]")
        await client.close()


async def test_database_down_is_sys_temp(tmp_path: Path) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    process = ServerProcess(pg_config(MailEnv(tmp_path), dead,
                                      postgres={"connect_timeout": 2}))
    try:
        client = await Client.connect(process.port)
        assert (await client.login("alice")).startswith(b"-ERR [SYS/TEMP]")
        await client.close()
    finally:
        process.stop()


def popbox(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "popbox", *argv], capture_output=True,
                          text=True, timeout=60)


def test_db_upgrade_and_status(pg_server: str, tmp_path: Path) -> None:
    with fresh_database(pg_server) as dsn:
        config = str(pg_config(MailEnv(tmp_path), dsn))
        status = popbox("db", "status", "--config", config)
        assert status.returncode == 1 and "version 0" in status.stdout
        checked = popbox("check-config", "--config", config)
        assert checked.returncode == 2 and "run `popbox db upgrade`" in checked.stderr
        first = popbox("db", "upgrade", "--config", config)
        assert first.returncode == 0 and "applied 1:" in first.stdout, first.stderr
        again = popbox("db", "upgrade", "--config", config)
        assert again.returncode == 0 and "up to date" in again.stdout
        assert popbox("db", "status", "--config", config).returncode == 0
        assert popbox("check-config", "--config", config).returncode == 0
        assert dsn not in first.stdout + first.stderr
    dead = pg_config(MailEnv(tmp_path), f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    failed = popbox("db", "upgrade", "--config", str(dead))
    assert failed.returncode == 1 and "database" in failed.stderr
    unreachable = popbox("check-config", "--config", str(dead))
    assert unreachable.returncode == 2 and "cannot use the database" in unreachable.stderr
