"""Delivery over LMTP (RFC 2033) into popbox's own `popbox lmtp` and Dovecot's LMTP (TCP
and a Unix socket), and over SMTP (RFC 5321) into a real aiosmtpd listener standing in
for the MTA: 2xx delivered and recorded, 4xx tried again on the next run, 5xx reported
per message and left on the server (RFC 5321 §4.2.1); one connection per run, RSET
between messages (§4.1.1.5), QUIT at the end; the message dot-stuffed with CRLF line ends
(§4.5.2), BODY=8BITMIME (RFC 6152), SIZE (RFC 1870) and SMTPUTF8 (RFC 6531) used when
offered. The mail comes from a real popbox on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme
from aiosmtpd.smtp import SMTP, Envelope, Session

from delivery_helpers import fetch, fetch_once
from dovecot_peer import Dovecot, running_dovecot, unavailable
from helpers import MailEnv, crlf, running_server
from pg import LmtpProcess
from popbox.client.destinations import (
    DeliveryDeferred,
    LmtpTarget,
    SmtpTarget,
    Target,
    open_destination,
)
from popbox.client.fetcher import Destination, Options
from popbox.client.smtp_client import parse_address
from popbox.client.state import StateFile

MESSAGES = [
    b"Return-Path: <bob@example.org>\nSubject: one\n\nFrom the start\n.dot line\n..two\n.\n",
    b"Subject: two\n\nno final newline",
    b"Subject: three\n\n\xff 8-bit \xc3\xa9\n" + b"".join(b"line %05d\n" % i for i in range(3000)),
]


def destination(tmp_path: Path, target: Target) -> Destination:
    return open_destination(target, StateFile(tmp_path / "state.json"), account="work",
                            user="alice")


def test_addresses() -> None:
    assert parse_address("mx.example:2525", default_port=25) == ("mx.example", 2525)
    assert parse_address("[::1]:24", default_port=25) == ("::1", 24)
    assert parse_address("localhost", default_port=25) == ("localhost", 25)
    for bad in (":25", "host:99999", "host:0", "host:x"):
        with pytest.raises(ValueError):
            parse_address(bad, default_port=25)


# --- popbox lmtp ---------------------------------------------------------------------------


async def test_into_popbox_lmtp(env: MailEnv, tmp_path: Path) -> None:
    env.add_user("alice")
    env.add_user("bob")
    for message in MESSAGES:
        env.put("alice", message)
    process = LmtpProcess(env.config_file(lmtp={"listen": ["127.0.0.1:0"]}))
    try:
        lmtp = destination(tmp_path, LmtpTarget(f"127.0.0.1:{process.port}", "bob"))
        async with running_server(env.config()) as (port, _):
            report = await fetch(port, lmtp, tmp_path / "state.json")
            again = await fetch(port, lmtp, tmp_path / "state.json")
    finally:
        process.stop()
    assert (report.new, report.delivered, report.deleted, report.failed) == (3, 3, 3, 0)
    assert (again.new, again.delivered) == (0, 0)
    assert env.messages("alice") == []
    got = sorted(re.sub(rb"\AReturn-Path: <[^>]*>\nDelivered-To: bob\n", b"", m)
                 for m in env.messages("bob"))
    # popbox lmtp stores LF line ends; a message without a final line end gets one.
    assert got == sorted(m if m.endswith(b"\n") else m + b"\n" for m in MESSAGES)


# --- Dovecot's LMTP ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    if unavailable() is not None:
        pytest.skip(str(unavailable()))
    with running_dovecot(trustme.CA(), lmtp=True) as server:
        yield server


def dovecot_messages(dovecot: Dovecot, user: str) -> list[bytes]:
    """The messages as Dovecot stored them, without the trace headers it added."""
    found = []
    for sub in ("new", "cur"):
        for path in (dovecot.maildir(user) / sub).iterdir():
            data = path.read_bytes()
            head, _, body = data.partition(b"\n\n")
            kept = re.sub(rb"(?m)^(Return-Path|Delivered-To|Received):.*\n(?:[ \t].*\n)*", b"",
                          head + b"\n")
            found.append(kept + b"\n" + body)
    return sorted(found)


@pytest.mark.parametrize("over", ["tcp", "unix"])
async def test_into_dovecot_lmtp(env: MailEnv, tmp_path: Path, dovecot: Dovecot,
                                 over: str) -> None:
    env.add_user("alice")
    for message in MESSAGES:
        env.put("alice", message)
    user = dovecot.add_user()
    address = (f"127.0.0.1:{dovecot.lmtp_port}" if over == "tcp"
               else str(dovecot.lmtp_socket))
    lmtp = destination(tmp_path, LmtpTarget(address, user))
    async with running_server(env.config()) as (port, _):
        report = await fetch(port, lmtp, tmp_path / "state.json")
    assert (report.delivered, report.deleted, report.failed) == (3, 3, 0), report.notes
    expected = [m.removeprefix(b"Return-Path: <bob@example.org>\n") for m in MESSAGES]
    assert dovecot_messages(dovecot, user) == sorted(
        m if m.endswith(b"\n") else m + b"\n" for m in expected)


async def test_dovecot_refuses_an_unknown_recipient(env: MailEnv, tmp_path: Path,
                                                    dovecot: Dovecot) -> None:
    """Dovecot's 550 for RCPT TO a user it does not know: every message is reported and
    left on the server; the run goes on to the end."""
    env.add_user("alice")
    for message in MESSAGES:
        env.put("alice", message)
    lmtp = destination(tmp_path, LmtpTarget(f"127.0.0.1:{dovecot.lmtp_port}", "nobody"))
    async with running_server(env.config()) as (port, _):
        report = await fetch(port, lmtp, tmp_path / "state.json")
    assert (report.delivered, report.deleted, report.failed) == (0, 0, 3)
    assert len(report.notes) == 3
    assert all("RCPT TO:<nobody>: 550" in note for note in report.notes), report.notes
    assert len(env.messages("alice")) == 3


# --- SMTP into aiosmtpd --------------------------------------------------------------------


class Mta:
    """An aiosmtpd handler: a message whose Subject is "tempfail" gets 450, "reject" 550
    (until `accept` names it), the others 250 and are kept."""

    def __init__(self) -> None:
        self.accept: set[str] = set()
        self.kept: list[Envelope] = []
        self.sessions = 0
        self.rsets = 0
        self.quits = 0

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.rsets += 1
        return "250 OK"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.quits += 1
        return "221 Bye"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        subject = re.search(rb"(?m)^Subject: (\S+)", content)
        word = subject.group(1).decode() if subject else ""
        if word == "tempfail" and word not in self.accept:
            return "450 4.3.0 mailbox busy, try later"
        if word == "reject" and word not in self.accept:
            return "550 5.7.1 we do not want it"
        self.kept.append(envelope)
        return "250 2.0.0 OK queued"


@pytest.fixture
async def mta() -> AsyncIterator[tuple[Mta, int]]:
    handler = Mta()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="mta.test", enable_SMTPUTF8=True), "127.0.0.1", 0)
    try:
        yield handler, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_smtp_reply_classes(env: MailEnv, tmp_path: Path, mta: tuple[Mta, int]) -> None:
    handler, mta_port = mta
    env.add_user("alice")
    subjects = ["ok1", "reject", "ok2", "tempfail", "ok3"]
    bodies = {s: f"Subject: {s}\n\n.{s} body\n".encode() for s in subjects}
    for s in subjects:
        env.put("alice", bodies[s])
    smtp = destination(tmp_path, SmtpTarget(f"127.0.0.1:{mta_port}", "jörg@example.org"))
    state = tmp_path / "state.json"
    async with running_server(env.config()) as (port, _):
        with pytest.raises(DeliveryDeferred, match=r"450 4\.3\.0 mailbox busy"):
            await fetch_once(port, smtp, state)
        assert (handler.sessions, handler.quits) == (1, 1)
        assert handler.rsets == 3  # before reject, ok2 and tempfail
        assert [e.original_content for e in handler.kept] == [crlf(bodies["ok1"]),
                                                              crlf(bodies["ok2"])]
        first = handler.kept[0]
        assert first.rcpt_tos == ["jörg@example.org"]
        assert first.mail_from == "<>"  # the null reverse-path
        assert "BODY=8BITMIME" in first.mail_options
        assert "SMTPUTF8" in first.mail_options
        assert f"SIZE={len(crlf(bodies['ok1']))}" in first.mail_options
        left = ("reject", "tempfail", "ok3")
        assert sorted(env.messages("alice")) == sorted(bodies[s] for s in left)

        handler.accept.add("tempfail")
        fetcher = await fetch_once(port, smtp, state)
        assert (fetcher.report.delivered, fetcher.report.failed) == (2, 1)
        (note,) = fetcher.report.notes
        assert "550 5.7.1 we do not want it" in note
        assert (handler.sessions, handler.quits) == (2, 2)
        assert env.messages("alice") == [bodies["reject"]]

        handler.accept.add("reject")
        report = await fetch(port, smtp, state)
    assert (report.delivered, report.failed, report.deleted) == (1, 0, 1)
    kept = [e.original_content for e in handler.kept]
    assert sorted(kept) == sorted(crlf(b) for b in bodies.values())
    assert env.messages("alice") == []


async def test_smtp_sender_and_stuffing(env: MailEnv, tmp_path: Path,
                                        mta: tuple[Mta, int]) -> None:
    handler, mta_port = mta
    env.add_user("alice")
    for message in MESSAGES:
        env.put("alice", message)
    smtp = destination(tmp_path, SmtpTarget(f"127.0.0.1:{mta_port}"))
    async with running_server(env.config()) as (port, _):
        report = await fetch(port, smtp, tmp_path / "state.json", Options(keep=True))
    assert (report.delivered, report.deleted) == (3, 0)
    assert handler.sessions == 1
    assert [e.mail_from for e in handler.kept] == ["bob@example.org", "<>", "<>"]
    assert all(e.rcpt_tos == ["alice"] for e in handler.kept)
    assert all("SMTPUTF8" not in e.mail_options for e in handler.kept)
    assert [e.original_content for e in handler.kept] == [crlf(m) for m in MESSAGES]


async def test_smtp_server_gone_defers(env: MailEnv, tmp_path: Path) -> None:
    env.add_user("alice")
    env.put("alice", MESSAGES[0])
    loop = asyncio.get_running_loop()
    closed = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    gone = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    smtp = destination(tmp_path, SmtpTarget(f"127.0.0.1:{gone}"))
    async with running_server(env.config()) as (port, _):
        with pytest.raises(DeliveryDeferred, match=f"SMTP 127.0.0.1:{gone}"):
            await fetch_once(port, smtp, tmp_path / "state.json")
    assert len(env.messages("alice")) == 1
