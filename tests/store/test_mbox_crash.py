"""kill -9 during the QUIT rewrite of an mbox spool (popbox.store.mbox_rewrite): at every
file-changing system call of the commit, before it or halfway through a write, and with
new mail appended by another program before popbox sees the spool again. Afterwards the
next open finishes the rewrite: no message is lost, the deleted ones are either all
there or all gone, the appended one is kept, and the spool parses as an mbox (RFC 4155)
for Python's mailbox and for GNU mailutils.

A child process runs the session; for each crash point it forks a grandchild that opens
the maildrop and commits, counting its calls to os.write, os.pwrite, os.fsync,
os.ftruncate, os.rename, os.replace and os.unlink, and SIGKILLs itself at call n."""

from __future__ import annotations

import json
import mailbox
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mbox_support import Procmail, contents

from popbox.store.mbox import MboxStore

CHILD = r"""
import asyncio, json, os, signal, sys
from popbox.store.mbox import MboxStore

root, points, delete = sys.argv[1], json.loads(sys.argv[2]), set(json.loads(sys.argv[3]))
NAMES = ("write", "pwrite", "fsync", "ftruncate", "rename", "replace", "unlink")

def run(n, torn):
    calls = [0]
    for name in NAMES:
        real = getattr(os, name)
        def wrapped(*args, _real=real, _name=name):
            calls[0] += 1
            if calls[0] == n:
                if torn and _name in ("write", "pwrite"):
                    data = bytes(args[1])
                    half = data[: max(1, len(data) // 2)]
                    _real(args[0], half, *args[2:])
                os.kill(os.getpid(), signal.SIGKILL)
            return _real(*args)
        setattr(os, name, wrapped)

    async def session():
        store = MboxStore(chunk_size=4096)
        drop = await store.open(os.path.join(dirname, "alice"))
        await drop.commit(delete, set())
    asyncio.run(session())
    return calls[0]

for n, torn in points:
    dirname = os.path.join(root, f"{n}-{int(torn)}")
    pid = os.fork()
    if pid == 0:
        count = run(n, torn)
        print(json.dumps(count), flush=True)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print(json.dumps([n, torn, os.WIFSIGNALED(status)]), flush=True)
"""

MESSAGES = [
    b"Subject: m%d\n\n" % i + b"line of message %d\n" % i * (40 + 300 * (i % 3))
    for i in range(6)
]
DELETE = [0, 2, 3]  # the first one: the whole tail moves


def _points(root: Path, template: Path, points: list[tuple[int, bool]]) -> list[str]:
    for n, torn in points:
        shutil.copytree(template, root / f"{n}-{int(torn)}", symlinks=True)
    result = subprocess.run([sys.executable, "-c", CHILD, str(root), json.dumps(points),
                             json.dumps(DELETE)], capture_output=True, text=True, timeout=120,
                            check=True)
    return result.stdout.splitlines()


def _parse(spool: Path) -> int:
    """How many messages two independent readers find (Python's mailbox module and GNU
    mailutils' `messages`, which also wants the empty line before each From line); they
    must agree."""
    box = mailbox.mbox(str(spool), create=False)
    try:
        count = len(box)
    finally:
        box.close()
    out = subprocess.run(["messages", str(spool)], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    assert out.strip().endswith(f": {count}"), out
    return count


@pytest.mark.timeout(300)
async def test_kill_9_at_every_step_of_the_rewrite(tmp_path: Path, procmail: Procmail) -> None:
    folder = tmp_path / "template"
    folder.mkdir()
    store = MboxStore(chunk_size=4096)
    spool = folder / "alice"
    for m in MESSAGES:
        assert await store.deliver(str(spool), m) is None
    assert await contents(store, str(spool)) == MESSAGES  # the index exists

    runs = tmp_path / "runs"
    runs.mkdir()
    (count_line,) = _points(runs, folder, [(0, False)])[:1]  # n = 0: never killed
    total = int(count_line)
    assert total > 10, total  # the commit makes the file-changing calls it should
    points = [(n, torn) for n in range(1, total + 1) for torn in (False, True)]
    lines = _points(runs, folder, points)
    results = [json.loads(line) for line in lines if line.startswith("[")]
    assert [(n, torn) for n, torn, _ in results] == points
    assert all(killed for _, _, killed in results)

    kept = [m for i, m in enumerate(MESSAGES) if i not in DELETE]
    # longer than the deleted messages: the spool grows past its old size again
    late = b"Subject: late\n\n" + b"delivered after the crash\n" * 1000
    outcomes = set()
    for n, torn in points:
        where = runs / f"{n}-{int(torn)}"
        spool = where / "alice"
        appended = (n % 2 == 0) != torn  # at every n, one of the two runs
        if appended:
            # another program breaks the dead process's dotlock and delivers
            Path(str(spool) + ".lock").unlink(missing_ok=True)
            procmail(spool, late)
        got = await contents(store, str(spool))
        extra = [late] if appended else []
        assert got in ([*MESSAGES, *extra], [*kept, *extra]), (n, torn)
        outcomes.add(len(got) - len(extra))
        assert not list((where / ".popbox").glob("*.rewrite*")), (n, torn)
        assert _parse(spool) == len(got), (n, torn)
        assert await contents(store, str(spool)) == got  # stable once recovered
    assert outcomes == {len(MESSAGES), len(kept)}  # crashes before and after the point
