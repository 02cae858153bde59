"""`popbox probe` (popbox.client.prober, popbox.client.probe) against popbox's own server
(every check passes), a private Dovecot (every check passes) and a deliberately broken
server run here on 127.0.0.1 (every deviation it has is found, with the line as evidence).
The checks follow RFC 1939 §3, §5, §7 and §11 (framing, sizes, TOP, UIDL), RFC 2449 §5,
§6.4, §6.7 and §8.1.1 (CAPA, RESP-CODES, EXPIRE, [IN-USE]), RFC 2595 §4 (STLS)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme

from dovecot_peer import Dovecot, running_dovecot
from dovecot_peer import unavailable as dovecot_unavailable
from helpers import MailEnv
from popbox.backends import build
from popbox.client.probe import Check, Observations, Verdict, evaluate
from popbox.client.prober import Target, probe
from popbox.server.context import ServerContext
from popbox.server.listener import Listener

TIMEOUT = 20.0
MESSAGES = [
    b"Subject: one\n\nfirst line\n.dot line\n..two dots\nlast line\n",
    b"Subject: two\nFrom: b@example.org\n\nshort\n",
    b"Subject: three\n\n" + b"".join(b"line %d\n" % i for i in range(50)),
    b"Subject: four\n\n" + b"x" * 3000 + b"\n",
]


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def deviations(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks if c.verdict is Verdict.DEVIATION}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_env(env: MailEnv, ca: trustme.CA, tmp_path: Path) -> tuple[MailEnv, bytes]:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    chain, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    env.settings["tls"] = {"cert": str(chain), "key": str(key), "implicit": ["127.0.0.1:0"]}
    for message in MESSAGES:
        env.put("alice", message)
    der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    return env, der


@contextlib.asynccontextmanager
async def popbox_server(env: MailEnv) -> AsyncIterator[tuple[int, int]]:
    config = env.config()
    listener = Listener(ServerContext.create(config, build(config)))
    plain, implicit = await listener.start()
    try:
        yield plain[0][1], implicit[0][1] if implicit else 0
    finally:
        await listener.shutdown()


def context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def expected_fingerprint(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return "sha256:" + ":".join(digest[i : i + 2] for i in range(0, 64, 2))


async def test_popbox_passes_every_check(tls_env: tuple[MailEnv, bytes], ca: trustme.CA
                                         ) -> None:
    """popbox over STLS and implicit TLS: no deviation; the TLS details, the fingerprint
    in the `sha256:AB:..` form, the dot-stuffed line checked, [IN-USE] on a second login,
    and nothing deleted."""
    env, der = tls_env
    async with popbox_server(env) as (port, tls_port):
        for where, tls in ((port, "starttls"), (tls_port, "implicit")):
            obs = await probe(Target("127.0.0.1", where, tls, user="alice",  # type: ignore[arg-type]
                                     password="secret", ssl_context=context(ca),
                                     timeout=TIMEOUT))
            checks = evaluate(obs)
            assert deviations(checks) == {}, checks
            named = by_name(checks)
            for name in ("greeting", "tls", "certificate", "capa", "stat-list", "uidl",
                         "uidl-stable", "crlf", "dot-stuffing", "list-size", "top", "list-n",
                         "uidl-n", "bad-numbers", "in-use", "resp-codes", "login"):
                assert named[name].verdict is Verdict.PASS, named[name]
            assert obs.tls is not None and obs.tls.how == tls
            assert obs.tls.version in ("TLSv1.2", "TLSv1.3")
            assert obs.tls.fingerprint == expected_fingerprint(der)
            assert obs.tls.chain and "localhost" not in obs.tls.chain[0].issuer
            assert len(obs.samples) == 3 and {s.msg for s in obs.samples} == {1, 2, 3}
            assert "[IN-USE]" in (obs.concurrent or "")
            if tls == "starttls":
                assert named["stls"].verdict is Verdict.PASS
                # auth.cleartext = "local": a loopback client may log in before STLS
                assert named["cleartext"].verdict is Verdict.WARNING
    assert len(env.messages("alice")) == len(MESSAGES)


async def test_popbox_unverified_certificate(tls_env: tuple[MailEnv, bytes]) -> None:
    """A certificate from a CA the probe does not trust: a deviation, and no password is
    sent unless --insecure; the fingerprint is still shown."""
    env, der = tls_env
    async with popbox_server(env) as (_, tls_port):
        obs = await probe(Target("127.0.0.1", tls_port, "implicit", user="alice",
                                 password="secret", timeout=TIMEOUT))
        named = by_name(evaluate(obs))
        assert named["certificate"].verdict is Verdict.DEVIATION
        assert "verify" in named["certificate"].summary
        assert expected_fingerprint(der) in named["certificate"].summary
        assert named["login"].verdict is Verdict.SKIPPED and not obs.logged_in
        insecure = await probe(Target("127.0.0.1", tls_port, "implicit", user="alice",
                                      password="secret", insecure=True, timeout=TIMEOUT))
        assert insecure.logged_in and insecure.samples


async def test_without_login(env: MailEnv) -> None:
    """No user: the checks before login only, nothing after it."""
    async with popbox_server(env) as (port, _):
        obs = await probe(Target("127.0.0.1", port, "none", timeout=TIMEOUT))
    named = by_name(evaluate(obs))
    assert named["login"].verdict is Verdict.SKIPPED
    assert "stat-list" not in named and named["capa"].verdict is Verdict.PASS
    assert named["tls"].verdict is Verdict.WARNING


async def test_cli_json(tls_env: tuple[MailEnv, bytes], ca: trustme.CA, tmp_path: Path
                        ) -> None:
    """`popbox probe --json` with the password from the environment: parsed, exit 0; the
    password is not on the command line. A refused login: exit 1, the -ERR shown."""
    env, der = tls_env
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    async with popbox_server(env) as (_, tls_port):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "popbox", "probe", "127.0.0.1", "--port", str(tls_port),
            "--tls", "implicit", "--user", "alice", "--cafile", str(cafile), "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "POPBOX_FETCH_PASSWORD": "secret"})
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT * 3)
        refused = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "popbox", "probe", "127.0.0.1", "--port", str(tls_port),
            "--tls", "implicit", "--user", "alice", "--cafile", str(cafile),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "POPBOX_FETCH_PASSWORD": "wrong"})
        refused_out, _ = await asyncio.wait_for(refused.communicate(), TIMEOUT * 3)
    assert refused.returncode == 1  # no deviation, but the probe could not log in
    assert b"the login failed: -ERR [AUTH]" in refused_out
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["deviations"] == 0
    assert report["tls"]["fingerprint"] == expected_fingerprint(der)
    verdicts = {c["name"]: c["verdict"] for c in report["checks"]}
    assert verdicts["list-size"] == "pass" and verdicts["uidl-stable"] == "pass"


# --- a broken server ---

BROKEN = [
    b"Subject: a\r\n\r\nline 1\r\n.dot line\r\nline 3\r\nline 4\r\n",  # sent unstuffed
    b"Subject: b\n\nbare LF\n",  # sent with bare LF line ends
    b"Subject: c\r\n\r\n" + b"c" * 200 + b"\r\n",
    b"Subject: d\r\n\r\n" + b"d" * 300 + b"\r\n",
    b"Subject: e\r\n\r\n" + b"e" * 400 + b"\r\n",
]


class BrokenServer:
    """A POP3 server with every fault the probe looks for: STAT's sum off by 7, LIST sizes
    counting LF line ends, no dot-stuffing, bare LF (even after the final "."), UIDLs that
    repeat, change between sessions and contain a space, `LIST n` without the number,
    message 0 accepted, TOP that ignores its line count, a second login refused without
    [IN-USE], no RESP-CODES, a malformed EXPIRE."""

    def __init__(self) -> None:
        self.sessions = 0
        self.holder = False
        self.server: asyncio.Server | None = None
        self.log: list[list[str]] = []  # each session's commands

    def uid(self, n: int) -> bytes:
        return {1: b"uid-1", 2: b"uid-2-%d" % self.sessions, 3: b"same", 4: b"same",
                5: b"has space"}[n]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        holding = False
        commands: list[str] = []
        self.log.append(commands)
        writer.write(b"+OK broken POP3 ready\r\n")

        def out(*lines: bytes) -> None:
            writer.write(b"".join(line + b"\r\n" for line in lines))

        try:
            while line := await reader.readline():
                words = line.decode().split()
                verb, args = (words[0].upper(), words[1:]) if words else ("", [])
                commands.append(verb)
                size = {n: len(m.replace(b"\r\n", b"\n")) for n, m in enumerate(BROKEN, 1)}
                if verb == "CAPA":
                    out(b"+OK", b"USER", b"TOP", b"UIDL", b"EXPIRE soon", b".")
                elif verb == "USER":
                    out(b"+OK")
                elif verb == "PASS":
                    if self.holder:
                        out(b"-ERR mailbox locked")
                    else:
                        self.holder = holding = True
                        out(b"+OK")
                elif verb == "STAT":
                    out(b"+OK %d %d" % (len(BROKEN), sum(size.values()) + 7))
                elif verb == "LIST" and args:
                    n = int(args[0])
                    out(b"+OK %d" % size.get(n, 0))
                elif verb == "LIST":
                    out(b"+OK", *(b"%d %d" % item for item in size.items()), b".")
                elif verb == "UIDL" and args:
                    n = int(args[0])
                    out(b"+OK %d %s" % (n, self.uid(n)) if n in size else b"-ERR no such message")
                elif verb == "UIDL":
                    out(b"+OK", *(b"%d %s" % (n, self.uid(n)) for n in size), b".")
                elif verb in ("RETR", "TOP"):
                    n = int(args[0])
                    writer.write(b"+OK\r\n" + BROKEN[n - 1] + (b".\n" if n == 2 else b".\r\n"))
                elif verb in ("RSET", "NOOP"):
                    out(b"+OK")
                elif verb == "QUIT":
                    out(b"+OK bye")
                    break
                else:
                    out(b"-ERR unknown command")
                await writer.drain()
        finally:
            if holding:
                self.holder = False
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def broken_server() -> AsyncIterator[tuple[BrokenServer, int]]:
    broken = BrokenServer()
    server = await asyncio.start_server(broken.handle, "127.0.0.1", 0)
    try:
        yield broken, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_broken_server_every_deviation_found() -> None:
    """Every fault of BrokenServer is reported as a deviation with its evidence, and the
    probe never sent DELE, sent RSET before each QUIT, and read at most 3 messages."""
    async with broken_server() as (broken, port):
        obs = await probe(Target("127.0.0.1", port, "none", user="u", password="secret",
                                 timeout=TIMEOUT))
    found = deviations(evaluate(obs))
    assert set(found) == {"stat-list", "list-size", "crlf", "dot-stuffing", "top", "list-n",
                          "uidl", "uidl-stable", "bad-numbers", "in-use", "resp-codes",
                          "expire-syntax"}, found
    assert "octets" in found["stat-list"].summary and "+OK 5 " in found["stat-list"].evidence[0]
    assert "LF line ends" in found["list-size"].summary
    assert found["crlf"].evidence == ("Subject: b\\n", ".\\n")  # and "." LF at the end
    assert found["dot-stuffing"].evidence == (".dot line\\r\\n",)
    assert "k ignored" in found["top"].summary
    lf_size = len(BROKEN[0].replace(b"\r\n", b"\n"))
    assert f"+OK {lf_size}" in found["list-n"].evidence
    assert "share a UIDL" in found["uidl"].summary and "syntax" in found["uidl"].summary
    assert "5 has space\\r\\n" in found["uidl"].evidence
    assert "message 2" in found["uidl-stable"].evidence[0]
    assert any(e.startswith("LIST 0: +OK") for e in found["bad-numbers"].evidence)
    assert found["in-use"].evidence == ("-ERR mailbox locked",)
    assert found["expire-syntax"].evidence == ("before login: EXPIRE soon",
                                               "after login: EXPIRE soon")
    assert all(c.workaround for c in found.values())
    assert len(broken.log) == 3  # the probe, a refused second login, the UIDLs again
    assert all("DELE" not in session for session in broken.log)
    assert sum(session.count("RETR") for session in broken.log) == 3
    assert broken.log[0][-2:] == broken.log[2][-2:] == ["RSET", "QUIT"]
    assert broken.log[1] == ["CAPA", "USER", "PASS", "QUIT"]


def test_evaluate_without_uidl() -> None:
    """A server without UIDL: a deviation naming what popbox fetch does instead."""
    from popbox.client.probe import Reply

    obs = Observations("h", 110, greeting="+OK", logged_in=True, login="USER",
                       stat="+OK 0 0", list_all=Reply("+OK", []),
                       uidl_all=Reply("-ERR unknown command"))
    found = deviations(evaluate(obs))
    assert "keep" in (found["uidl"].workaround or "")
    assert found["uidl"].evidence == ("-ERR unknown command",)


# --- Dovecot ---

@pytest.fixture(scope="module")
def dovecot(ca: trustme.CA) -> Iterator[Dovecot]:
    if dovecot_unavailable() is not None:
        pytest.skip(str(dovecot_unavailable()))
    with running_dovecot(ca) as server:
        yield server


async def test_dovecot_passes_every_check(dovecot: Dovecot, ca: trustme.CA) -> None:
    """Dovecot over STLS with a login: no deviation, [IN-USE] on a second login
    (pop3_lock_session; Dovecot answers it after waiting for the lock), nothing deleted.
    The test configuration allows cleartext logins before STLS (disable_plaintext_auth =
    no), which the probe warns about. Over implicit TLS without a login: the TLS checks."""
    user = dovecot.add_user()
    for message in MESSAGES:
        dovecot.put(user, message)
    obs = await probe(Target("127.0.0.1", dovecot.port, "starttls", user=user,
                             password="secret", ssl_context=context(ca), timeout=TIMEOUT))
    checks = evaluate(obs)
    assert deviations(checks) == {}, checks
    named = by_name(checks)
    for name in ("stls", "stat-list", "uidl", "uidl-stable", "crlf", "dot-stuffing",
                 "list-size", "top", "list-n", "uidl-n", "bad-numbers", "in-use"):
        assert named[name].verdict is Verdict.PASS, named[name]
    assert named["cleartext"].verdict is Verdict.WARNING
    assert "[IN-USE]" in (obs.concurrent or "")
    assert dovecot.count(user) == len(MESSAGES)
    obs = await probe(Target("127.0.0.1", dovecot.tls_port, "implicit",
                             ssl_context=context(ca), timeout=TIMEOUT))
    named = by_name(evaluate(obs))
    assert deviations(list(named.values())) == {}
    assert named["tls"].verdict is named["certificate"].verdict is Verdict.PASS
    assert obs.tls is not None and obs.tls.fingerprint.startswith("sha256:")


def test_evaluate_tls_and_stls_rules() -> None:
    """From given replies: TLS 1.1 is a deviation (RFC 8314 §4.1); STLS still offered
    after TLS started is one (RFC 2595 §4); EXPIRE with USER after login is malformed
    (RFC 2449 §6.7); a message with no blank line is its own TOP n 0 (RFC 1939 §7)."""
    from popbox.client.probe import Reply, Sample, TlsInfo

    caps = Reply("+OK", [b"STLS\r\n", b"RESP-CODES\r\n", b"UIDL\r\n"])
    body = Reply("+OK", [b"Subject: no body\r\n"])
    obs = Observations(
        "h", 110, greeting="+OK hi", stls="+OK", capa_clear=caps, capa_auth=caps,
        tls=TlsInfo("starttls", "TLSv1.1", "AES128-SHA", 128, "sha256:00", (), None),
        logged_in=True, login="PLAIN", capa_trans=Reply("+OK", [b"EXPIRE 3 USER\r\n"]),
        stat="+OK 1 18", list_all=Reply("+OK", [b"1 18\r\n"]),
        uidl_all=Reply("+OK", [b"1 a\r\n"]),
        samples=[Sample(1, 18, body, top0=body, topk=body, list_n="+OK 1 18",
                        uidl_n="+OK 1 a")])
    found = deviations(evaluate(obs))
    assert set(found) == {"tls", "stls", "expire-syntax"}, found
    assert found["expire-syntax"].evidence == ("after login: EXPIRE 3 USER",)
    assert "after TLS started" in found["stls"].summary


def test_cli_usage(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                   ) -> None:
    """--user without a password anywhere, and --cafile without TLS: exit 64 with the
    reason, before any connection."""
    from popbox.cli.probe import main

    monkeypatch.delenv("POPBOX_FETCH_PASSWORD", raising=False)
    assert main(["127.0.0.1", "--port", "1", "--user", "alice"]) == 64
    assert "needs a password" in capsys.readouterr().err
    assert main(["127.0.0.1", "--tls", "none", "--cafile", "/nonexistent"]) == 64
    assert "need TLS" in capsys.readouterr().err


def test_evaluate_top_counting_header_lines() -> None:
    """A TOP that counts header lines instead of body lines, and cuts fetchmail's
    `TOP n 99999999` short: deviations for k = 2 and k = 99999999 (RFC 1939 §7)."""
    from popbox.client.probe import Reply, Sample

    lines = [b"A: 1\r\n", b"B: 2\r\n", b"\r\n", b"one\r\n", b"two\r\n", b"three\r\n"]
    size = len(b"".join(lines))
    obs = Observations(
        "h", 110, greeting="+OK", logged_in=True, login="USER", stat=f"+OK 1 {size}",
        list_all=Reply("+OK", [b"1 %d\r\n" % size]), uidl_all=Reply("+OK", [b"1 a\r\n"]),
        samples=[Sample(1, size, Reply("+OK", lines), top0=Reply("+OK", lines[:3]),
                        topk=Reply("+OK", lines[:2]), top_all=Reply("+OK", lines[:5]),
                        list_n=f"+OK 1 {size}", uidl_n="+OK 1 a")])
    found = deviations(evaluate(obs))
    assert set(found) == {"top"}, found
    assert "TOP 1 2 sent" in found["top"].summary and "TOP 1 99999999 sent" in found["top"].summary
    assert "TOP 1 0" not in found["top"].summary
