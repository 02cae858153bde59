"""End to end with real third-party clients: Python's poplib, curl, fetchmail and getmail6
against `popbox serve` in a child process, on 127.0.0.1 with real Maildirs.

Every test checks that the bytes a client ends up with equal the stored originals. What
each client writes, exactly:
- poplib: lines without their CRLF, un-stuffed; `b"\\r\\n".join(lines)` is the message as
  sent, without the final CRLF.
- curl: the message as sent (CRLF line ends, a final CRLF added if the message had
  none), un-stuffed.
- fetchmail (to an MDA): LF line ends (it strips the CR before piping), a final LF added
  if missing; with `set invisible` it adds no Received header.
- getmail6 (Maildir destination): LF line ends, a final LF added if missing, and always a
  first line `Return-Path: <...>` (here `<unknown>`: the messages have no Return-Path or
  Sender); Delivered-To and Received are switched off in its options.
"""

from __future__ import annotations

import contextlib
import poplib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import MailEnv, ServerProcess, crlf, lf_terminated, server_process
from peer_clients import TOOL_TIMEOUT, getmail_dest, require, run_fetchmail, run_getmail

__all__ = ["getmail_dest"]  # the fixture

MESSAGES = [
    b"From: a@example.org\nTo: alice@example.org\nSubject: plain\n\nHello.\nSecond line.\n",
    b"From: b@example.org\nSubject: dots\n\n.starts with a dot\n..two dots\n.\n"
    b"the lone dot above is part of the message\n",
    "From: c@example.org\nSubject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\nMIME-Version: 1.0\n"
    "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
    "Grüße aus Zürich — 你好 — ¡hola!\n".encode(),
    b"From: d@example.org\nSubject: no final newline\n\nfirst\nlast line without a line end",
]




def lines_of(message: bytes) -> list[bytes]:
    """The message's lines without line ends, as poplib returns them."""
    return lf_terminated(message)[:-1].split(b"\n")


def fill(env: MailEnv, messages: list[bytes] = MESSAGES) -> None:
    for message in messages:
        env.put("alice", message)


def base_names(env: MailEnv) -> list[str]:
    """The unique base of every message file (the name without `:2,flags`), sorted."""
    md = env.maildir("alice")
    return sorted(p.name.split(":")[0] for sub in ("new", "cur") for p in (md / sub).iterdir())


@pytest.fixture
def server(env: MailEnv) -> Iterator[ServerProcess]:
    with server_process(env.config_file()) as proc:
        yield proc


# --- poplib ---


@contextlib.contextmanager
def pop_session(port: int, user: str = "alice", password: str = "secret") -> Iterator[poplib.POP3]:
    """A logged-in poplib connection (USER/PASS), closed on exit."""
    pop = poplib.POP3("127.0.0.1", port, timeout=10)
    try:
        assert pop.getwelcome().startswith(b"+OK")
        assert pop.user(user).startswith(b"+OK")
        assert pop.pass_(password).startswith(b"+OK")
        yield pop
    finally:
        pop.close()


def test_poplib_reads_everything(env: MailEnv, server: ServerProcess) -> None:
    """RFC 1939 §5, §7 through poplib: STAT and LIST count CRLF octets, UIDL gives unique
    stable ids, RETR returns every message un-stuffed (a UTF-8 body and lines starting
    with "." survive), TOP n 0 the headers and the blank line. RFC 2449 CAPA and RFC 6856
    UTF8 before login. UIDLs are the same in the next session, after RETR has moved the
    files to cur/ with the S flag."""
    fill(env)
    sizes = [len(crlf(m)) for m in MESSAGES]
    pop = poplib.POP3("127.0.0.1", server.port, timeout=10)
    try:
        capa = pop.capa()
        for cap in ("TOP", "UIDL", "USER", "RESP-CODES", "PIPELINING", "UTF8"):
            assert cap in capa, capa
        assert pop.utf8().startswith(b"+OK")
        pop.user("alice")
        assert pop.pass_("secret") == (
            f"+OK Logged in. {len(MESSAGES)} messages ({sum(sizes)} octets).".encode()
        )
        assert pop.stat() == (len(MESSAGES), sum(sizes))
        _, listing, _ = pop.list()
        assert listing == [f"{n} {size}".encode() for n, size in enumerate(sizes, start=1)]
        assert pop.list(2) == f"+OK 2 {sizes[1]}".encode()
        _, uidl_lines, _ = pop.uidl()
        uidls = [line.split(b" ", 1)[1] for line in uidl_lines]
        assert [line.split(b" ")[0] for line in uidl_lines] == [
            str(n).encode() for n in range(1, len(MESSAGES) + 1)
        ]
        assert len(set(uidls)) == len(MESSAGES)
        assert all(re.fullmatch(rb"[\x21-\x7e]{1,70}", uid) for uid in uidls)
        assert pop.uidl(3) == b"+OK 3 " + uidls[2]
        for n, message in enumerate(MESSAGES, start=1):
            resp, lines, octets = pop.retr(n)
            assert resp == f"+OK {sizes[n - 1]} octets".encode()
            assert lines == lines_of(message)
            assert octets == sizes[n - 1]
            _, top_lines, _ = pop.top(n, 0)
            headers = message.split(b"\n\n", 1)[0]
            assert top_lines == [*headers.split(b"\n"), b""]
        assert pop.quit().startswith(b"+OK")
    finally:
        pop.close()
    assert env.messages("alice") == MESSAGES
    with pop_session(server.port) as pop:
        assert [line.split(b" ", 1)[1] for line in pop.uidl()[1]] == uidls
        pop.quit()


def test_poplib_dele_quit_removes_exactly_those(env: MailEnv, server: ServerProcess) -> None:
    """RFC 1939 §5, §6: DELE marks, the numbers of the others stay; QUIT removes exactly
    the marked messages from the Maildir and nothing else."""
    fill(env)
    names = base_names(env)
    with pop_session(server.port) as pop:
        pop.dele(1)
        pop.dele(3)
        assert pop.stat() == (2, len(crlf(MESSAGES[1])) + len(crlf(MESSAGES[3])))
        _, lines, _ = pop.retr(4)
        assert lines == lines_of(MESSAGES[3])
        with pytest.raises(poplib.error_proto, match="deleted"):
            pop.retr(1)
        assert pop.quit() == b"+OK Logging out, 2 messages deleted."
    assert base_names(env) == [names[1], names[3]]
    assert env.messages("alice") == [MESSAGES[1], MESSAGES[3]]


def test_poplib_second_connection_is_in_use(env: MailEnv, server: ServerProcess) -> None:
    """RFC 2449 §8.1.1: while one session holds the maildrop, a second login is refused
    with [IN-USE] at once (poplib raises error_proto with the reply); after QUIT the
    maildrop is free again."""
    fill(env)
    with pop_session(server.port) as first:
        second = poplib.POP3("127.0.0.1", server.port, timeout=10)
        try:
            second.user("alice")
            with pytest.raises(poplib.error_proto) as refused:
                second.pass_("secret")
            assert refused.value.args[0].startswith(b"-ERR [IN-USE]")
        finally:
            second.close()
        assert first.stat()[0] == len(MESSAGES)
        first.quit()
    with pop_session(server.port) as third:
        assert third.stat()[0] == len(MESSAGES)
        third.quit()


def test_poplib_nul_bytes_and_a_1mb_line(
    env: MailEnv, server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 1939 §3: message data is passed through as is: NUL bytes and a 1 MB line
    without a final newline come back intact (poplib's 2048-octet line limit raised)."""
    monkeypatch.setattr(poplib, "_MAXLINE", 2 * 1024 * 1024)
    message = b"Subject: binary\n\nbefore\n\0nul\0 in the middle\0\n" + b"x" * 1_000_000
    env.put("alice", message)
    with pop_session(server.port) as pop:
        size = len(crlf(message))
        assert pop.stat() == (1, size)
        resp, lines, octets = pop.retr(1)
        assert resp == f"+OK {size} octets".encode()
        assert octets == size
        assert b"\r\n".join(lines) + b"\r\n" == crlf(message)
        pop.quit()
    assert env.messages("alice") == [message]


# --- curl ---


def curl(port: int, path: str, *args: str, user: str = "alice:secret"
         ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [require("curl"), "-sS", "--user", user, *args, f"pop3://127.0.0.1:{port}/{path}"],
        capture_output=True, timeout=TOOL_TIMEOUT, check=False,
    )


@pytest.mark.parametrize("login_options", [None, "AUTH=LOGIN"])
def test_curl_list_and_fetch(
    env: MailEnv, server: ServerProcess, login_options: str | None
) -> None:
    """curl's pop3:// URLs: `/` is LIST (RFC 1939 §5), `/N` is RETR; the bytes curl writes
    are the messages with CRLF, un-stuffed. curl logs in with SASL (RFC 5034): PLAIN by
    default, LOGIN when asked."""
    fill(env)
    extra = ["--login-options", login_options, "-v"] if login_options else []
    listing = curl(server.port, "", *extra)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout == b"".join(
        f"{n} {len(crlf(m))}\r\n".encode() for n, m in enumerate(MESSAGES, start=1)
    )
    if login_options:
        assert b"> AUTH LOGIN" in listing.stderr
    for n, message in enumerate(MESSAGES, start=1):
        fetched = curl(server.port, str(n), *extra)
        assert fetched.returncode == 0, fetched.stderr
        assert fetched.stdout == crlf(message)
    assert env.messages("alice") == MESSAGES


def test_curl_uidl_and_top(env: MailEnv, server: ServerProcess) -> None:
    """curl's custom commands (`--request`) print a multi-line reply as is: UIDL
    (RFC 1939 §7) lists one unique id per message, the same as poplib sees; TOP n 0 gives
    the headers and the blank line."""
    fill(env)
    result = curl(server.port, "", "--request", "UIDL")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split(b"\r\n")
    assert lines[-1] == b""
    numbers, uidls = zip(*(line.split(b" ") for line in lines[:-1]), strict=True)
    assert numbers == tuple(str(n).encode() for n in range(1, len(MESSAGES) + 1))
    assert len(set(uidls)) == len(MESSAGES)
    with pop_session(server.port) as pop:
        assert [line.split(b" ")[1] for line in pop.uidl()[1]] == list(uidls)
        pop.quit()
    for n, message in enumerate(MESSAGES, start=1):
        result = curl(server.port, "", "--request", f"TOP {n} 0")
        assert result.returncode == 0, result.stderr
        assert result.stdout == crlf(message.split(b"\n\n", 1)[0] + b"\n\n")


def test_curl_dele(env: MailEnv, server: ServerProcess) -> None:
    """`curl --request DELE --list-only pop3://host/N` deletes message N: curl sends DELE
    then QUIT, and the file is gone from the Maildir; the others stay byte-identical."""
    fill(env)
    names = base_names(env)
    result = curl(server.port, "2", "--request", "DELE", "--list-only")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    assert base_names(env) == [names[0], *names[2:]]
    assert env.messages("alice") == [MESSAGES[0], *MESSAGES[2:]]


def test_curl_wrong_password(env: MailEnv, server: ServerProcess) -> None:
    """A refused login is reported by curl as CURLE_LOGIN_DENIED (exit 67)."""
    fill(env)
    result = curl(server.port, "1", user="alice:wrong")
    assert result.returncode == 67, result.stderr
    assert result.stdout == b""
    assert env.messages("alice") == MESSAGES


# --- fetchmail ---


def test_fetchmail_fetch_and_delete(env: MailEnv, server: ServerProcess, tmp_path: Path) -> None:
    """fetchmail without `keep`: RETR, DELE, QUIT (RFC 1939 §6). Every message reaches the
    MDA with the right bytes (LF line ends), the Maildir is empty afterwards, and the next
    poll finds no mail (exit 1)."""
    fill(env)
    home = tmp_path / "home"
    home.mkdir()
    result, delivered = run_fetchmail(home, server.port, keep=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert delivered == [lf_terminated(m) for m in MESSAGES]
    assert env.messages("alice") == []
    result, delivered = run_fetchmail(home, server.port, keep=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert delivered == []


def test_fetchmail_keep_and_uidl(env: MailEnv, server: ServerProcess, tmp_path: Path) -> None:
    """fetchmail with `keep` and `uidl`: it reads with `TOP n 99999999`, which must give
    the whole message and not mark it seen (the files stay in new/); the next poll
    fetches nothing (exit 1) because the UIDLs are stable; a new message is fetched
    alone."""
    fill(env)
    names = sorted(p.name for p in (env.maildir("alice") / "new").iterdir())
    home = tmp_path / "home"
    home.mkdir()
    result, delivered = run_fetchmail(home, server.port, keep=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert delivered == [lf_terminated(m) for m in MESSAGES]
    assert env.messages("alice") == MESSAGES
    assert sorted(p.name for p in (env.maildir("alice") / "new").iterdir()) == names
    fetchids = (home / ".fetchids").read_text()
    assert len([line for line in fetchids.splitlines() if line.startswith("alice@")]) == len(names)

    result, delivered = run_fetchmail(home, server.port, keep=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert delivered == []

    extra = b"From: e@example.org\nSubject: later\n\nnew mail\n"
    env.put("alice", extra)
    result, delivered = run_fetchmail(home, server.port, keep=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert delivered == [extra]
    assert env.messages("alice") == [*MESSAGES, extra]


def test_fetchmail_tells_lock_busy_from_wrong_password(
    env: MailEnv, server: ServerProcess, tmp_path: Path
) -> None:
    """fetchmail reads RFC 2449 response codes: [IN-USE] while another session holds the
    maildrop is "lock busy" (exit 9, try again later), [AUTH] is an authentication
    failure (exit 3). Neither deletes anything."""
    fill(env)
    home = tmp_path / "home"
    home.mkdir()
    with pop_session(server.port) as pop:
        result, delivered = run_fetchmail(home, server.port, keep=False)
        assert result.returncode == 9, result.stdout + result.stderr
        assert delivered == []
        pop.quit()
    result, delivered = run_fetchmail(home, server.port, keep=False, password="wrong")
    assert result.returncode == 3, result.stdout + result.stderr
    assert delivered == []
    assert env.messages("alice") == MESSAGES


# --- getmail6 ---


def test_getmail_keep_and_oldmail(
    env: MailEnv, server: ServerProcess, tmp_path: Path, getmail_dest: tuple[Path, str | None]
) -> None:
    """getmail6 with delete = false, read_all = false: every message lands in the
    destination Maildir with the right bytes, the source keeps them all, and the next
    run fetches nothing because the UIDLs are stable (getmail's oldmail file) even
    though RETR moved the files to cur/; a new message is fetched alone."""
    fill(env)
    getmaildir = tmp_path / "getmail"
    result, delivered = run_getmail(getmaildir, server.port, getmail_dest, delete=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(delivered) == sorted(lf_terminated(m) for m in MESSAGES)
    assert env.messages("alice") == MESSAGES

    result, delivered = run_getmail(getmaildir, server.port, getmail_dest, delete=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert delivered == []
    assert "0 messages" in result.stdout

    extra = b"From: e@example.org\nSubject: later\n\nnew mail\n"
    env.put("alice", extra)
    result, delivered = run_getmail(getmaildir, server.port, getmail_dest, delete=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert delivered == [extra]
    assert env.messages("alice") == [*MESSAGES, extra]


def test_getmail_delete(
    env: MailEnv, server: ServerProcess, tmp_path: Path, getmail_dest: tuple[Path, str | None]
) -> None:
    """getmail6 with delete = true: every message delivered intact, then DELE and QUIT
    (RFC 1939 §6) leave the source Maildir empty."""
    fill(env)
    result, delivered = run_getmail(tmp_path / "getmail", server.port, getmail_dest, delete=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(delivered) == sorted(lf_terminated(m) for m in MESSAGES)
    assert env.messages("alice") == []


def test_fetchmail_deletes_into_trash_and_undelete_brings_back_the_uidls(
    env: MailEnv, tmp_path: Path
) -> None:
    """`store.deleted = "trash"` with real clients: fetchmail fetches and deletes (RETR,
    DELE, QUIT); `popbox undelete` (the command) puts the mail back; poplib then lists the
    UIDLs it listed before (RFC 1939 §7), and a raw UTF-8 header (RFC 6532) reached
    fetchmail, which never says UTF8, as "?" octets at the promised size (RFC 6856 §2.1)."""
    raw = "From: j@example.org\nSubject: Grüße\n\nGrüße\n".encode()
    fill(env, [*MESSAGES[:2], raw])
    config = env.config_file(store={"deleted": "trash"})
    home = tmp_path / "home"
    home.mkdir()
    with server_process(config) as proc:
        with pop_session(proc.port) as pop:
            before = pop.uidl()[1]
        result, delivered = run_fetchmail(home, proc.port, keep=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert delivered[:2] == [lf_terminated(m) for m in MESSAGES[:2]]
        assert delivered[2] == "From: j@example.org\nSubject: Gr????e\n\nGrüße\n".encode()
        assert env.messages("alice") == []
        back = subprocess.run(
            [sys.executable, "-m", "popbox", "undelete", "alice", "--config", str(config)],
            capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)
        assert back.returncode == 0 and back.stdout == "alice: 3 messages put back\n", back
        with pop_session(proc.port) as pop:
            assert pop.uidl()[1] == before
            assert pop.utf8().startswith(b"+OK")
            assert b"\r\n".join(pop.retr(3)[1]) == crlf(raw)[:-2]
