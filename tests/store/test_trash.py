"""Soft delete (`store.deleted = "trash"`): DELE'd messages go to the Maildir `.Trash`
folder or get a PostgreSQL `deleted_at`; `popbox undelete` puts them back with the UIDLs
the client saw (RFC 1939 §7: a UIDL never changes); `popbox expire` purges them after
`trash_days`. Real Maildirs, real PostgreSQL, real sessions, an injected clock."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

import pytest

from helpers import MailEnv
from memory_transport import MemoryTransport, memory_session
from pg import add_user, pg_config
from popbox.backends import build
from popbox.cli import expire as cli
from popbox.config import Config, ConfigError, load
from popbox.server.context import Backends, ServerContext
from popbox.store.expire import DAY
from popbox.store.maildir import MaildirStore
from popbox.store.memory import MemoryStore
from popbox.store.postgres import PostgresStore
from popbox.store.routing import default_store

pytest_plugins = ["pg"]

MESSAGES = [b"Subject: %s\n\nbody\n" % name for name in (b"A", b"B", b"C")]


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, days: float) -> None:
        self.now += days * DAY


async def run(backends: Backends, config: Config, *commands: bytes,
              user: bytes = b"alice") -> list[bytes]:
    """Log in, run `commands` (UIDL's listing read whole), QUIT."""
    answers = []
    async with memory_session(ServerContext.create(config, backends)) as client:
        await login(client, user)
        for command in commands:
            client.send(command)
            answers.append(await client.reply(multi=command == b"UIDL"))
        client.send(b"QUIT")
        assert (await client.reply()).startswith(b"+OK")
    return answers


async def login(client: MemoryTransport, user: bytes) -> None:
    client.send(b"USER " + user)
    assert await client.reply() == b"+OK\r\n"
    client.send(b"PASS secret")
    assert (await client.reply()).startswith(b"+OK Logged in.")


def trash_config(env: MailEnv, **store: object) -> Config:
    return env.config(store={"deleted": "trash", **store})


async def test_maildir_trash_and_undelete_round_trip(env: MailEnv) -> None:
    """DELE 1 and 3 + QUIT: the files move to .Trash/cur, the next session lists only
    message 2; `undelete` puts both back and the client sees the very UIDL listing it
    saw before, in the same order."""
    env.add_user("alice")
    for message in MESSAGES:
        env.put("alice", message)
    config = trash_config(env)
    backends = build(config)
    before, *_ = await run(backends, config, b"UIDL", b"DELE 1", b"DELE 3")
    assert env.messages("alice") == [MESSAGES[1]]
    trash = env.maildir("alice") / ".Trash" / "cur"
    assert sorted(p.read_bytes() for p in trash.iterdir()) == [MESSAGES[0], MESSAGES[2]]
    (between,) = await run(backends, config, b"UIDL")
    assert between.split(b"\r\n")[1].split(b" ")[1] == before.split(b"\r\n")[2].split(b" ")[1]
    said: list[str] = []
    assert await cli.undelete(config, "alice", None, backends=backends, say=said.append) == 0
    assert said == ["alice: 2 messages put back"]
    (after,) = await run(backends, config, b"UIDL")
    assert after == before
    assert list(trash.iterdir()) == []


async def test_maildir_undelete_since_and_purge_after_trash_days(env: MailEnv) -> None:
    """`--since` puts back only what was deleted since then; `popbox expire` purges what
    was deleted `trash_days` ago and keeps the rest, and never touches a message an
    IMAP client put into Trash itself."""
    env.add_user("alice")
    for message in MESSAGES:
        env.put("alice", message)
    imap_trash = env.maildir("alice") / ".Trash" / "cur"
    imap_trash.mkdir(parents=True)
    (imap_trash / "1600000000.M1P1.imap:2,S").write_bytes(b"Subject: mine\n\n")
    clock = Clock()
    config = trash_config(env, trash_days=7)
    backends = dataclasses.replace(build(config), store=MaildirStore(clock=clock,
                                                                     deleted="trash"))
    await run(backends, config, b"DELE 1")  # A, at day 0
    clock.advance(2)
    await run(backends, config, b"DELE 1")  # B (now message 1), at day 2
    clock.advance(1)
    assert env.messages("alice") == [MESSAGES[2]]
    said: list[str] = []
    assert await cli.undelete(config, "alice", clock.now - 2 * DAY, backends=backends,
                              say=said.append) == 0
    assert env.messages("alice") == [MESSAGES[1], MESSAGES[2]]
    await run(backends, config, b"DELE 1")  # B again, at day 3
    clock.advance(5)  # day 8: A was deleted 8 days ago, B 5
    assert await cli.run(config, now=clock.now, backends=backends, say=said.append) == 0
    assert "alice: purged 1 deleted messages from the trash" in said
    assert sorted(p.read_bytes() for p in imap_trash.iterdir()) == [
        MESSAGES[1], b"Subject: mine\n\n"]
    clock.advance(3)
    assert await cli.run(config, now=clock.now, backends=backends, say=said.append) == 0
    assert [p.read_bytes() for p in imap_trash.iterdir()] == [b"Subject: mine\n\n"]
    assert await cli.undelete(config, "alice", None, backends=backends, say=said.append) == 0
    assert env.messages("alice") == [MESSAGES[2]]  # the IMAP client's message stays put


async def test_undelete_waits_for_the_session(env: MailEnv) -> None:
    """The maildrop lock: undelete never changes a maildrop a session has open."""
    env.add_user("alice")
    env.put("alice", MESSAGES[0])
    config = trash_config(env)
    backends = build(config)
    await run(backends, config, b"DELE 1")
    held = await backends.store.open(str(env.maildir("alice")))
    said: list[str] = []
    assert await cli.undelete(config, "alice", None, backends=backends, say=said.append) == 1
    assert said == ["popbox: alice: maildrop in use by a session, try again after it ends"]
    await held.release()  # type: ignore[union-attr]
    assert env.messages("alice") == []


async def test_a_store_without_trash_says_so(env: MailEnv) -> None:
    """A store that keeps no deleted mail answers clearly instead of pretending."""
    env.add_user("alice")
    config = trash_config(env)
    backends = dataclasses.replace(build(config), store=MemoryStore())
    said: list[str] = []
    assert await cli.undelete(config, "alice", None, backends=backends, say=said.append) == 1
    assert said == ["popbox: the maildir store does not keep deleted messages"]
    assert await cli.undelete(config, "nobody", None, backends=backends, say=said.append) == 1


async def test_postgres_trash_and_undelete(env: MailEnv, pg_dsn: str) -> None:
    """PostgreSQL: DELE + QUIT sets deleted_at; the row leaves the listing; undelete
    clears it and the client sees the same UIDLs in the same order; the purge deletes
    rows deleted `trash_days` ago."""
    name = f"dora{os.getpid()}@example.org"
    await add_user(pg_dsn, name)
    config = load(pg_config(env, pg_dsn, store={"deleted": "trash", "trash_days": 7}))
    clock = Clock()
    plain = build(config)
    store = PostgresStore(default_store(plain.store).db, clock=clock, deleted="trash")  # type: ignore[attr-defined]
    backends = dataclasses.replace(plain, store=store)
    try:
        for message in MESSAGES:
            assert await store.deliver(name, message) is None
        user = name.encode()
        before, _ = await run(backends, config, b"UIDL", b"DELE 2", user=user)
        (between,) = await run(backends, config, b"UIDL", user=user)
        assert between.count(b"\r\n") == before.count(b"\r\n") - 1
        said: list[str] = []
        assert await cli.undelete(config, name, None, backends=backends, say=said.append) == 0
        assert said == [f"{name}: 1 messages put back"]
        (after,) = await run(backends, config, b"UIDL", user=user)
        assert after == before
        await run(backends, config, b"DELE 3", user=user)
        clock.advance(8)
        assert await cli.run(config, now=clock.now, backends=backends, say=said.append) == 0
        assert f"{name}: purged 1 deleted messages from the trash" in said
        assert await store.undelete(name, None) == 0  # purged for good
    finally:
        await store.aclose()
        await backends.userdb.db.close()  # type: ignore[attr-defined]


def test_since_parsing_and_cli(env: MailEnv) -> None:
    """`--since` takes ISO 8601 or a span ago; anything else is a usage error (status 2)
    that changes nothing. A bad `store.deleted` is a configuration error."""
    now = 1_000_000.0
    assert cli.parse_since("3d", now) == now - 3 * DAY
    assert cli.parse_since("12h", now) == now - 12 * 3600
    assert cli.parse_since("2026-01-02T03:04:05+00:00", now) == 1767323045.0
    assert cli.parse_since("yesterday", now) is None
    env.add_user("alice")
    path = env.config_file(store={"deleted": "trash"})
    bad = subprocess.run(
        [sys.executable, "-m", "popbox", "undelete", "alice", "--config", str(path),
         "--since", "soon"], capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "--since 'soon'" in bad.stderr
    good = subprocess.run(
        [sys.executable, "-m", "popbox", "undelete", "alice", "--config", str(path),
         "--since", "1d"], capture_output=True, text=True, timeout=60, check=False)
    assert good.returncode == 0 and good.stdout == "alice: 0 messages put back\n"
    with pytest.raises(ConfigError, match=r"store\.deleted"):
        env.config(store={"deleted": "shred"})


async def test_purge_leaves_maildirs_without_trash_alone(env: MailEnv) -> None:
    """A user whose maildir was never made (or never trashed into) is no failure for the
    purge: nothing is created, the pass succeeds."""
    env.users.write_text("alice:{PLAIN}secret::::::\nnew@example.org:{PLAIN}x::::::\n")
    config = trash_config(env)
    said: list[str] = []
    assert await cli.run(config, now=time.time(), backends=build(config), say=said.append) == 0
    assert not env.maildir("new@example.org").exists()
    assert said == ["0 maildrops with a retention policy: expired 0 messages"]
