"""Last login records (`server.last_login`) and `popbox last USER`: written by the server
after a real POP3 login (RFC 1939 §7: USER/PASS) on two workers, kept beside the mail
(a Maildir's `popbox-last-login`, an mbox spool's index folder, PostgreSQL's mailboxes
row), read back by the command."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from helpers import Client, MailEnv, ServerProcess
from pg import add_user, fetch, pg_config
from popbox.store.last_login import RECORD_NAME, LastLogin
from popbox.store.mbox import MboxStore

pytest_plugins = ["pg"]


def last(config: Path, user: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "popbox", "last", user, "--config",
                           str(config), *flags], capture_output=True, text=True, timeout=60,
                          check=False)


def last_until_recorded(config: Path, user: str) -> dict[str, object]:
    """`popbox last --json` until it shows a record: the server writes it after the
    login's answer, without the session waiting."""
    deadline = time.monotonic() + 10
    while True:
        result = last(config, user, "--json")
        assert result.returncode == 0, result.stderr
        found: dict[str, object] = json.loads(result.stdout)
        if found["last_login"] is not None or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


async def pop_session(port: int, user: str) -> None:
    client = await Client.connect(port)
    assert (await client.login(user)).startswith(b"+OK")
    assert (await client.cmd("QUIT")).startswith(b"+OK")
    await client.close()


async def test_maildir_record_and_popbox_last(env: MailEnv) -> None:
    config = env.config_file(server={"workers": 2, "last_login": True})
    result = last(config, "alice")
    assert (result.returncode, result.stdout) == (0, "alice: never\n"), result.stderr
    unknown = last(config, "nobody-here")
    assert unknown.returncode == 1 and "no such user" in unknown.stderr

    before = time.time()
    server = ServerProcess(config)
    try:
        await pop_session(server.port, "alice")
        found = last_until_recorded(config, "alice")
    finally:
        server.stop()
    record = found["last_login"]
    assert isinstance(record, dict) and record["address"] == "127.0.0.1"
    assert int(before) <= float(record["time"]) <= time.time()
    path = env.maildir("alice") / RECORD_NAME
    info = path.lstat()
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert path.read_text() == f"{int(float(record['time']))} 127.0.0.1\n"
    assert not [p for p in env.maildir("alice").iterdir() if p.name.endswith(".tmp")]
    text = last(config, "alice")
    assert text.returncode == 0 and text.stdout.startswith("alice: 20")
    assert text.stdout.rstrip().endswith(" UTC from 127.0.0.1")


async def test_off_unless_configured(env: MailEnv) -> None:
    config = env.config_file()
    server = ServerProcess(config)
    try:
        await pop_session(server.port, "alice")
    finally:
        log = server.stop()
    assert "logout user=alice" in log
    assert not (env.maildir("alice") / RECORD_NAME).exists()
    result = last(config, "alice")
    assert result.stdout == "alice: never\n" and "server.last_login is off" in result.stderr


def test_a_record_that_is_a_symlink_is_not_read(env: MailEnv, tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere"
    secret.write_text("1700000000 203.0.113.7\n")
    (env.maildir("alice") / RECORD_NAME).symlink_to(secret)
    result = last(env.config_file(server={"last_login": True}), "alice")
    assert result.returncode == 1 and "cannot be read" in result.stderr
    assert "203.0.113.7" not in result.stdout


async def test_mbox_record_beside_the_index(tmp_path: Path) -> None:
    spool = tmp_path / "spool" / "carol"
    spool.parent.mkdir()
    spool.write_bytes(b"")
    store = MboxStore()
    assert await store.last_login(str(spool)) is None
    assert await store.record_login(str(spool), LastLogin(1_700_000_000, "192.0.2.8")) is None
    assert await store.last_login(str(spool)) == LastLogin(1_700_000_000, "192.0.2.8")
    assert (tmp_path / "spool" / ".popbox" / "carol.last-login").read_text() == (
        "1700000000 192.0.2.8\n")
    assert spool.read_bytes() == b""  # the spool itself is untouched


async def test_postgres_column(env: MailEnv, pg_dsn: str) -> None:
    user = f"u{uuid.uuid4().hex[:8]}@example.org"
    await add_user(pg_dsn, user)
    config = pg_config(env, pg_dsn, server={"workers": 2, "last_login": True})
    assert last(config, user).stdout == f"{user}: never\n"
    before = time.time()
    server = ServerProcess(config)
    try:
        await pop_session(server.port, user)
        found = last_until_recorded(config, user)
    finally:
        server.stop()
    record = found["last_login"]
    assert isinstance(record, dict) and record["address"] == "127.0.0.1"
    (row,) = await fetch(pg_dsn, "SELECT extract(epoch FROM last_login) AS at, last_login_ip "
                         "FROM mailboxes WHERE name = $1", user)
    assert row["last_login_ip"] == "127.0.0.1"
    assert before - 1 <= float(row["at"]) <= time.time()
    assert float(record["time"]) == pytest.approx(float(row["at"]))

