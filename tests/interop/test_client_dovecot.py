"""The client library and `popbox fetch` against a real, private Dovecot (dovecot-pop3d on
127.0.0.1, see dovecot_peer.py): every login method Dovecot offers, STLS and implicit TLS,
[IN-USE] (RFC 2449 §8.1.1), the bytes of every message compared with what Python's poplib
gets, and exactly-once fetching across a kill -9."""

from __future__ import annotations

import asyncio
import poplib
import ssl
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from dovecot_peer import Dovecot, running_dovecot, unavailable
from fetch_helpers import (
    fetch_argv,
    kill,
    maildir_files,
    read_mboxrd,
    relay,
    run_fetch,
    start_fetch,
)
from popbox import client
from popbox.client import to_lf
from popbox.proto.types import MsgNo

MESSAGES = [
    b"Return-Path: <bob@example.org>\nSubject: one\n\nFrom the start\n.dot line\n..two\n",
    b"Subject: two\n\nno final newline",
    b"Subject: three\n\n" + b"".join(b"line %05d\n" % i for i in range(20000)),
    b"Subject: four\n\n>From quoted\n\xff 8-bit\n",
]
TIMEOUT = 20.0

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def dovecot(ca: trustme.CA) -> Iterator[Dovecot]:
    with running_dovecot(ca) as server:
        yield server


@pytest.fixture
def user(dovecot: Dovecot) -> str:
    name = dovecot.add_user()
    for message in MESSAGES:
        dovecot.put(name, message)
    return name


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def poplib_view(dovecot: Dovecot, user: str) -> tuple[dict[int, int], list[bytes]]:
    """LIST, and every message as poplib gets it: its lines (un-stuffed) joined with CRLF."""
    pop = poplib.POP3("127.0.0.1", dovecot.port, timeout=TIMEOUT)
    pop.user(user)
    pop.pass_("secret")
    sizes: dict[int, int] = {}
    for line in pop.list()[1]:
        n, size = line.split()
        sizes[int(n)] = int(size)
    messages = [b"".join(line + b"\r\n" for line in pop.retr(n)[1]) for n in sorted(sizes)]
    pop.quit()
    return sizes, messages


def poplib_messages(dovecot: Dovecot, user: str) -> list[bytes]:
    return poplib_view(dovecot, user)[1]


def test_every_command_and_bytes_equal_poplibs(
    dovecot: Dovecot, user: str, ca: trustme.CA
) -> None:
    """RFC 1939 §§5-7 over STLS (RFC 2595 §4) with Dovecot; the strongest mechanism it
    offers is used; RETR and TOP give exactly poplib's bytes."""
    listed, expected = poplib_view(dovecot, user)

    async def ours() -> None:
        pop = await client.connect("127.0.0.1", dovecot.port, tls="starttls",
                                   ssl_context=trusting(ca), timeout=TIMEOUT)
        async with pop:
            caps = await pop.capa()
            assert "STLS" not in caps and "SCRAM-SHA-256" in caps["SASL"]
            assert await pop.login(user, "secret") == "SCRAM-SHA-256"
            count, octets = await pop.stat()
            assert count == 4 and octets == sum(listed.values())
            sizes, uidls = await pop.list_and_uidl()
            assert sizes == listed
            assert await pop.list(3) == listed[3]
            assert await pop.uidl(2) == uidls[MsgNo(2)] and len(set(uidls.values())) == 4
            for n, message in enumerate(expected, 1):
                assert await pop.retr(n) == message
            assert await pop.top(3, 2) == b"Subject: three\r\n\r\nline 00000\r\nline 00001\r\n"
            await pop.dele(1)
            await pop.rset()
            await pop.noop()
            await pop.dele(2)
        assert dovecot.count(user) == 3

    asyncio.run(ours())


@pytest.mark.parametrize("method", ["USER", "APOP", "PLAIN", "LOGIN", "CRAM-MD5",
                                    "SCRAM-SHA-1", "SCRAM-SHA-256"])
async def test_every_login_method(dovecot: Dovecot, user: str, method: str) -> None:
    """USER/PASS and APOP (RFC 1939 §7, the greeting's timestamp), and AUTH (RFC 5034)
    with each mechanism Dovecot offers. (A wrong password is tested once, at the end of
    this module: after a failure Dovecot slows down later logins from the address.)"""
    async with await client.connect("127.0.0.1", dovecot.port, tls="none",
                                    timeout=TIMEOUT) as pop:
        if method == "USER":
            await pop.user_pass(user, "secret")
        elif method == "APOP":
            assert pop.timestamp is not None
            await pop.apop(user, "secret")
        else:
            assert method in (await pop.capa())["SASL"]
            await pop.auth(method, user, "secret")
        assert (await pop.stat())[0] == 4


async def test_implicit_tls(dovecot: Dovecot, user: str, ca: trustme.CA) -> None:
    """RFC 8314 §3.3: POP3 over TLS from the first byte; the certificate is verified."""
    async with await client.connect("127.0.0.1", dovecot.tls_port, tls="implicit",
                                    ssl_context=trusting(ca), timeout=TIMEOUT) as pop:
        assert pop.secure
        assert await pop.login(user, "secret") == "SCRAM-SHA-256"
        assert (await pop.stat())[0] == 4
    with pytest.raises(client.PopTlsError, match="certificate verify failed"):
        await client.connect("127.0.0.1", dovecot.tls_port, tls="implicit", timeout=TIMEOUT)


def counts(kind: str, dest: Path) -> Counter[bytes]:
    if kind == "maildir":
        return Counter(maildir_files(dest).values())
    return Counter(body for _, body in read_mboxrd(dest.read_bytes()))


@pytest.mark.parametrize("kind", ["maildir", "mbox"])
async def test_fetch_from_dovecot(
    dovecot: Dovecot, user: str, kind: str, tmp_path: Path, ca: trustme.CA
) -> None:
    """`popbox fetch` over STLS verified with --cafile (Maildir: --keep, then a run that
    finds nothing new and deletes; mbox: one run that fetches and deletes); every message
    stored once, as poplib reads it (in LF)."""
    expected = Counter(to_lf(m) for m in await asyncio.to_thread(poplib_messages, dovecot,
                                                                  user))
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    dest = tmp_path / kind
    argv = fetch_argv(dovecot.port, "--tls", "starttls", "--cafile", str(cafile),
                      f"--{kind}", str(dest), state=tmp_path / "state.json", user=user)
    if kind == "maildir":
        first = await run_fetch([*argv, "--keep"])
        assert first.status == 0 and "4 new message(s)" in first.out, first
        assert dovecot.count(user) == 4
        second = await run_fetch(argv)
        assert second.status == 0 and "no new mail" in second.out, second
    else:
        second = await run_fetch(argv)
        assert second.status == 0 and "4 new message(s)" in second.out, second
    assert "4 deleted on the server" in second.out
    assert dovecot.count(user) == 0
    assert counts(kind, dest) == expected


async def test_fetch_killed_then_rerun_against_dovecot(
    dovecot: Dovecot, user: str, tmp_path: Path
) -> None:
    """kill -9 at the third RETR (state recorded every 2 messages): Dovecot deletes
    nothing without QUIT; the rerun delivers the rest, each message exactly once."""
    expected = Counter(to_lf(m) for m in await asyncio.to_thread(poplib_messages, dovecot,
                                                                  user))
    dest = tmp_path / "Maildir"
    async with relay(dovecot.port, trigger_retr=3) as (r, port):
        argv = fetch_argv(port, "--tls", "none", "--batch", "2", "--maildir", str(dest),
                          state=tmp_path / "state.json", user=user)
        proc = await start_fetch(argv)
        await r.triggered.wait()
        await kill(proc)
        r.disarm()
        await asyncio.to_thread(dovecot.sessions_ended)
        assert dovecot.count(user) == 4
        assert len(maildir_files(dest)) == 2
        rerun = await run_fetch(argv)
    assert rerun.status == 0 and "2 new message(s)" in rerun.out, rerun
    assert "4 deleted on the server" in rerun.out
    assert counts("maildir", dest) == expected
    assert dovecot.count(user) == 0


async def test_fetch_with_a_wrong_password(dovecot: Dovecot, user: str, tmp_path: Path) -> None:
    """Dovecot's -ERR [AUTH] (RFC 3206): one line, status 77. (Last in this module:
    after a failure Dovecot slows down later logins from the same address.)"""
    argv = fetch_argv(dovecot.port, "--tls", "none", "--maildir", str(tmp_path / "md"),
                      state=tmp_path / "state.json", user=user)
    refused = await run_fetch(argv, password="wrong")
    assert refused.status == 77 and refused.err.count("\n") == 1, refused
    assert "[AUTH] Authentication failed." in refused.err
    assert dovecot.count(user) == 4
