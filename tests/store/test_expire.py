"""Retention (RFC 2449 §6.7 EXPIRE): CAPA per user, and `popbox expire` with an injected
clock deleting exactly the messages retrieved more than n days ago, on a real Maildir
and a real PostgreSQL store, through real sessions."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

from helpers import MailEnv, crlf
from memory_transport import MemoryTransport, memory_session
from pg import add_user, fetch, message_of, pg_config
from popbox.backends import build
from popbox.cli import expire as expire_cli
from popbox.config import Config, load
from popbox.server.context import Backends, ServerContext
from popbox.store import maildir_times
from popbox.store.base import MailStore
from popbox.store.expire import DAY, Policy, Times, expired
from popbox.store.maildir import MaildirStore
from popbox.store.postgres import PostgresStore
from popbox.store.routing import default_store

pytest_plugins = ["pg"]

MESSAGES = [b"Subject: %s\n\nbody\n" % name for name in (b"A", b"B", b"C", b"D")]


class Clock:
    """Wall time that the test moves."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, days: float) -> None:
        self.now += days * DAY


def backends_with(config: Config, store: MailStore) -> Backends:
    return dataclasses.replace(build(config), store=store)


async def login(client: MemoryTransport, user: bytes = b"alice") -> bytes:
    client.send(b"USER " + user)
    assert await client.reply() == b"+OK\r\n"
    client.send(b"PASS secret")
    return await client.reply()


async def session(backends: Backends, config: Config, *commands: bytes, quit: bool = True,
                  user: bytes = b"alice") -> list[bytes]:
    """Log in, run `commands` (multi-line answers read whole), QUIT if `quit`."""
    answers = []
    async with memory_session(ServerContext.create(config, backends)) as client:
        assert (await login(client, user)).startswith(b"+OK Logged in.")
        for command in commands:
            client.send(command)
            answers.append(await client.reply(multi=command.startswith((b"RETR", b"TOP", b"CAPA"))))
        if quit:
            client.send(b"QUIT")
            assert (await client.reply()).startswith(b"+OK")
    return answers


def subjects(env: MailEnv, user: str = "alice") -> list[bytes]:
    return [m.split(b"\n")[0] for m in env.messages(user)]


def test_policy_counts_from_first_retrieval() -> None:
    """RFC 2449 §6.7: the retention runs from retrieval; unretrieved mail is kept unless
    the operator says otherwise (then it runs from delivery); NEVER keeps everything."""
    now = 100 * DAY
    times = [Times(0, 60 * DAY), Times(0, 80 * DAY), Times(0, None), Times(90 * DAY, None)]
    assert expired(times, now, Policy(30)) == {0}
    assert expired(times, now, Policy(20)) == {0, 1}
    assert expired(times, now, Policy(20, unretrieved=True)) == {0, 1, 2}
    assert expired(times, now, Policy(0, unretrieved=True)) == {0, 1, 2, 3}
    assert expired(times, now, Policy(None, unretrieved=True)) == set()


async def test_maildir_expire_deletes_exactly_the_old_retrieved(env: MailEnv) -> None:
    """Sessions at day 0 and day 20 retrieve A and B; a RETR without QUIT (D) and a TOP
    are not retrievals (RFC 1939 §6: nothing is committed without QUIT). The pass at day
    31 with 30 days deletes A only; at day 51, B too; C and D stay until
    expire_unretrieved. A dry run deletes nothing."""
    env.add_user("alice")
    for message in MESSAGES:
        env.put("alice", message)
    clock = Clock()
    config = env.config(store={"expire_days": 30})
    backends = backends_with(config, MaildirStore(clock=clock))
    await session(backends, config, b"RETR 1", b"TOP 3 0")
    await session(backends, config, b"RETR 4", quit=False)
    clock.advance(20)
    await session(backends, config, b"RETR 2")
    clock.advance(11)

    said: list[str] = []
    status = await expire_cli.run(config, now=clock.now, dry_run=True, backends=backends,
                                  say=said.append)
    assert status == 0 and "alice: would expire 1 of 4 messages" in said
    assert len(env.messages("alice")) == 4

    assert await expire_cli.run(config, now=clock.now, backends=backends, say=said.append) == 0
    assert subjects(env) == [b"Subject: B", b"Subject: C", b"Subject: D"]
    clock.advance(20)
    assert await expire_cli.run(config, now=clock.now, backends=backends, say=said.append) == 0
    assert subjects(env) == [b"Subject: C", b"Subject: D"]
    # The record holds only messages still there.
    assert set(maildir_times.read(str(env.maildir("alice")))) == set()

    eager = env.config(store={"expire_days": 30, "expire_unretrieved": True})
    assert await expire_cli.run(eager, now=clock.now, backends=backends, say=said.append) == 0
    assert env.messages("alice") == []


async def test_maildir_expire_per_user_and_in_use(env: MailEnv) -> None:
    """A user's own `userdb_expire_days` wins over the global NEVER; a maildrop held by a
    session is skipped (exit status 1) and expired by the next pass."""
    env.users.write_text("alice:{PLAIN}secret::::::\n"
                         "bob:{PLAIN}secret::::::userdb_expire_days=5\n")
    for user in ("alice", "bob"):
        for sub in ("cur", "new", "tmp"):
            (env.maildir(user) / sub).mkdir(parents=True, exist_ok=True)
        env.put(user, MESSAGES[0])
    clock = Clock()
    config = env.config()
    backends = backends_with(config, MaildirStore(clock=clock))
    for user in (b"alice", b"bob"):
        await session(backends, config, b"RETR 1", user=user)
    clock.advance(6)
    held = await backends.store.open(str(env.maildir("bob")))
    said: list[str] = []
    assert await expire_cli.run(config, now=clock.now, backends=backends, say=said.append) == 1
    assert "bob: maildrop in use, left for the next pass" in said
    await held.release()  # type: ignore[union-attr]
    assert await expire_cli.run(config, now=clock.now, backends=backends, say=said.append) == 0
    assert env.messages("bob") == [] and len(env.messages("alice")) == 1


async def test_seen_flag_without_record_counts_from_ctime(env: MailEnv) -> None:
    """Mail marked seen by another server (Dovecot's S flag) before popbox kept times
    counts as retrieved when its file last changed: never earlier, so never too soon. A
    torn last line of the record (a crash mid-append) is ignored."""
    env.add_user("alice")
    env.put("alice", MESSAGES[0], folder="cur", suffix=":2,S")
    env.put("alice", MESSAGES[1], folder="cur", suffix=":2,")
    root = env.maildir("alice")
    (root / maildir_times.RETRIEVED).write_bytes(b"garbage\nhalf-a-line 12")
    config = env.config(store={"expire_days": 1})
    store = MaildirStore()
    backends = backends_with(config, store)
    said: list[str] = []
    now = time.time()
    assert await expire_cli.run(config, now=now, backends=backends, say=said.append) == 0
    assert len(env.messages("alice")) == 2  # changed just now: kept
    assert await expire_cli.run(config, now=now + 2 * DAY, backends=backends,
                                say=said.append) == 0
    assert env.messages("alice") == [MESSAGES[1]]


async def capa(backends: Backends, config: Config, user: bytes | None) -> list[bytes]:
    async with memory_session(ServerContext.create(config, backends)) as client:
        if user is not None:
            assert (await login(client, user)).startswith(b"+OK")
        client.send(b"CAPA")
        reply = await client.reply(multi=True)
    return [line for line in reply.split(b"\r\n") if line.startswith(b"EXPIRE")]


async def test_expire_capability_per_user(env: MailEnv) -> None:
    """RFC 2449 §6.7: EXPIRE n after login is the user's own; before login the server's,
    tagged USER when some user has their own; NEVER without a policy."""
    env.add_user("alice")
    config = env.config()
    assert await capa(build(config), config, None) == [b"EXPIRE NEVER"]
    assert await capa(build(config), config, b"alice") == [b"EXPIRE NEVER"]
    config = env.config(store={"expire_days": 30})
    assert await capa(build(config), config, None) == [b"EXPIRE 30"]
    env.users.write_text("alice:{PLAIN}secret::::::\n"
                         "bob:{PLAIN}secret::::::userdb_expire_days=5\n")
    env.add_user("bob")
    assert await capa(build(config), config, None) == [b"EXPIRE 30 USER"]
    assert await capa(build(config), config, b"alice") == [b"EXPIRE 30"]
    assert await capa(build(config), config, b"bob") == [b"EXPIRE 5"]
    # RFC 2449 §6.8 likewise: a LOGIN-DELAY some user has their own of is tagged USER.
    env.users.write_text("alice:{PLAIN}secret::::::userdb_login_delay=5\n")
    delayed = env.config(limits={"login_delay": 60})
    async with memory_session(ServerContext.create(delayed, build(delayed))) as client:
        client.send(b"CAPA")
        assert b"\r\nLOGIN-DELAY 60 USER\r\n" in await client.reply(multi=True)


async def test_postgres_expire_with_retrieved_at(env: MailEnv, pg_dsn: str) -> None:
    """The PostgreSQL store records the first retrieval in `retrieved_at` at QUIT (the
    store's clock); the per-user `expire_days` column is the policy; the pass deletes the
    old retrieved row only."""
    name = f"carol{os.getpid()}@example.org"
    await add_user(pg_dsn, name, expire_days=10)
    config = load(pg_config(env, pg_dsn))
    clock = Clock()
    store = PostgresStore(default_store(build(config).store).db, clock=clock)  # type: ignore[attr-defined]
    backends = backends_with(config, store)
    try:
        for message in MESSAGES[:3]:
            assert await store.deliver(name, message) is None
        answers = await session(backends, config, b"RETR 1", b"CAPA", user=name.encode())
        assert answers[0].endswith(crlf(MESSAGES[0]) + b".\r\n")
        assert b"\r\nEXPIRE 10\r\n" in answers[1]
        clock.advance(5)
        await session(backends, config, b"RETR 2", user=name.encode())
        clock.advance(6)
        said: list[str] = []
        assert await expire_cli.run(config, now=clock.now, backends=backends,
                                    say=said.append) == 0
        rows = await fetch(pg_dsn, "SELECT m.body, m.wire, m.body_from_wire, "
                           "m.retrieved_at IS NOT NULL AS r "
                           "FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id "
                           "WHERE b.name = $1 ORDER BY m.id", name)
        assert [(message_of(r), r["r"]) for r in rows] == [(MESSAGES[1], True),
                                                           (MESSAGES[2], False)]
    finally:
        await store.aclose()
        await backends.userdb.db.close()  # type: ignore[attr-defined]


def test_cli_dry_run(env: MailEnv) -> None:
    """`popbox expire --config X --dry-run` as a timer runs it: one line, status 0."""
    env.add_user("alice")
    env.put("alice", MESSAGES[0])
    path = env.config_file(store={"expire_days": 30})
    done = subprocess.run(
        [sys.executable, "-m", "popbox", "expire", "--config", str(path), "--dry-run"],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "1 maildrops with a retention policy: would expire 0 messages" in done.stdout
    assert len(env.messages("alice")) == 1
