"""Delivery through an MDA: the message on stdin with LF line ends, the arguments expanded
without a shell, sysexits(3) statuses (0 delivered, 75 EX_TEMPFAIL or a signal: tried
again, others: reported), against a real popbox on 127.0.0.1 and real programs (Debian's
procmail, a script the test writes). RFC 1939 §6: only recorded messages are DELE'd."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from delivery_helpers import fetch, fetch_once, mda_deliveries, mda_script
from fetch_helpers import read_mboxrd
from helpers import MailEnv, running_server
from popbox.client.destinations import (
    DeliveryDeferred,
    MdaTarget,
    open_destination,
)
from popbox.client.fetcher import FetchRefused, Options
from popbox.client.mda import Mda, expand
from popbox.client.state import StateFile


def destination(tmp_path: Path, *argv: str) -> Mda:
    state = StateFile(tmp_path / "state.json")
    made = open_destination(MdaTarget(argv), state, account="work", user="alice")
    assert isinstance(made, Mda)
    return made


def test_expansion() -> None:
    values = {"u": "alice", "a": "work", "i": "U1"}
    assert expand("%u-%a-%i-100%%", values) == "alice-work-U1-100%"
    assert expand("-d", values) == "-d"
    with pytest.raises(ValueError, match="%x"):
        expand("%x", values)
    with pytest.raises(ValueError, match="unknown"):
        Mda(["procmail", "50%"], Path("/nonexistent"), account="a", user="u")
    with pytest.raises(ValueError, match="empty"):
        Mda([], Path("/nonexistent"), account="a", user="u")


@pytest.mark.skipif(shutil.which("procmail") is None, reason="procmail is not installed")
async def test_procmail_into_maildir_and_mbox(env: MailEnv, tmp_path: Path) -> None:
    """procmail -m RCFILE, as a normal user runs it: a Maildir recipe, and an mbox recipe
    with -f (procmail writes the From line only with -f or -d)."""
    env.add_user("alice")
    messages = [b"Return-Path: <bob@example.org>\nSubject: one\n\nFrom here\n.dot\n",
                b"Subject: two\n\nbody\n"]
    for message in messages:
        env.put("alice", message)
    maildir, mboxfile = tmp_path / "Maildir", tmp_path / "mbox"
    (tmp_path / "md.rc").write_text(f"LOGFILE={tmp_path}/procmail.log\n:0\n{maildir}/\n")
    (tmp_path / "mbox.rc").write_text(f"LOGFILE={tmp_path}/procmail.log\n:0:\n{mboxfile}\n")
    async with running_server(env.config()) as (port, _):
        md = destination(tmp_path, "procmail", "-m", str(tmp_path / "md.rc"))
        report = await fetch(port, md, tmp_path / "state.json", Options(keep=True))
        assert (report.delivered, report.deleted, report.failed) == (2, 0, 0)
        again = await fetch(port, md, tmp_path / "state.json", Options(keep=True))
        assert (again.new, again.delivered) == (0, 0)  # recorded: not handed over twice
        box = destination(tmp_path, "procmail", "-f", "popbox@localhost", "-m",
                          str(tmp_path / "mbox.rc"))
        report = await fetch(port, box, tmp_path / "other-state.json")
        assert (report.delivered, report.deleted) == (2, 2)
    assert sorted(p.read_bytes() for p in (maildir / "new").iterdir()) == sorted(messages)
    parsed = read_mboxrd(mboxfile.read_bytes())
    assert [m for _, m in parsed] == messages
    assert all(line.startswith(b"From popbox@localhost ") for line, _ in parsed)
    assert env.messages("alice") == []


async def test_exit_statuses(env: MailEnv, tmp_path: Path) -> None:
    """0 delivered (and DELE'd), 1 reported with the program's last stderr line and left,
    75 ends the run (QUIT still removes what was recorded) and is tried again next run."""
    env.add_user("alice")
    subjects = ["ok1", "fail", "ok2", "later", "ok3"]
    body = {s: f"Subject: {s}\n\nbody of {s}\r\n".encode() for s in subjects}
    uidl = {s: env.put("alice", body[s]).name for s in subjects}
    script = mda_script(tmp_path)
    out = tmp_path / "out"
    mda = destination(tmp_path, str(script), "%i", "%u", "%a", "100%%", str(out))
    state = tmp_path / "state.json"
    async with running_server(env.config()) as (port, _):
        with pytest.raises(DeliveryDeferred, match="status 75"):
            await fetch_once(port, mda, state)
        got = mda_deliveries(out)
        assert sorted(got) == sorted([uidl["ok1"], uidl["ok2"]])
        args, _, message = got[uidl["ok1"]][0].partition(b"\n")
        assert args == repr([uidl["ok1"], "alice", "work", "100%"]).encode()
        assert message == b"Subject: ok1\n\nbody of ok1\n"  # LF line ends, CR LF too
        left = sorted(env.messages("alice"))
        assert left == sorted(body[s] for s in ("fail", "later", "ok3"))

        (out / "later").touch()
        fetcher = await fetch_once(port, mda, state)
        report = fetcher.report
        assert (report.delivered, report.failed, report.deleted) == (2, 1, 2)
        (note,) = [n for n in report.notes if "refused" in n]
        assert f"mailbox for {uidl['fail']} is unknown" in note
        assert "status 1" in note
        assert sorted(mda_deliveries(out)) == sorted(uidl[s] for s in subjects if s != "fail")
        assert env.messages("alice") == [body["fail"]]
    assert all(len(files) == 1 for files in mda_deliveries(out).values())


async def test_killed_mda_is_tried_again(env: MailEnv, tmp_path: Path) -> None:
    env.add_user("alice")
    paths = [env.put("alice", f"Subject: {s}\n\n{s}\n".encode()) for s in ("ok", "kill", "ok2")]
    script = mda_script(tmp_path)
    out = tmp_path / "out"
    mda = destination(tmp_path, str(script), "%i", str(out))
    async with running_server(env.config()) as (port, _):
        with pytest.raises(DeliveryDeferred, match="SIGKILL"):
            await fetch_once(port, mda, tmp_path / "state.json")
        assert sorted(mda_deliveries(out)) == [paths[0].name]
        assert len(env.messages("alice")) == 2
        (out / "kill").touch()
        report = await fetch(port, mda, tmp_path / "state.json")
    assert (report.delivered, report.deleted) == (2, 2)
    assert sorted(mda_deliveries(out)) == sorted(p.name for p in paths)
    assert env.messages("alice") == []


async def test_timeout_kills_the_program(env: MailEnv, tmp_path: Path) -> None:
    env.add_user("alice")
    env.put("alice", b"Subject: sleep\n\nzzz\n")
    script = mda_script(tmp_path)
    out = tmp_path / "out"
    mda = Mda([str(script), "%i", str(out)], tmp_path / "spool", account="a", user="alice",
              timeout=1.0)
    started = time.monotonic()
    async with running_server(env.config()) as (port, _):
        with pytest.raises(DeliveryDeferred, match="took more than 1 s"):
            await fetch_once(port, mda, tmp_path / "state.json")
    assert time.monotonic() - started < 30
    pid = int((out / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert len(env.messages("alice")) == 1


async def test_missing_program_defers(env: MailEnv, tmp_path: Path) -> None:
    env.add_user("alice")
    env.put("alice", b"Subject: x\n\nx\n")
    mda = destination(tmp_path, str(tmp_path / "no-such-mda"))
    async with running_server(env.config()) as (port, _):
        with pytest.raises(DeliveryDeferred, match=r"cannot run .*no-such-mda"):
            await fetch_once(port, mda, tmp_path / "state.json")
    assert len(env.messages("alice")) == 1


async def test_a_program_that_reads_nothing(env: MailEnv, tmp_path: Path) -> None:
    """The message is a file on the program's stdin, not a pipe: a program that exits
    without reading it (true, false) is judged by its status alone."""
    env.add_user("alice")
    env.put("alice", b"Subject: big\n\n" + b"x" * 1_000_000 + b"\n")
    async with running_server(env.config()) as (port, _):
        report = await fetch(port, destination(tmp_path, "false"), tmp_path / "state.json")
        assert (report.delivered, report.failed, report.deleted) == (0, 1, 0)
        assert report.notes[-1].endswith("false exited with status 1")
        report = await fetch(port, destination(tmp_path, "true"), tmp_path / "state.json")
        assert (report.delivered, report.failed, report.deleted) == (1, 0, 1)
    assert env.messages("alice") == []


MEMORY_CHILD = '''
import asyncio, json, sys
from pathlib import Path
from popbox.client.destinations import MdaTarget, open_destination
from popbox.client.fetcher import Fetcher, Options, Source
from popbox.client.state import StateFile

def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

port, out, state_path = sys.argv[1:4]
state = StateFile(Path(state_path))
state.open()
destination = open_destination(MdaTarget(("dd", f"of={out}", "status=none")), state,
                               account="a", user="alice")
source = Source(server="127.0.0.1", port=int(port), user="alice", password="secret",
                tls="none", timeout=60.0)
fetcher = Fetcher(source, destination, state, Options())
fetcher.prepare()
before = peak()
report = asyncio.run(fetcher.run())
print(json.dumps({"before": before, "after": peak(), "delivered": report.delivered}))
'''


async def test_a_large_message_in_bounded_memory(env: MailEnv, tmp_path: Path) -> None:
    """A 40 MB message reaches the MDA whole while the fetching process's peak memory
    (VmHWM, in a child process) grows by less than 8 MB."""
    env.add_user("alice")
    message = b"Subject: large\n\n" + (b"y" * 999 + b"\n") * 40_000
    env.put("alice", message)
    out = tmp_path / "delivered"
    script = tmp_path / "child.py"
    script.write_text(MEMORY_CHILD)
    async with running_server(env.config()) as (port, _):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), str(port), str(out), str(tmp_path / "state.json"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, stderr.decode()
    result = json.loads(stdout)
    assert result["delivered"] == 1
    assert out.stat().st_size == len(message)
    assert out.read_bytes() == message
    assert result["after"] - result["before"] < 8 * 1024, result


async def test_a_server_without_uidl(tmp_path: Path) -> None:
    """RFC 1939 §7: without UIDL, keep_days is refused (old mail could not be told from
    new); a run delivers, reports a refusal per message, DELEs unread what is over
    max_size with oversize = delete, and DELEs only what was delivered."""
    from test_fetch import NoUidlServer

    messages = [b"Subject: ok1\n\none\n", b"Subject: fail\n\ntwo\n",
                b"Subject: big\n\n" + b"z" * 2000 + b"\n", b"Subject: ok2\n\nfour\n"]
    fake = NoUidlServer(messages)
    server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    script = mda_script(tmp_path)
    out = tmp_path / "out"
    mda = destination(tmp_path, str(script), "[%i]", str(out))
    try:
        with pytest.raises(FetchRefused, match="no UIDL"):
            await fetch(port, mda, tmp_path / "state.json", Options(keep_days=3))
        report = await fetch(port, mda, tmp_path / "state.json",
                             Options(max_size=500, oversize="delete"))
    finally:
        server.close()
        await server.wait_closed()
    assert (report.new, report.delivered, report.failed, report.deleted) == (4, 2, 1, 3)
    assert fake.messages == {2: messages[1]}
    delivered = [data for files in mda_deliveries(out).values() for data in files]
    assert sorted(delivered) == sorted(b"['[]']\n" + m for m in (messages[0], messages[3]))
