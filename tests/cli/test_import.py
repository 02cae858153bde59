"""`popbox import`: Maildirs into the postgres store with the UIDLs popbox's Maildir store
serves, idempotent and resumable."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from helpers import MailEnv
from pg import fetch, message_of, pg_config
from popbox.proto.wire import wire_size
from popbox.store.lock import FileLock
from popbox.store.maildir import LOCK_NAME, MaildirDrop, MaildirStore

pytest_plugins = ["pg"]


def env_at(root: Path) -> MailEnv:
    root.mkdir(parents=True, exist_ok=True)
    return MailEnv(root)


def popbox_import(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "popbox", "import", "--config", str(config), *argv],
        capture_output=True, text=True, timeout=120)


async def maildir_listing(path: Path, uidl_import: str | None = None) -> list[tuple[str, int]]:
    store = MaildirStore(uidl_import=uidl_import)  # type: ignore[arg-type]
    drop = await store.open(str(path))
    assert isinstance(drop, MaildirDrop)
    try:
        return [(m.uidl, m.size) for m in drop.messages]
    finally:
        await drop.release()


async def pg_listing(dsn: str, mailbox: str) -> list[tuple[str, int, bytes, bool]]:
    rows = await fetch(dsn, "SELECT m.uidl, m.size, m.body, m.wire, m.body_from_wire, m.seen "
                       "FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id "
                       "WHERE b.name = $1 "
                       "ORDER BY m.id", mailbox)
    return [(r["uidl"], r["size"], message_of(r), r["seen"]) for r in rows]


@pytest.fixture
def old(tmp_path: Path) -> tuple[MailEnv, list[str]]:
    """An old server's users file and Maildirs: two users, flags, a dovecot-uidlist."""
    env = env_at(tmp_path / "old")
    tag = uuid.uuid4().hex[:6]
    users = [f"ann{tag}@example.org", f"ben{tag}@example.org"]
    for user in users:
        env.add_user(user)
    env.put(users[0], b"Subject: 1\n\none\n")
    env.put(users[0], b"Subject: 2\n\n.two\n", folder="cur", suffix=":2,S")
    env.put(users[0], b"Subject: 3\n\nthree", folder="cur", suffix=":2,")
    env.put(users[1], b"Subject: b\n\nben's\n")
    return env, users


async def test_import_keeps_uidls_order_and_flags(
    old: tuple[MailEnv, list[str]], pg_dsn: str, tmp_path: Path
) -> None:
    env, users = old
    config = pg_config(env_at(tmp_path / "new"), pg_dsn)
    template = str(env.root / "mail/{user}/Maildir")
    done = popbox_import(config, "--passwd-file", str(env.users), "--mail-location", template)
    assert done.returncode == 0, done.stderr
    assert "4 messages imported" in done.stdout
    for user in users:
        expected = await maildir_listing(env.maildir(user))
        imported = await pg_listing(pg_dsn, user)
        assert [(u, s) for u, s, _, _ in imported] == expected
        assert [body for _, _, body, _ in imported] == env.messages(user)
        assert all(size == wire_size(body) for _, size, body, _ in imported)
    assert [seen for *_, seen in await pg_listing(pg_dsn, users[0])] == [False, True, False]

    again = popbox_import(config, "--passwd-file", str(env.users), "--mail-location", template)
    assert again.returncode == 0, again.stderr
    assert "0 messages imported, 4 already there" in again.stdout
    assert len(await pg_listing(pg_dsn, users[0])) == 3


async def test_import_resumes_without_duplicates(
    old: tuple[MailEnv, list[str]], pg_dsn: str, tmp_path: Path
) -> None:
    env, users = old
    user = users[0]
    config = pg_config(env_at(tmp_path / "new"), pg_dsn)
    args = ("--maildir", str(env.maildir(user)), "--user", user)
    assert popbox_import(config, *args).returncode == 0
    first = await pg_listing(pg_dsn, user)
    # as if the first run had stopped after one message
    await fetch(pg_dsn, "DELETE FROM messages WHERE uidl = ANY($1::text[])",
                [first[1][0], first[2][0]])
    resumed = popbox_import(config, *args)
    assert "2 messages imported, 1 already there" in resumed.stdout, resumed.stdout
    assert sorted(await pg_listing(pg_dsn, user)) == sorted(first)


async def test_busy_maildir_is_left_for_the_next_run(
    old: tuple[MailEnv, list[str]], pg_dsn: str, tmp_path: Path
) -> None:
    env, users = old
    config = pg_config(env_at(tmp_path / "new"), pg_dsn)
    template = str(env.root / "mail/{user}/Maildir")
    lock = FileLock.try_acquire(str(env.maildir(users[1]) / LOCK_NAME))
    assert lock is not None
    try:
        busy = popbox_import(config, "--passwd-file", str(env.users), "--mail-location",
                             template)
    finally:
        lock.release()
    assert busy.returncode == 1 and "in use" in busy.stderr
    assert len(await pg_listing(pg_dsn, users[0])) == 3
    assert await pg_listing(pg_dsn, users[1]) == []
    assert popbox_import(config, "--passwd-file", str(env.users), "--mail-location",
                         template).returncode == 0
    assert len(await pg_listing(pg_dsn, users[1])) == 1


async def test_dovecot_uidls_are_carried_over(pg_dsn: str, tmp_path: Path) -> None:
    env = env_at(tmp_path / "old")
    user = f"cat{uuid.uuid4().hex[:6]}"
    env.add_user(user)
    path = env.put(user, b"Subject: d\n\ndovecot\n", folder="cur", suffix=":2,S")
    base = path.name.split(":")[0]
    (env.maildir(user) / "dovecot-uidlist").write_text(
        f"3 V1 N9\n7 W99 Pfrom-dovecot :{base}\n")
    config = pg_config(env_at(tmp_path / "new"), pg_dsn)
    done = popbox_import(config, "--maildir", str(env.maildir(user)), "--user", user,
                         "--uidl-import", "dovecot")
    assert done.returncode == 0, done.stderr
    assert [(u, s) for u, s, _, _ in await pg_listing(pg_dsn, user)] == await maildir_listing(
        env.maildir(user), "dovecot")
    assert (await pg_listing(pg_dsn, user))[0][0] == "from-dovecot"


def test_import_needs_the_postgres_store(env: MailEnv) -> None:
    done = popbox_import(env.config_file())
    assert done.returncode == 2 and "postgres" in done.stderr
