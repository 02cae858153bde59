"""Accounts that may not use POP3: the passwd-file extra field `nopop3` and PostgreSQL's
`users.enabled` / `domains.enabled`. Only a client that proves the password hears why
(`-ERR [AUTH]`, RFC 3206 §4: a problem with the credentials, here the account's policy);
a wrong password gets the ordinary failure. No penalty, but the attempt counts toward
`limits.max_auth_failures`. Real sockets, a real users file, real PostgreSQL."""

from __future__ import annotations

import base64
import uuid

from prometheus_client import generate_latest

from helpers import Client, MailEnv, ServerProcess, running_server
from pg import add_user, fetch, pg_config

pytest_plugins = ["pg"]

DISABLED = b"-ERR [AUTH] POP3 access is disabled for this account."
FAILED = b"-ERR [AUTH] Authentication failed."


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


async def test_nopop3_user_is_told_after_the_right_password(env: MailEnv) -> None:
    with env.users.open("a") as f:
        f.write("bob:{PLAIN}bob-pw::::::nopop3 userdb_login_delay=0\n")
    env.add_user("carol", "carol-pw")
    config = env.config(limits={"penalty_exempt": [], "max_auth_failures": 3},
                        metrics={"listen": "127.0.0.1:0"})
    async with running_server(config) as (port, ctx):
        client = await Client.connect(port)
        assert await client.login("bob", "wrong") == FAILED  # penalised, as ever
        assert await client.cmd("USER bob") == b"+OK"
        assert await client.cmd("PASS bob-pw") == DISABLED
        assert await client.cmd(f"AUTH PLAIN {plain('bob', 'bob-pw')}") == DISABLED
        assert await client.reader.read() == b""  # the third failure closes the connection
        await client.close()

        german = await Client.connect(port)
        await german.line()
        assert await german.cmd("UTF8") == b"+OK UTF8 enabled"
        assert (await german.cmd("LANG de")).startswith(b"+OK")
        assert await german.cmd("USER bob") == b"+OK"
        assert await german.cmd("PASS bob-pw") == (
            "-ERR [AUTH] Der POP3-Zugang ist für dieses Konto gesperrt.".encode())
        await german.close()

        other = await Client.connect(port)
        assert (await other.login("carol", "carol-pw")).startswith(b"+OK")
        assert (await other.cmd("QUIT")).startswith(b"+OK")
        await other.close()
        metrics = ctx.observe.metrics
        assert metrics is not None
    text = generate_latest(metrics.registry).decode()
    assert 'popbox_logins_total{mechanism="USER",result="disabled"} 2.0' in text
    assert 'popbox_logins_total{mechanism="PLAIN",result="disabled"} 1.0' in text
    # One penalty: the wrong password's; the disabled answers cost none.
    assert "popbox_login_penalty_seconds_count 1.0" in text


async def test_disabled_postgres_user_and_domain(env: MailEnv, pg_dsn: str) -> None:
    tag = uuid.uuid4().hex[:8]
    ok, off, in_off_domain = f"ok-{tag}@example.org", f"off-{tag}@example.org", f"x@{tag}.example"
    await add_user(pg_dsn, ok)
    await add_user(pg_dsn, off, enabled=False)
    (row,) = await fetch(pg_dsn, "INSERT INTO domains (name, enabled) VALUES ($1, false) "
                         "RETURNING id", f"{tag}.example")
    await add_user(pg_dsn, in_off_domain, domain_id=row["id"])
    server = ServerProcess(pg_config(env, pg_dsn))
    try:
        for user in (off, in_off_domain):
            client = await Client.connect(server.port)
            assert await client.login(user, "wrong") == FAILED
            assert await client.cmd(f"USER {user}") == b"+OK"
            assert await client.cmd("PASS secret") == DISABLED
            assert await client.cmd(f"AUTH PLAIN {plain(user, 'secret')}") == DISABLED
            await client.close()
        client = await Client.connect(server.port)
        assert (await client.login(ok, "secret")).startswith(b"+OK")
        assert (await client.cmd("QUIT")).startswith(b"+OK")
        await client.close()
    finally:
        log = server.stop()
    assert f"login failed user={off} mech=USER ip=127.0.0.1 reason=disabled" in log
    assert f"login failed user={in_off_domain} mech=PLAIN ip=127.0.0.1 reason=disabled" in log
