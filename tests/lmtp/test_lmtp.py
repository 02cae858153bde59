"""LMTP (RFC 2033): the sans-IO core byte for byte, then `popbox lmtp` and `popbox
deliver` with real clients (smtplib.LMTP, swaks) into the postgres and Maildir stores."""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import Client, MailEnv, ServerProcess
from pg import (
    LmtpClient,
    LmtpProcess,
    add_user,
    fetch,
    free_port,
    message_of,
    pg_config,
    stored_messages,
)
from popbox.auth.base import UserInfo, Verdict
from popbox.config import from_dict
from popbox.lmtp.agent import Agent, Outcome
from popbox.lmtp.core import LmtpCore, Message, Output, RcptTo, Reply
from popbox.mailproc import MailAccess
from popbox.store.memory import MemoryStore

pytest_plugins = ["pg"]

# --- the core -----------------------------------------------------------------------------

SESSION = (
    b"LHLO mta.example\r\n"
    b"MAIL FROM:<sender@example.org> SIZE=100 BODY=8BITMIME\r\n"
    b"RCPT TO:<a@example.org>\r\n"
    b"RCPT TO:<nobody@example.org>\r\n"
    b"RCPT TO: <b@example.org>\r\n"
    b"DATA\r\n"
    b"Subject: hi\r\n\r\n..dotted\r\n..\r\nline\r\n.\r\n"
    b"QUIT\r\n"
)


def drive(core: LmtpCore, chunks: list[bytes]) -> tuple[bytes, list[Message]]:
    """Feed `chunks` one by one; recipients containing "nobody" are refused, messages get
    one 250 per recipient. Returns everything sent and the messages seen."""
    out = [core.greeting()]
    messages: list[Message] = []
    for chunk in chunks:
        core.feed(chunk)
        while (event := core.next_event()) is not None:
            match event:
                case Output(data):
                    out.append(data)
                case RcptTo(address):
                    ok = "nobody" not in address
                    reply = Reply(250, "2.1.5", "Ok") if ok else Reply(550, "5.1.1", "Unknown")
                    out.append(core.recipient(reply, address.upper() if ok else None))
                case Message():
                    messages.append(event)
                    out.append(core.delivered(
                        [Reply(250, "2.0.0", f"{a} saved") for a, _ in event.recipients]))
    return b"".join(out), messages


def codes(output: bytes) -> list[str]:
    return [line[:3] + line[3:4] for line in output.decode().split("\r\n") if line]


def test_a_whole_session() -> None:
    out, messages = drive(LmtpCore("mx.test", 1000), [SESSION])
    assert codes(out) == ["220 ", "250-", "250-", "250-", "250-", "250-", "250 ", "250 ",
                          "250 ", "550 ", "250 ", "354 ", "250 ", "250 ", "221 "]
    assert b"250 SIZE 1000\r\n" in out
    assert b"250 2.0.0 a@example.org saved\r\n250 2.0.0 b@example.org saved\r\n" in out
    assert messages == [Message("sender@example.org",
                                (("a@example.org", "A@EXAMPLE.ORG"),
                                 ("b@example.org", "B@EXAMPLE.ORG")),
                                b"Subject: hi\n\n.dotted\n.\nline\n")]


def test_byte_by_byte_and_with_trailing_data() -> None:
    whole = drive(LmtpCore("mx.test", 1000), [SESSION])
    assert drive(LmtpCore("mx.test", 1000), [bytes([b]) for b in SESSION]) == whole
    trailing = drive(LmtpCore("mx.test", 1000), [SESSION + b"NOOP\r\n"])
    assert trailing == whole  # nothing is read after QUIT


@given(st.lists(st.integers(min_value=0, max_value=len(SESSION)), max_size=12))
def test_any_split_gives_the_same_result(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [SESSION[a:b] for a, b in zip([0, *points], [*points, len(SESSION)], strict=True)]
    assert drive(LmtpCore("mx.test", 1000), chunks) == drive(LmtpCore("mx.test", 1000),
                                                             [SESSION])


def test_data_edge_cases() -> None:
    body = b"no blank line\r\n.\r\n"  # the terminator right away
    for data, expected in (
        (b".\r\n", b""),
        (body, b"no blank line\n"),
        (b"..\r\n.x\r\nbare\nlf\r\n.\r\n", b".\nx\nbare\nlf\n"),
        (b"a\r\n.\n", b"a\n"),  # a bare-LF terminator is accepted too
        (b"x" * 5000 + b"\r\n.\r\n", b"x" * 5000 + b"\n"),  # a long line
    ):
        session = (b"LHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\n" + data)
        for chunks in ([session], [bytes([b]) for b in session]):
            _, messages = drive(LmtpCore("mx", 10_000), chunks)
            assert [m.data for m in messages] == [expected]
            assert messages[0].sender == ""


def test_oversize_message_gets_552_for_each_recipient() -> None:
    core = LmtpCore("mx", 1024)
    session = (b"LHLO x\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"
               + b"y" * 2000 + b"\r\n.\r\nNOOP\r\n")
    core.feed(session)
    seen = []
    while (event := core.next_event()) is not None:
        if isinstance(event, RcptTo):
            core.recipient(Reply(250, "2.1.5", "Ok"), event.address)
        elif isinstance(event, Message):
            seen.append(event)
            assert event.data is None
            out = core.delivered([Reply(552, "5.3.4", "Too big")] * 2)
            assert out == b"552 5.3.4 Too big\r\n" * 2
    assert len(seen) == 1


@pytest.mark.parametrize(("session", "reply"), [
    (b"MAIL FROM:<a@b>\r\n", b"503 5.5.1 Say LHLO first"),
    (b"HELO x\r\n", b"500 5.5.1"),
    (b"LHLO x\r\nRCPT TO:<a@b>\r\n", b"503 5.5.1 Need MAIL first"),
    (b"LHLO x\r\nMAIL FROM:<a@b>\r\nDATA\r\n", b"503 5.5.1 No valid recipients"),
    (b"LHLO x\r\nMAIL FROM:<a@b> SIZE=5000\r\n", b"552 5.3.4"),
    (b"LHLO x\r\nMAIL FROM:a@b\r\n", b"501 5.5.4"),
    (b"LHLO x\r\nMAIL FROM:<a@b> RET=FULL\r\n", b"555 5.5.4"),
    (b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<>\r\n", b"501 5.1.3"),
    (b"X" * 5000 + b"\r\nNOOP\r\n", b"500 5.5.2 Line too long\r\n250 2.0.0"),
    (b"\xff\xfe\r\n", b"500 5.5.2"),
])
def test_refusals(session: bytes, reply: bytes) -> None:
    out, _ = drive(LmtpCore("mx", 1024), [session])
    assert reply in out, out


def test_too_many_recipients_and_errors() -> None:
    core = LmtpCore("mx", 1024, max_recipients=2)
    rcpts = b"".join(b"RCPT TO:<u%d@x>\r\n" % i for i in range(3))
    out, _ = drive(core, [b"LHLO x\r\nMAIL FROM:<>\r\n" + rcpts])
    assert out.endswith(b"250 2.1.5 Ok\r\n452 4.5.3 Too many recipients\r\n")
    core = LmtpCore("mx", 1024)
    out, _ = drive(core, [b"BOGUS\r\n" * 30])
    assert out.endswith(b"421 4.7.0 Too many errors, closing\r\n") and core.closed


# --- popbox lmtp on the postgres store ---------------------------------------------------


@pytest.fixture(scope="module")
def setup(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("lmtp")
    config = pg_config(MailEnv(root), pg_dsn, lmtp={
        "listen": ["127.0.0.1:0", str(root / "lmtp.sock")], "max_message_size": 65536,
        "recipient_delimiter": "+"})
    yield config, pg_dsn


@pytest.fixture(scope="module")
def lmtp(setup: tuple[Path, str]) -> Iterator[LmtpProcess]:
    process = LmtpProcess(setup[0])
    yield process
    process.stop()


@pytest.fixture(scope="module")
def pop3(setup: tuple[Path, str]) -> Iterator[ServerProcess]:
    process = ServerProcess(setup[0])
    yield process
    process.stop()


@pytest.fixture
async def two_users(pg_dsn: str) -> AsyncIterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:8]
    users = (f"a{tag}@example.org", f"b{tag}@example.org")
    for user in users:
        await add_user(pg_dsn, user)
    yield users


async def stored(dsn: str, user: str) -> list[bytes]:
    return await stored_messages(dsn, user)


def test_smtplib_per_recipient_replies(
    lmtp: LmtpProcess, pg_dsn: str, two_users: tuple[str, str]
) -> None:
    a, b = two_users
    client = smtplib.LMTP("127.0.0.1", lmtp.port)
    try:
        assert client.ehlo("mta.test")[0] == 250 and client.has_extn("pipelining")
        assert client.mail("sender@example.org")[0] == 250
        assert client.rcpt(a)[0] == 250
        assert client.rcpt("nobody@example.org") == (550, b"5.1.1 <nobody@example.org> "
                                                         b"User unknown")
        local, _, domain = b.partition("@")
        assert client.rcpt(f"{local}+tag@{domain}")[0] == 250  # the delimiter
        first = client.data(b"Subject: lmtp\r\n\r\nhello\r\n")
        second = client.getreply()  # LMTP: one reply per accepted recipient
        assert first == (250, f"2.0.0 <{a}> Saved".encode())
        assert second == (250, f"2.0.0 <{local}+tag@{domain}> Saved".encode())
    finally:
        client.quit()
    for user, rcpt in ((a, a), (b, f"{local}+tag@{domain}")):
        assert asyncio.run(stored(pg_dsn, user)) == [
            b"Return-Path: <sender@example.org>\nDelivered-To: " + rcpt.encode()
            + b"\nSubject: lmtp\n\nhello\n"]


async def test_concurrent_clients_each_message_stored_once(
    lmtp: LmtpProcess, pg_dsn: str, two_users: tuple[str, str]
) -> None:
    """Four MTA connections at once, each delivering one message after the other to both
    users (group commit, popbox.store.pg_batch): every 250 is a stored message, each
    stored exactly once; a message's two copies share one transaction."""
    a, b = two_users
    clients = [await LmtpClient.connect(lmtp.port) for _ in range(4)]
    try:
        for client in clients[:1]:  # the mailboxes exist: every later copy is batched
            replies = await client.transaction("s@x", [a, b], b"Subject: first\r\n\r\n")
            assert [code for code, _ in replies] == [250, 250]

        async def deliver(n: int, client: LmtpClient) -> None:
            for m in range(10):
                message = b"Subject: %d.%d\r\n\r\n.dot %d\r\n" % (n, m, m)
                replies = await client.transaction("s@x", [a, b], message)
                assert [code for code, _ in replies] == [250, 250], replies

        await asyncio.gather(*(deliver(n, c) for n, c in enumerate(clients)))
    finally:
        for client in clients:
            await client.close()
    for user in (a, b):
        subjects = [m.split(b"Subject: ")[1].split(b"\n")[0] for m in await stored(pg_dsn, user)]
        assert sorted(subjects) == sorted([b"first"] + [b"%d.%d" % (n, m) for n in range(4)
                                                        for m in range(10)])
    rows = await fetch(pg_dsn, "SELECT m.xmin::text AS x, m.body, m.wire, m.body_from_wire "
                       "FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id "
                       "WHERE b.name = ANY($1)", [a, b])
    by_subject: dict[bytes, set[str]] = {}
    for row in rows:
        subject = message_of(row).split(b"Subject: ")[1].split(b"\n")[0]
        by_subject.setdefault(subject, set()).add(row["x"])
    assert len(by_subject) == 41
    assert all(len(xids) == 1 for subject, xids in by_subject.items() if subject != b"first")


def test_unix_socket(lmtp: LmtpProcess, pg_dsn: str, two_users: tuple[str, str]) -> None:
    assert lmtp.socket is not None
    client = smtplib.LMTP(lmtp.socket)
    try:
        assert client.sendmail("s@x", [two_users[0]], b"Subject: unix\r\n\r\nx\r\n") == {}
    finally:
        client.quit()
    assert len(asyncio.run(stored(pg_dsn, two_users[0]))) == 1


async def test_oversize_is_552_per_recipient(
    lmtp: LmtpProcess, pg_dsn: str, two_users: tuple[str, str]
) -> None:
    client = await LmtpClient.connect(lmtp.port)
    replies = await client.transaction("s@x", list(two_users), b"x" * 70_000 + b"\r\n")
    assert [code for code, _ in replies] == [552, 552]
    assert all(text.startswith("5.3.4") for _, text in replies)
    assert await client.cmd("NOOP") == (250, "2.0.0 Ok")  # still in step
    await client.close()
    assert await stored(pg_dsn, two_users[0]) == []


async def test_delivery_during_a_session_shows_up_next_session(
    lmtp: LmtpProcess, pop3: ServerProcess, two_users: tuple[str, str]
) -> None:
    user = two_users[0]
    sender = await LmtpClient.connect(lmtp.port)
    assert await sender.transaction("s@x", [user], b"Subject: 1\r\n\r\none\r\n") == [
        (250, f"2.0.0 <{user}> Saved")]
    session = await Client.connect(pop3.port)
    assert (await session.login(user)).startswith(b"+OK")
    assert (await session.cmd("STAT")).startswith(b"+OK 1 ")
    assert (await sender.transaction("s@x", [user], b"Subject: 2\r\n\r\ntwo\r\n"))[0][0] == 250
    assert (await session.cmd("STAT")).startswith(b"+OK 1 ")  # the snapshot stands
    assert (await session.cmd("QUIT")).startswith(b"+OK")
    await session.close()
    await sender.close()
    again = await Client.connect(pop3.port)
    for _ in range(50):  # the first session's lock may take a moment to go
        reply = await again.login(user)
        if reply.startswith(b"+OK"):
            break
        await again.close()
        again = await Client.connect(pop3.port)
    assert (await again.cmd("STAT")).startswith(b"+OK 2 ")
    await again.close()


async def test_database_connection_killed_mid_delivery(
    lmtp: LmtpProcess, pg_dsn: str, two_users: tuple[str, str]
) -> None:
    """The insert is blocked (the test holds a table lock), its backend is terminated:
    the MTA gets 451 and nothing is stored; the next delivery works."""
    import asyncpg

    user = two_users[0]
    blocker = await asyncpg.connect(pg_dsn)
    watcher = await asyncpg.connect(pg_dsn)  # outside the blocker's transaction, whose
    client = await LmtpClient.connect(lmtp.port)  # view of pg_stat_activity is frozen
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        assert (await client.cmd("MAIL FROM:<s@x>"))[0] == 250
        assert (await client.cmd(f"RCPT TO:<{user}>"))[0] == 250
        assert (await client.cmd("DATA"))[0] == 354
        client.send_data(b"Subject: doomed\r\n\r\n" + b"z" * 20_000 + b"\r\n")
        for _ in range(1000):
            waiting = await watcher.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO messages%'")
            if waiting:
                break
            await asyncio.sleep(0.01)
        assert len(waiting) == 1
        await watcher.execute("SELECT pg_terminate_backend($1)", waiting[0]["pid"])
        await transaction.rollback()
        code, text = await client.reply()
        assert code == 451 and text.startswith("4.3.0"), (code, text)
        assert await stored(pg_dsn, user) == []
        assert (await client.transaction("s@x", [user], b"Subject: ok\r\n\r\n"))[0][0] == 250
        assert len(await stored(pg_dsn, user)) == 1
    finally:
        await client.close()
        await blocker.close()
        await watcher.close()


def test_swaks(lmtp: LmtpProcess, pg_dsn: str, two_users: tuple[str, str]) -> None:
    swaks = shutil.which("swaks")
    assert swaks is not None, "swaks is missing: scripts/install-peers installs it"
    a, b = two_users
    done = subprocess.run(
        [swaks, "--protocol", "LMTP", "--server", f"127.0.0.1:{lmtp.port}", "--from", "s@x",
         "--to", f"{a},nobody@example.org,{b}", "--body", "via swaks", "--helo", "mta.test"],
        capture_output=True, text=True, timeout=60)
    assert f"<-  250 2.0.0 <{a}> Saved" in done.stdout, done.stdout
    assert f"<-  250 2.0.0 <{b}> Saved" in done.stdout
    assert "<** 550 5.1.1 <nobody@example.org> User unknown" in done.stdout
    for user in two_users:
        (body,) = asyncio.run(stored(pg_dsn, user))
        assert b"via swaks" in body


# --- popbox deliver, and LMTP into a Maildir ----------------------------------------------


def deliver(config: Path, *argv: str, message: bytes = b"Subject: d\n\nx\n") -> int:
    return subprocess.run([sys.executable, "-m", "popbox", "deliver", "--config", str(config),
                           *argv], input=message, capture_output=True, timeout=60).returncode


def test_deliver_exit_codes(setup: tuple[Path, str], two_users: tuple[str, str],
                            tmp_path: Path) -> None:
    config, dsn = setup
    user = two_users[0]
    assert deliver(config, "-f", "s@x", user) == 0
    (body,) = asyncio.run(stored(dsn, user))
    assert body.startswith(b"Return-Path: <s@x>\nDelivered-To: ")
    assert deliver(config, "nobody@example.org") == 67
    assert deliver(config, user, message=b"x" * 70_000) == 73
    assert deliver(config) == 64
    down = pg_config(MailEnv(tmp_path), f"postgresql://postgres@127.0.0.1:{free_port()}/x",
                     postgres={"connect_timeout": 2})
    assert deliver(down, user) == 75
    assert deliver(tmp_path / "missing.toml", user) == 75


def test_lmtp_into_maildir(env: MailEnv) -> None:
    config = env.config_file(lmtp={"listen": ["127.0.0.1:0"]})
    process = LmtpProcess(config)
    try:
        client = smtplib.LMTP("127.0.0.1", process.port)
        assert client.sendmail("s@x", ["alice"], b"Subject: md\r\n\r\n.hi\r\n") == {}
        client.quit()
    finally:
        process.stop()
    (path,) = (env.maildir("alice") / "new").iterdir()
    body = b"Return-Path: <s@x>\nDelivered-To: alice\nSubject: md\n\n.hi\n"
    assert path.read_bytes() == body
    lines = body.count(b"\n")
    assert f",S={len(body)},W={len(body) + lines}" in path.name


class _Users:
    """A userdb of fixed names (the location is the name)."""

    def __init__(self, *names: str) -> None:
        self.names = set(names)

    async def lookup(self, user: str) -> UserInfo | Verdict | None:
        return UserInfo(user, user) if user in self.names else None


async def test_agent_recipient_names() -> None:
    store = MemoryStore()
    mail = MailAccess(from_dict({}), store)
    agent = Agent(_Users("alice@example.org", "bob"), mail, recipient_delimiter="+-")
    alice = UserInfo("alice@example.org", "alice@example.org")
    assert await agent.resolve("alice+news@Example.ORG") == alice
    assert await agent.resolve("alice-x@example.org") == alice
    assert await agent.resolve("Alice@example.org") == alice  # case retried
    assert await agent.resolve("+alice@example.org") is Outcome.NO_SUCH_USER
    assert await agent.resolve("../x@example.org") is Outcome.NO_SUCH_USER
    assert await agent.resolve("bob@example.org") is Outcome.NO_SUCH_USER
    local = Agent(_Users("bob"), mail, strip_domain=True)
    bob = await local.resolve("bob@example.org")
    assert bob == UserInfo("bob", "bob")
    assert isinstance(bob, UserInfo)
    assert await local.deliver(bob, b"Subject: x\n\n") is Outcome.DELIVERED
    assert [data for _, data in store.contents("bob")] == [b"Subject: x\n\n"]


class _CountedUsers(_Users):
    """`_Users` that counts its lookups, and can be told to answer TEMPORARY."""

    def __init__(self, *names: str) -> None:
        super().__init__(*names)
        self.asked: list[str] = []
        self.down = False

    async def lookup(self, user: str) -> UserInfo | Verdict | None:
        self.asked.append(user)
        return Verdict.TEMPORARY if self.down else await super().lookup(user)


async def test_recipients_found_are_remembered_for_the_cache_time() -> None:
    users = _CountedUsers("alice")
    now = [1000.0]
    agent = Agent(users, MailAccess(from_dict({}), MemoryStore()), cache_ttl=5.0,
                  clock=lambda: now[0])
    alice = UserInfo("alice", "alice")
    assert await agent.resolve("alice") == alice
    assert await agent.resolve("alice") == alice
    assert users.asked == ["alice"]  # the second from the cache
    users.names.discard("alice")
    now[0] += 4.9
    assert await agent.resolve("alice") == alice  # still remembered ...
    now[0] += 0.2
    assert await agent.resolve("alice") is Outcome.NO_SUCH_USER  # ... not after 5 s
    for _ in range(2):  # unknown and unanswered names are asked again each time
        assert await agent.resolve("bob") is Outcome.NO_SUCH_USER
    users.down = True
    users.names.add("carol")
    assert await agent.resolve("carol") is Outcome.TEMPORARY
    users.down = False
    assert await agent.resolve("carol") == UserInfo("carol", "carol")
    assert users.asked == ["alice", "alice", "bob", "bob", "carol", "carol"]
    uncached = Agent(users, MailAccess(from_dict({}), MemoryStore()))  # cache_ttl 0
    for _ in range(2):
        assert await uncached.resolve("carol") == UserInfo("carol", "carol")
    assert users.asked[-2:] == ["carol", "carol"]


class _OwnedUsers:
    """A userdb whose one user has a uid of its own (4242), not this process's."""

    async def lookup(self, user: str) -> UserInfo | Verdict | None:
        return UserInfo(user, user, uid=4242, gid=4242) if user == "carol" else None


async def test_without_a_mail_host_another_uids_mail_is_refused_not_written() -> None:
    """RFC 3463 §3.4 X.3.5: a delivery agent that cannot take on the mail's owner (no
    mail host: not started as root) writes nothing with its own identity; the recipient
    is REFUSED (451 4.3.5 at RCPT, `popbox deliver` 75) and the store stays empty."""
    store = MemoryStore()
    agent = Agent(_OwnedUsers(), MailAccess(from_dict({}), store))
    assert await agent.resolve("carol") is Outcome.REFUSED
    carol = UserInfo("carol", "carol", uid=4242, gid=4242)
    assert await agent.deliver(carol, b"Subject: x\n\n") is Outcome.REFUSED
    assert store.contents("carol") == []
