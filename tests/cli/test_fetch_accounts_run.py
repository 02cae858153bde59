"""`popbox fetch` with an accounts file, as a child process against real servers on
127.0.0.1 (popbox, and a private Dovecot when it is installed): several accounts in one
run into a Maildir and an mbox, `--list` afterwards, `--json` parsed, the exit status of a
run where some accounts fail, `-v` lines in order with the summary, and the progress
display on a pseudo-terminal (and its absence elsewhere). POP3 per RFC 1939; the failures
carry RFC 2449 §8 / RFC 3206 response codes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from agent_helpers import agent_argv, agent_env, popbox_account, run_agent, write_accounts
from dovecot_peer import Dovecot, running_dovecot, unavailable
from fetch_helpers import maildir_files, read_mboxrd
from helpers import MailEnv, running_server
from popbox.client import to_lf

MESSAGES = [b"Subject: one\n\nfirst\n", b"Subject: two\n\nsecond\n>From quoted\n",
            b"Subject: three\n\n" + b"x" * 5000 + b"\n"]


def delivered_maildir(path: Path) -> Counter[bytes]:
    return Counter(maildir_files(path).values())


def delivered_mbox(path: Path) -> Counter[bytes]:
    return Counter(body for _, body in read_mboxrd(path.read_bytes()))


def wire(message: bytes) -> bytes:
    return to_lf(message.replace(b"\n", b"\r\n"))


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot | None]:
    if unavailable() is not None:
        yield None
        return
    with running_dovecot(trustme.CA()) as server:
        yield server


async def test_two_accounts_two_servers_then_list(env: MailEnv, tmp_path: Path,
                                                  dovecot: Dovecot | None) -> None:
    """One run fetches a popbox account into a Maildir and a Dovecot account into an mbox
    (a second popbox account when Dovecot is missing); --list then shows each account's
    destination and its last run; --list --json is parsed."""
    env.add_user("alice")
    for message in MESSAGES:
        env.put("alice", message)
    async with running_server(env.config()) as (port, _):
        if dovecot is not None:
            user = dovecot.add_user()
            for message in MESSAGES[:2]:
                dovecot.put(user, message)
            other = {"server": "127.0.0.1", "port": dovecot.port, "tls": "none",
                     "user": user, "password": "secret"}
        else:
            env.add_user("bob")
            for message in MESSAGES[:2]:
                env.put("bob", message)
            other = popbox_account(port, "bob")
        maildir, mbox = tmp_path / "Maildir", tmp_path / "mail.mbox"
        config = write_accounts(tmp_path / "fetch.toml", {
            "work": popbox_account(port, "alice", maildir="Maildir"),
            "home": {**other, "mbox": "mail.mbox"},
        })
        result = await run_agent(tmp_path, config)
    assert result.status == 0, result.err
    assert result.err == ""
    lines = sorted(result.out.splitlines())
    assert lines[0].startswith("popbox fetch: home: 2 new message(s) for ")
    assert lines[0].endswith(f"delivered to {mbox}; 2 deleted on the server")
    assert lines[1] == (f"popbox fetch: work: 3 new message(s) for alice@127.0.0.1:{port} "
                        f"delivered to {maildir}; 3 deleted on the server")
    assert delivered_maildir(maildir) == Counter(wire(m) for m in MESSAGES)
    assert delivered_mbox(mbox) == Counter(wire(m) for m in MESSAGES[:2])
    assert env.messages("alice") == []
    states = tmp_path / "xdg-state" / "popbox" / "fetch"
    assert sorted(p.name for p in states.glob("*.json")) == ["home.json", "work.json"]

    listed = await run_agent(tmp_path, config, "--list")
    assert listed.status == 0, listed.err
    rows = {line.split("\t")[0]: line.split("\t") for line in listed.out.splitlines()}
    assert rows["work"][1:3] == [f"alice@127.0.0.1:{port}", str(maildir)]
    assert rows["work"][3].startswith("last run 20")
    assert rows["work"][3].endswith(": ok, 3 delivered, 3 deleted")
    assert rows["home"][3].endswith(": ok, 2 delivered, 2 deleted")
    as_json = await run_agent(tmp_path, config, "--list", "--json", "work")
    [item] = [json.loads(line) for line in as_json.out.splitlines()]
    assert item["account"] == "work" and item["destination"] == str(maildir)
    assert item["last_run"]["delivered"] == 3 and item["last_run"]["status"] == 0


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_json_and_the_status_of_a_run_where_some_fail(env: MailEnv,
                                                           tmp_path: Path) -> None:
    """--json: one object per account-run on stdout and nothing else; the failing accounts
    are named on stderr; the status is the most severe one: 77 ([AUTH]) over 75 (no
    connection), and 75 alone when only that fails."""
    env.add_user("alice")
    env.add_user("bob")
    for message in MESSAGES:
        env.put("alice", message)
    async with running_server(env.config()) as (port, _):
        config = write_accounts(tmp_path / "fetch.toml", {
            "good": popbox_account(port, "alice", maildir="M", keep=True),
            "badpw": popbox_account(port, "bob", maildir="B", password="wrong"),
            "down": popbox_account(refused_port(), "alice", maildir="D"),
        })
        result = await run_agent(tmp_path, config, "--json")
        only_down = await run_agent(tmp_path, config, "--json", "down", "good")
    assert result.status == 77, result
    objects = {item["account"]: item for item in map(json.loads, result.out.splitlines())}
    assert set(objects) == {"good", "badpw", "down"}
    good = objects["good"]
    assert {k: good[k] for k in ("server", "new", "delivered", "deleted", "skipped",
                                 "error")} == {
        "server": f"127.0.0.1:{port}", "new": 3, "delivered": 3, "deleted": 0, "skipped": 0,
        "error": None}
    assert good["bytes"] == sum(len(m.replace(b"\n", b"\r\n")) for m in MESSAGES)
    assert isinstance(good["seconds"], float) and good["seconds"] >= 0
    assert objects["badpw"]["error"]["status"] == 77
    assert objects["badpw"]["error"]["class"] == "EX_NOPERM"
    assert "[AUTH]" in objects["badpw"]["error"]["message"]
    assert objects["down"]["error"]["class"] == "EX_TEMPFAIL"
    err = sorted(result.err.splitlines())
    assert len(err) == 2
    assert err[0].startswith("popbox fetch: badpw: login to 127.0.0.1:")
    assert err[1].startswith("popbox fetch: down: cannot connect")
    assert only_down.status == 75, only_down
    assert {json.loads(line)["account"] for line in only_down.out.splitlines()} == {
        "down", "good"}


async def test_verbose_lines_come_before_the_summary(env: MailEnv, tmp_path: Path) -> None:
    """Both streams sent to one place: every -v line of a run, then its summary."""
    env.add_user("alice")
    for message in MESSAGES:
        env.put("alice", message)
    async with running_server(env.config()) as (port, _):
        config = write_accounts(tmp_path / "fetch.toml", {
            "work": popbox_account(port, "alice", maildir="M")})
        result = await run_agent(tmp_path, config, "-v", merged=True)
    assert result.status == 0, result.out
    lines = result.out.splitlines()
    assert len(lines) == 4, lines
    assert all(line.startswith("popbox fetch: work: message ") for line in lines[:3]), lines
    assert lines[3].startswith("popbox fetch: work: 3 new message(s)")


def read_all(fd: int) -> bytes:
    chunks = []
    with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_progress_display_on_a_terminal_only(env: MailEnv, tmp_path: Path) -> None:
    """On a pseudo-terminal: rich draws the account's row (messages, bytes) with escape
    codes, and the summary is printed; through a pipe, plain lines without any escape."""
    env.add_user("alice")
    big = b"Subject: big\n\n" + b"line of a big message .........................\n" * 40000
    env.put("alice", big)
    env.put("alice", MESSAGES[0])
    async with running_server(env.config()) as (port, _):
        config = write_accounts(tmp_path / "fetch.toml", {
            "work": popbox_account(port, "alice", maildir="M", keep=True)})
        master, slave = os.openpty()
        try:
            proc = await asyncio.create_subprocess_exec(
                *agent_argv(config), stdin=slave, stdout=slave, stderr=slave,
                env={**agent_env(tmp_path), "TERM": "xterm-256color", "COLUMNS": "120"})
            os.close(slave)
            shown = await asyncio.to_thread(read_all, master)
            assert await asyncio.wait_for(proc.wait(), 60) == 0
        finally:
            os.close(master)
        env.put("alice", MESSAGES[1])
        piped = await run_agent(tmp_path, config)
    text = shown.decode("utf-8", "replace")
    assert "\x1b[" in text, text
    assert "work" in text and "2/2 msgs" in text and "MB" in text, text
    assert "popbox fetch: work: 2 new message(s)" in text, text
    assert piped.status == 0 and "\x1b" not in piped.out + piped.err
    assert piped.out.startswith("popbox fetch: work: 1 new message(s)"), piped.out
