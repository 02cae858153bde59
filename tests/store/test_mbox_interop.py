"""End to end: `popbox serve` with `mail_location = "mbox:..."` serving spools that
procmail delivers (mboxo, as Debian's Postfix local writes them), fetched by fetchmail and
getmail6 (driven as in tests/test_interop.py), the spool checked afterwards with GNU
mailutils (`messages`, `frm`), an independent mbox reader. RFC 1939 §6-§7: DELE'd
messages go at QUIT only, UIDLs stay the same across sessions so "keep" fetches each
message once."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mbox_support import Procmail

from helpers import MailEnv, ServerProcess, lf_terminated, server_process
from test_interop import getmail_dest, run_fetchmail, run_getmail

__all__ = ["getmail_dest"]  # the fixture, shared with tests/test_interop.py

MESSAGES = [
    b"From: a@example.org\nSubject: plain\n\nHello.\nFrom the start of a line.\n",
    b"From: b@example.org\nSubject: dots\n\n.starts with a dot\n..two dots\n.\nend\n",
    b"From: c@example.org\nSubject: last\n\nlast line\n",
]
EXTRA = b"From: e@example.org\nSubject: later\n\nnew mail\n"


def delivered_form(message: bytes) -> bytes:
    """What a client gets of a message procmail wrote: mboxo unquoting turns the
    ">From " procmail wrote back into "From ", and a final LF is there. (A message
    without a final LF is left out here: procmail then writes no empty line before the
    next From line, which popbox reads as mutt does but mailutils does not.)"""
    return lf_terminated(message)


def spool_subjects(spool: Path) -> list[str]:
    """The Subject of every message, as GNU mailutils' frm reads the spool."""
    frm = shutil.which("frm")
    assert frm, "mailutils is not installed: run scripts/install-peers"
    messages = subprocess.run(["messages", str(spool)], capture_output=True, text=True,
                              check=True, timeout=30).stdout
    out = subprocess.run([frm, str(spool)], capture_output=True, text=True, check=False,
                         timeout=30).stdout
    subjects = [line.split("\t")[-1] for line in out.splitlines() if line.strip()]
    assert messages.strip().endswith(f": {len(subjects)}"), messages
    return subjects


@pytest.fixture
def mbox_env(env: MailEnv) -> MailEnv:
    (env.root / "var-mail").mkdir(mode=0o1777)
    env.settings["auth"] = {"mail_location": "mbox:" + str(env.root / "var-mail/{user}")}
    env.settings["store"] = {"mbox_format": "mboxo"}
    return env


@pytest.fixture
def spool(mbox_env: MailEnv, procmail: Procmail) -> Path:
    path = mbox_env.root / "var-mail" / "alice"
    for m in MESSAGES:
        procmail(path, m)
    return path


@pytest.fixture
def server(mbox_env: MailEnv, spool: Path) -> Iterator[ServerProcess]:
    with server_process(mbox_env.config_file()) as proc:
        yield proc


def test_fetchmail_fetch_and_delete(server: ServerProcess, spool: Path, tmp_path: Path) -> None:
    """fetchmail without keep: every message reaches its MDA intact, the QUIT rewrite
    leaves an empty spool that mailutils reads as empty (same inode), and the next
    poll finds nothing (exit 1)."""
    ino = spool.stat().st_ino
    home = tmp_path / "home"
    home.mkdir()
    result, delivered = run_fetchmail(home, server.port, keep=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert delivered == [delivered_form(m) for m in MESSAGES]
    assert spool.stat().st_ino == ino
    assert spool_subjects(spool) == []
    result, delivered = run_fetchmail(home, server.port, keep=False)
    assert result.returncode == 1, result.stdout + result.stderr


def test_fetchmail_keep_and_uidl(
    server: ServerProcess, spool: Path, tmp_path: Path, procmail: Procmail
) -> None:
    """fetchmail with keep and uidl: the UIDLs are stable across sessions, so the second
    poll fetches nothing and a message procmail delivers afterwards is fetched alone."""
    home = tmp_path / "home"
    home.mkdir()
    result, delivered = run_fetchmail(home, server.port, keep=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert delivered == [delivered_form(m) for m in MESSAGES]
    result, delivered = run_fetchmail(home, server.port, keep=True)
    assert result.returncode == 1, result.stdout + result.stderr
    procmail(spool, EXTRA)
    result, delivered = run_fetchmail(home, server.port, keep=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert delivered == [EXTRA]
    assert spool_subjects(spool) == ["plain", "dots", "last", "later"]


def test_getmail_keep_then_delete(
    server: ServerProcess, spool: Path, tmp_path: Path, getmail_dest: tuple[Path, str | None],
    procmail: Procmail,
) -> None:
    """getmail6: with delete = false everything arrives and a second run fetches nothing
    (stable UIDLs in its oldmail file); with delete = true the next message arrives and
    QUIT leaves only what was never fetched (mail delivered after that session)."""
    getmaildir = tmp_path / "getmail"
    result, delivered = run_getmail(getmaildir, server.port, getmail_dest, delete=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(delivered) == sorted(delivered_form(m) for m in MESSAGES)
    result, delivered = run_getmail(getmaildir, server.port, getmail_dest, delete=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert delivered == []
    procmail(spool, EXTRA)
    result, delivered = run_getmail(getmaildir, server.port, getmail_dest, delete=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert delivered == [EXTRA]
    assert spool_subjects(spool) == []


def test_popbox_deliver_appends_to_the_spool(mbox_env: MailEnv, spool: Path) -> None:
    """`popbox deliver -f SENDER USER` into an mbox user: the From line carries the
    envelope sender (from the Return-Path it adds), body "From " lines are quoted as the
    configured format writes them, and mailutils reads the spool with both programs'
    messages in order."""
    config = mbox_env.config_file()
    result = subprocess.run([sys.executable, "-m", "popbox", "deliver", "--config",
                             str(config), "-f", "s@example.org", "alice"],
                            input=b"Subject: via popbox\n\nFrom me\n", capture_output=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    tail = spool.read_bytes().rsplit(b"\n\nFrom ", 1)[1]
    assert tail.startswith(b"s@example.org ")
    assert tail.endswith(b"\nSubject: via popbox\n\n>From me\n\n")
    assert spool_subjects(spool) == ["plain", "dots", "last", "via popbox"]
