"""Password guessing (bounded in count and time, 127.0.0.1/127.0.0.2 only): failures are
answered ever more slowly per address and per user, a connection gets three tries, the
legitimate user is not slowed down, and an unknown user looks exactly like a wrong
password."""

from __future__ import annotations

import asyncio
import statistics
import time

from helpers import Client, MailEnv, running_server
from popbox.auth import schemes

ATTACKER = "127.0.0.2"


async def connect_from(port: int, source: str) -> Client:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(source, 0), limit=2**20
    )
    return Client(reader, writer)


async def test_three_failures_close_the_connection(env: MailEnv) -> None:
    async with running_server(env.config()) as (port, _):
        client = await Client.connect(port)
        await client.line()
        for _ in range(3):
            await client.cmd("USER alice")
            assert await client.cmd("PASS wrong") == b"-ERR [AUTH] Authentication failed."
        assert await client.reader.read() == b""
        await client.close()


async def test_flood_from_one_address_while_the_user_logs_in(env: MailEnv) -> None:
    """2,000 guesses are attempted from 127.0.0.2 over 50 connections for at most 8 s;
    meanwhile alice logs in from 127.0.0.1 again and again. The guesses are slowed to the
    penalty rate; alice never waits for the penalty."""
    env.put("alice", b"Subject: hi\n\nhello\n")
    config = env.config(limits={
        "penalty_exempt": [], "penalty_initial": 0.5, "penalty_cap": 2.0,
        "max_connections_per_ip": 50,
    })
    budget, wanted = 8.0, 2000
    attempts = 0
    async with running_server(config) as (port, _):
        deadline = time.monotonic() + budget

        async def attacker() -> None:
            nonlocal attempts
            while time.monotonic() < deadline and attempts < wanted:
                try:
                    client = await connect_from(port, ATTACKER)
                except OSError:
                    continue
                try:  # guess until the server hangs up, then connect again
                    assert (await client.line()).startswith(b"+OK")
                    while time.monotonic() < deadline and attempts < wanted:
                        await client.cmd("USER alice")
                        attempts += 1
                        reply = await client.cmd("PASS guess")
                        assert reply == b"-ERR [AUTH] Authentication failed."
                except (ConnectionError, AssertionError, TimeoutError):
                    pass
                finally:
                    await client.close()

        async def user() -> list[float]:
            latencies = []
            while time.monotonic() < deadline:
                start = time.monotonic()
                client = await Client.connect(port)
                assert (await client.login()).startswith(b"+OK Logged in")
                assert (await client.cmd("QUIT")).startswith(b"+OK")
                latencies.append(time.monotonic() - start)
                await client.close()
                await asyncio.sleep(0.05)
            return latencies

        tasks = [asyncio.create_task(attacker()) for _ in range(50)]
        latencies = await user()
        await asyncio.wait(tasks, timeout=budget + 5)
        for task in tasks:
            task.cancel()
    p50 = statistics.median(latencies)
    p99 = sorted(latencies)[int(len(latencies) * 0.99) - 1] if len(latencies) > 1 else p50
    print(f"\nflood: {attempts} guesses in {budget:.0f} s ({attempts / budget:.0f}/s); "
          f"user logins: {len(latencies)}, p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    # 50 connections, each failure answered after >= 0.5 s and soon 2 s: far below 2,000.
    assert attempts < 50 * budget / 0.5
    assert len(latencies) >= 5
    assert max(latencies) < config.limits.penalty_cap  # the user never paid a penalty


async def test_unknown_user_and_wrong_password_look_the_same(env: MailEnv) -> None:
    """Same reply, and the same time: an unknown user costs a dummy hash verification."""
    hashed = schemes.make(b"secret", "ARGON2ID")
    env.users.write_text(f"alice:{hashed}::::::\n")
    timings: dict[str, list[float]] = {"alice": [], "nobody": []}
    replies = set()
    async with running_server(env.config()) as (port, _):
        for _ in range(8):
            for user in ("alice", "nobody"):
                client = await Client.connect(port)
                await client.line()
                await client.cmd(f"USER {user}")
                start = time.monotonic()
                replies.add(await client.cmd("PASS wrong"))
                timings[user].append(time.monotonic() - start)
                await client.close()
    assert replies == {b"-ERR [AUTH] Authentication failed."}
    known, unknown = statistics.median(timings["alice"]), statistics.median(timings["nobody"])
    print(f"\nwrong password: {known * 1000:.1f} ms, unknown user: {unknown * 1000:.1f} ms")
    assert 0.5 < unknown / known < 2.0
