"""SIGKILL at random moments of runs delivering through an MDA and over LMTP (RFC 2033),
while the mailbox keeps receiving mail: no message is ever lost, and each kill can add at
most one duplicate (the message between its success reply and its record). Each run is a
child Python process running a Fetcher; DELE before the record never happens, and
nothing is removed without QUIT (RFC 1939 §6). The seed is printed (POPBOX_KILL_SEED
replays it)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import re
import sys
import time
from pathlib import Path

from delivery_helpers import mda_deliveries, mda_script
from helpers import MailEnv, running_server
from pg import LmtpProcess

KILLS = 30
FIRST = 12  # messages in the mailbox at the start
EACH = 2  # messages arriving before each run

CHILD = '''
import asyncio, json, sys, time
from pathlib import Path
from popbox.client import errors as er
from popbox.client.destinations import LmtpTarget, MdaTarget, open_destination
from popbox.client.fetcher import DeliveryDeferred, Fetcher, Options, Source
from popbox.client.state import StateFile

port, kind, where, state_path = sys.argv[1:5]
target = MdaTarget(tuple(json.loads(where))) if kind == "mda" else LmtpTarget(where, "bob")
state = StateFile(Path(state_path))
state.open()
source = Source(server="127.0.0.1", port=int(port), user="alice", password="secret",
                tls="none", timeout=20.0)
for attempt in range(200):  # a killed run's session may still hold the maildrop
    fetcher = Fetcher(source, open_destination(target, state, account="k", user="alice"),
                      state, Options(batch=4))
    fetcher.prepare()
    print("ready", flush=True)
    try:
        report = asyncio.run(fetcher.run())
        break
    except er.PopInUseError:
        time.sleep(0.05)
print(json.dumps({"delivered": report.delivered, "deleted": report.deleted}), flush=True)
'''


async def run_child(script: Path, args: list[str], kill_after: float | None) -> str:
    """One run; with `kill_after`, SIGKILL that many seconds after it is ready (its
    imports done). Returns its stdout."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line == b"ready\n", (line, await proc.stderr.read() if proc.stderr else b"")
        if kill_after is not None:
            try:
                await asyncio.wait_for(proc.wait(), kill_after)
            except TimeoutError:
                # It may have ended between the timeout and the kill.
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if kill_after is None:
        assert proc.returncode == 0, err.decode()
    return out.decode()


async def kill_runs(env: MailEnv, tmp_path: Path, kind: str, where: str,
                    window: float) -> tuple[list[str], int]:
    """Runs killed at random moments (then one run to the end), mail arriving before
    each; the Subjects sent, and the number of runs killed before they ended."""
    seed = int(os.environ.get("POPBOX_KILL_SEED", time.time_ns() % 2**32))
    print(f"kill test seed {seed} ({kind})")
    rng = random.Random(seed)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    sent: list[str] = []

    def arrive(count: int) -> None:
        for _ in range(count):
            subject = f"ok{len(sent):04d}"
            sent.append(subject)
            env.put("alice", f"Subject: {subject}\n\nbody {subject}\n".encode())

    arrive(FIRST)
    killed = 0
    async with running_server(env.config()) as (port, _):
        args = [str(port), kind, where, str(tmp_path / "state.json")]
        for _ in range(KILLS):
            arrive(EACH)
            out = await run_child(script, args, rng.uniform(0, window))
            killed += not out.strip().endswith("}")
        await run_child(script, args, None)
        out = await run_child(script, args, None)  # nothing left: nothing more delivered
        assert json.loads(out.splitlines()[-1]) == {"delivered": 0, "deleted": 0}
    assert env.messages("alice") == []
    return sent, killed


async def test_mda_kills_lose_nothing(env: MailEnv, tmp_path: Path) -> None:
    env.add_user("alice")
    script = mda_script(tmp_path)
    out = tmp_path / "out"
    where = json.dumps([str(script), "%i", str(out)])
    sent, killed = await kill_runs(env, tmp_path, "mda", where, 0.8)
    subjects = collections.Counter(
        re.search(rb"(?m)^Subject: (\S+)", data).group(1).decode()  # type: ignore[union-attr]
        for files in mda_deliveries(out).values() for data in files)
    assert set(subjects) == set(sent)  # none lost
    duplicates = sum(subjects.values()) - len(sent)
    print(f"mda: {len(sent)} messages, {killed} of {KILLS} runs killed, "
          f"{duplicates} duplicates")
    assert duplicates <= killed


async def test_lmtp_kills_lose_nothing(env: MailEnv, tmp_path: Path) -> None:
    env.add_user("alice")
    env.add_user("bob")
    process = LmtpProcess(env.config_file(lmtp={"listen": ["127.0.0.1:0"]}))
    try:
        sent, killed = await kill_runs(env, tmp_path, "lmtp", f"127.0.0.1:{process.port}",
                                       0.4)
    finally:
        process.stop()
    subjects = collections.Counter(
        re.search(rb"(?m)^Subject: (\S+)", data).group(1).decode()  # type: ignore[union-attr]
        for data in env.messages("bob"))
    assert set(subjects) == set(sent)
    duplicates = sum(subjects.values()) - len(sent)
    print(f"lmtp: {len(sent)} messages, {killed} of {KILLS} runs killed, "
          f"{duplicates} duplicates")
    assert duplicates <= killed
