"""Helpers for the tests of `popbox fetch`'s delivery and retention (tests/client/): a
Source for a popbox on 127.0.0.1, one library-level run, and an MDA script the tests write
that does what each message's Subject asks."""

from __future__ import annotations

import sys
from pathlib import Path

from popbox.client.fetcher import Destination, Fetcher, Options, Progress, Report, Source
from popbox.client.state import StateFile


def source(port: int, user: str = "alice") -> Source:
    return Source(server="127.0.0.1", port=port, user=user, password="secret", tls="none",
                  timeout=10.0)


async def fetch_once(port: int, destination: Destination, state_path: Path,
                     options: Options | None = None, progress: Progress | None = None
                     ) -> Fetcher:
    """One run (the state file opened and closed around it); the fetcher, whose `report`
    holds the counts also when `run` raised."""
    state = StateFile(state_path)
    state.open()
    try:
        fetcher = Fetcher(source(port), destination, state, options or Options(),
                          progress=progress)
        fetcher.prepare()
        await fetcher.run()
        return fetcher
    finally:
        state.close()


async def fetch(port: int, destination: Destination, state_path: Path,
                options: Options | None = None, progress: Progress | None = None) -> Report:
    return (await fetch_once(port, destination, state_path, options, progress)).report


# The MDA: reads the message from stdin; by its Subject: "ok..." is delivered into OUT as
# a file named by the UIDL (argv[1]) holding the arguments and the message; "fail" says
# so on stderr and exits 1; "later" exits 75 and "kill" kills itself with SIGKILL, each
# until a file of that name exists in OUT; "sleep" writes its pid and sleeps.
MDA_SCRIPT = '''#!{python}
import os, re, signal, sys, time
out = sys.argv[-1]
data = sys.stdin.buffer.read()
subject = re.search(rb"(?m)^Subject: (\\S+)", data).group(1).decode()
def allowed(name):
    return os.path.exists(os.path.join(out, name))
if subject == "fail":
    sys.stderr.write("first line\\nmailbox for %s is unknown\\n" % sys.argv[1])
    sys.exit(1)
if subject == "later" and not allowed("later"):
    sys.exit(75)
if subject == "kill" and not allowed("kill"):
    os.kill(os.getpid(), signal.SIGKILL)
if subject == "sleep":
    open(os.path.join(out, "pid"), "w").write(str(os.getpid()))
    time.sleep(120)
tmp = os.path.join(out, ".tmp-" + sys.argv[1])
with open(tmp, "wb") as f:
    f.write(repr(sys.argv[1:-1]).encode() + b"\\n" + data)
    f.flush()
    os.fsync(f.fileno())
os.rename(tmp, os.path.join(out, "%s.%d" % (sys.argv[1], time.time_ns())))
'''


def mda_script(folder: Path) -> Path:
    """Write the MDA script (and its OUT folder, `folder/out`); returns the script."""
    script = folder / "mda.py"
    script.write_text(MDA_SCRIPT.format(python=sys.executable))
    script.chmod(0o755)
    (folder / "out").mkdir()
    return script


def mda_deliveries(out: Path) -> dict[str, list[bytes]]:
    """What the MDA script delivered: UIDL -> the files it wrote (arguments line, message)."""
    found: dict[str, list[bytes]] = {}
    for path in sorted(out.iterdir()):
        if "." in path.name and not path.name.startswith("."):
            found.setdefault(path.name.rpartition(".")[0], []).append(path.read_bytes())
    return found


class Recorder:
    """A progress display that remembers what it was told."""

    def __init__(self) -> None:
        self.begun: list[tuple[int, int]] = []
        self.octets = 0
        self.messages = 0

    def begin(self, messages: int, octets: int) -> None:
        self.begun.append((messages, octets))

    def advance(self, octets: int) -> None:
        self.octets += octets

    def done_message(self) -> None:
        self.messages += 1
