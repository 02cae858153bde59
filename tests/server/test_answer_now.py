"""RETRs answered as their bytes arrive, while the session waits for input (no task switch),
over real sockets on 127.0.0.1 with real Maildirs: the same bytes as the session's own
loop gives (RFC 1939 §7), in order with the commands around them, and the idle deadline
moved on by each one (RFC 1939 §3: the autologout timer counts from the last command)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from helpers import Client, MailEnv, crlf, running_server
from popbox.server.io import SessionIO
from popbox.server.session import Session

MESSAGES = [
    b"Subject: one\n\n.dot\nbody\n",
    b"Subject: two\n\nsecond\n",
    b"Subject: three\n\nno final newline",
    b"Subject: big\n\n" + b"line\n" * 20_000,  # over 64 KB: streamed by the session's loop
]


@pytest.fixture
def answered(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """The deadlines `Session._answer_now` gave back: one per burst it answered whole."""
    given: list[float] = []
    real = Session._answer_now

    def counted(self: Session) -> float | None:
        deadline = real(self)
        if deadline is not None:
            given.append(deadline)
        return deadline

    monkeypatch.setattr(Session, "_answer_now", counted)
    yield given


def expected(message: bytes) -> bytes:
    wire = crlf(message)
    return wire if wire.endswith(b"\r\n") else wire + b"\r\n"


async def test_retr_answered_as_it_arrives_is_the_same(env: MailEnv, answered: list[float]) -> None:
    for message in MESSAGES:
        env.put("alice", message)
    async with running_server(env.config()) as (port, _):
        client = await Client.connect(port)
        await client.login()
        bodies = []
        for n in (1, 1, 2, 3, 3, 4, 4):  # each line seen a second time: parsed before
            assert (await client.cmd(f"RETR {n}")).endswith(b" octets")
            bodies.append(await client.body())
        assert bodies == [expected(MESSAGES[n - 1]) for n in (1, 1, 2, 3, 3, 4, 4)]
        assert answered  # (some of them were answered so)
        assert await client.cmd("DELE 2") == b"+OK Message 2 deleted."
        assert await client.cmd("RETR 2") == b"-ERR Message is deleted."
        assert await client.cmd("RETR 2") == b"-ERR Message is deleted."
        client.writer.write(b"RETR 1\r\nNOOP\r\nRETR 3\r\n")  # pipelined, RFC 2449 §6.6
        assert (await client.line()).endswith(b" octets")
        assert await client.body() == expected(MESSAGES[0])
        assert await client.line() == b"+OK"
        assert (await client.line()).endswith(b" octets")
        assert await client.body() == expected(MESSAGES[2])
        assert await client.cmd("QUIT") == b"+OK Logging out, 1 messages deleted."
        await client.close()


async def test_each_answer_moves_the_idle_deadline_on(
    env: MailEnv, answered: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline the transport waits for is the one the last answer gave: later than
    the one the session's loop set when it began to wait."""
    env.put("alice", MESSAGES[0])
    waits: list[tuple[SessionIO, float]] = []
    real_receive = SessionIO.receive

    async def receive(self: SessionIO, deadline: float) -> None:
        waits.append((self, deadline))
        await real_receive(self, deadline)

    monkeypatch.setattr(SessionIO, "receive", receive)
    async with running_server(env.config()) as (port, _):
        client = await Client.connect(port)
        await client.login()
        for _ in range(4):
            assert (await client.cmd("RETR 1")).endswith(b" octets")
            await client.body()
            await asyncio.sleep(0.01)
        assert answered, "no RETR was answered as it arrived"
        io, waited_until = waits[-1]
        assert io._deadline == answered[-1] > waited_until
        assert await client.cmd("QUIT") == b"+OK Logging out, 0 messages deleted."
        await client.close()
