"""The postgres passdb/userdb (popbox.auth.postgres) and `popbox user … --config`."""

from __future__ import annotations

import io
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from helpers import MailEnv
from pg import add_user, fetch, free_port, fresh_database_async, migrate, pg_config, run
from popbox.auth import schemes
from popbox.auth.base import CREDENTIAL_SCHEMES, Secret, UserInfo, Verdict
from popbox.auth.postgres import PostgresUsers
from popbox.cli.main import main
from popbox.pg.pool import Database

pytest_plugins = ["pg"]


@pytest.fixture
async def users(pg_dsn: str) -> AsyncIterator[PostgresUsers]:
    db = Database(pg_dsn, max_size=2)
    yield PostgresUsers(db, "{user}")
    await db.close()


def name() -> str:
    return f"u{uuid.uuid4().hex[:12]}@example.org"


async def test_verify(users: PostgresUsers, pg_dsn: str) -> None:
    alice = name()
    await add_user(pg_dsn, alice, schemes.make(b"right", "SHA256-CRYPT"))
    assert await users.verify(alice, Secret(b"right")) is Verdict.OK
    assert await users.verify(alice.upper().replace("EXAMPLE.ORG", "Example.ORG").lower(),
                              Secret(b"right")) is Verdict.OK
    assert await users.verify(alice, Secret(b"wrong")) is Verdict.REJECTED
    assert await users.verify(name(), Secret(b"right")) is Verdict.REJECTED
    assert await users.verify("../etc", Secret(b"right")) is Verdict.REJECTED


async def test_unknown_user_costs_a_verification(users: PostgresUsers, pg_dsn: str) -> None:
    """An unknown user and a wrong password take about as long (one Argon2id each)."""
    alice = name()
    await add_user(pg_dsn, alice, schemes.make(b"right", "ARGON2ID"))
    timings = {}
    for who in (alice, name()):
        started = time.perf_counter()
        assert await users.verify(who, Secret(b"wrong")) is Verdict.REJECTED
        timings[who] = time.perf_counter() - started
    wrong, unknown = timings.values()
    assert unknown > wrong / 3 and wrong > unknown / 3, timings


async def test_disabled_user_and_domain(users: PostgresUsers, pg_dsn: str) -> None:
    alice, bob = name(), f"bob@{uuid.uuid4().hex[:8]}.example"
    await add_user(pg_dsn, alice, enabled=False)
    domain = bob.partition("@")[2]
    (row,) = await fetch(pg_dsn, "INSERT INTO domains (name, enabled) VALUES ($1, false) "
                         "RETURNING id", domain)
    await add_user(pg_dsn, bob, domain_id=row["id"])
    await add_user(pg_dsn, carol := name())
    for who in (alice, bob):
        # The password is still checked: only a client that proves it hears "disabled".
        assert await users.verify(who, Secret(b"secret")) is Verdict.OK
        assert await users.verify(who, Secret(b"wrong")) is Verdict.REJECTED
        assert await users.credentials(who, "PLAIN") == Secret(b"secret")
        assert await users.plaintext(who) == Secret(b"secret")
        info = await users.lookup(who)
        assert isinstance(info, UserInfo) and info.disabled  # mail is still accepted
    info = await users.lookup(carol)
    assert isinstance(info, UserInfo) and not info.disabled


async def test_lookup(users: PostgresUsers, pg_dsn: str) -> None:
    alice, bob = name(), name()
    await add_user(pg_dsn, alice, login_delay=300, expire_days=30, home="/home/a")
    await add_user(pg_dsn, bob, mail="shared-box")
    info = await users.lookup(alice)
    assert info == UserInfo(alice, alice, None, None,
                            {"home": "/home/a", "login_delay": "300", "expire_days": "30"})
    bob_info = await users.lookup(bob)
    assert isinstance(bob_info, UserInfo) and bob_info.mail_location == "shared-box"
    assert await users.lookup(name()) is None


async def test_credentials(pg_dsn: str) -> None:
    db = Database(pg_dsn, max_size=2)
    try:
        plain, scram = name(), name()
        await add_user(pg_dsn, plain, "{PLAIN}pw")
        stored = schemes.make(b"pw", "SCRAM-SHA-256")
        await add_user(pg_dsn, scram, stored)
        users = PostgresUsers(db, "{user}")
        assert await users.credentials(plain, "PLAIN") == Secret(b"pw")
        assert await users.plaintext(plain) == Secret(b"pw")
        assert await users.credentials(plain, "SCRAM-SHA-256") is None
        assert await users.credentials(scram, "SCRAM-SHA-256") == Secret(
            stored.split("}", 1)[1].encode())
        assert await users.credentials(name(), "PLAIN") is None
        deriving = PostgresUsers(db, "{user}", derive=True, secret=b"k" * 32)
        first = await deriving.credentials(plain, "SCRAM-SHA-256")
        assert isinstance(first, Secret)
        assert await deriving.credentials(plain, "SCRAM-SHA-256") == first  # stable salt
        cram = await deriving.credentials(plain, "CRAM-MD5")
        assert isinstance(cram, Secret) and len(cram.value) == 64
    finally:
        await db.close()


async def test_schemes_every_user_can_serve(pg_server: str) -> None:
    async with fresh_database_async(pg_server) as dsn:
        await migrate(dsn)
        db = Database(dsn, max_size=2)
        try:
            assert await PostgresUsers(db, "{user}").schemes() == CREDENTIAL_SCHEMES
            await add_user(dsn, name(), "{PLAIN}pw")
            await add_user(dsn, name(), schemes.make(b"pw", "SCRAM-SHA-256"))
            await add_user(dsn, name(), "{SHA512-CRYPT}x", enabled=False)  # not counted
            assert await PostgresUsers(db, "{user}").schemes() == frozenset()
            deriving = PostgresUsers(db, "{user}", derive=True)
            assert await deriving.schemes() == frozenset({"SCRAM-SHA-256"})
        finally:
            await db.close()


async def test_database_down_is_temporary() -> None:
    db = Database(f"postgresql://postgres@127.0.0.1:{free_port()}/none", connect_timeout=2)
    users = PostgresUsers(db, "{user}")
    assert await users.verify("alice", Secret(b"x")) is Verdict.TEMPORARY
    assert await users.lookup("alice") is Verdict.TEMPORARY
    assert await users.credentials("alice", "PLAIN") is Verdict.TEMPORARY
    assert await users.plaintext("alice") is Verdict.TEMPORARY
    assert await users.schemes() == frozenset()


def test_user_cli_against_the_database(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = pg_config(MailEnv(tmp_path), pg_dsn)
    carol = name()

    def give(text: str) -> None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(text))

    give("first\n")
    assert main(["user", "add", carol, "--config", str(config), "--password-stdin",
                 "--scheme", "SSHA512", "--mail", "carols-box"]) == 0
    give("again\n")
    assert main(["user", "add", carol, "--config", str(config), "--password-stdin"]) == 1
    give("second\n")
    assert main(["user", "passwd", carol, "--config", str(config), "--password-stdin"]) == 0
    (row,) = run(fetch(pg_dsn, "SELECT u.password, u.mail, d.name AS domain FROM users u "
                       "JOIN domains d ON d.id = u.domain_id WHERE u.name = $1", carol))
    assert schemes.verify(row["password"], b"second")
    assert (row["mail"], row["domain"]) == ("carols-box", "example.org")
    capsys.readouterr()
    assert main(["user", "list", "--config", str(config)]) == 0
    assert carol in capsys.readouterr().out.split()
    assert main(["user", "del", carol, "--config", str(config)]) == 0
    assert main(["user", "del", carol, "--config", str(config)]) == 1
    assert main(["user", "list", "--config", str(config), "--file", "x"]) == 2


def test_user_cli_config_with_a_users_file(
    env: MailEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--config with auth.backend = "passwd-file" edits that configuration's file."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    config = env.config_file()
    assert main(["user", "add", "dave", "--config", str(config), "--password-stdin"]) == 0
    assert "dave:" in env.users.read_text()
