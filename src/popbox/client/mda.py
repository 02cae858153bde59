"""Delivery through a mail delivery agent (procmail, maildrop, dovecot-lda, a script):
one run of the program per message, the message on its stdin.

The message is spooled first (`popbox.client.spool`), with LF line ends as an MTA hands a
message to an MDA, and the program's stdin is that file: it reads the whole message at
its own pace, and whether it reads all of it or exits early changes nothing (no broken
pipe). A message that was not downloaded completely is never handed over. No `From `
line is added: procmail and maildrop write one themselves when they deliver into an mbox
(from the Return-Path, else their own default), and Maildir deliveries need none.

The program runs without a shell, from the argument list as given, in its own process
group; in its arguments (never in the program's name) `%u` is the account's user, `%a`
the account's name, `%i` the message's UIDL (empty from a server without UIDL) and `%%` a
`%`. Its exit status follows sysexits(3), as MTAs read it:

- 0: delivered. The fetcher records the message at once, then DELEs it (as the
  retention rule says);
- 75 (EX_TEMPFAIL), death by a signal, a timeout (the group is killed), a program that
  cannot be started: `DeliveryDeferred`, the message stays on the server, the run ends;
- any other status: `DeliveryFailed`, with the last line the program wrote on stderr:
  that message stays on the server and is reported, the run goes on.

A kill of `popbox fetch` after the program exited 0 but before the record is written
delivers that message again on the next run: MDA delivery is at least once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from popbox.client.fetcher import DeliveryDeferred, DeliveryFailed
from popbox.client.spool import SpoolWriter
from popbox.client.state import Journal

EX_TEMPFAIL = 75
TIMEOUT = 600.0  # seconds a program may take over one message
_STDERR_TAIL = 4096
_PERCENT = re.compile(r"%(.?)")


def expand(argument: str, values: dict[str, str]) -> str:
    """`%u`, `%a`, `%i` and `%%` replaced; any other `%` sequence is a ValueError."""

    def one(match: re.Match[str]) -> str:
        letter = match.group(1)
        if letter == "%":
            return "%"
        if letter in values:
            return values[letter]
        raise ValueError(f"unknown %-sequence {match.group(0)!r} in {argument!r} "
                         "(%u user, %a account, %i UIDL, %% a %)")

    return _PERCENT.sub(one, argument)


def _last_line(data: bytes) -> str:
    lines = data.decode("utf-8", "replace").strip().splitlines()
    return lines[-1].strip() if lines else ""


def _signal(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


class Mda:
    records_each = True

    def __init__(self, argv: Sequence[str], spool_dir: Path, *, account: str, user: str,
                 timeout: float = TIMEOUT) -> None:
        if not argv or not argv[0]:
            raise ValueError("the MDA's command is empty")
        self.argv = tuple(argv)
        self.spool_dir = spool_dir
        self.account = account
        self.user = user
        self.timeout = timeout
        for argument in self.argv[1:]:
            expand(argument, {"u": "", "a": "", "i": ""})  # refuse bad sequences at once

    def open(self) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def has(self, key: str) -> bool:
        return False  # what a program did with a message cannot be asked: the state decides

    def writer(self, key: str, uidl: str) -> SpoolWriter:
        values = {"u": self.user, "a": self.account, "i": uidl}
        argv = [self.argv[0], *(expand(a, values) for a in self.argv[1:])]
        return SpoolWriter(self.spool_dir, lambda message: self._run(argv, message), lf=True)

    def commit(self, uidls: Sequence[str], journal: Journal) -> None:
        journal.record(list(uidls))

    def close(self) -> None:
        pass

    def _run(self, argv: list[str], message: BinaryIO) -> None:
        name = argv[0]
        with tempfile.TemporaryFile(dir=self.spool_dir) as errors:
            try:
                proc = subprocess.Popen(argv, stdin=message, stdout=subprocess.DEVNULL,
                                        stderr=errors, start_new_session=True)
            except OSError as exc:
                raise DeliveryDeferred(f"cannot run {name}: {exc.strerror or exc}") from None
            try:
                status = proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise DeliveryDeferred(f"{name} took more than {self.timeout:g} s: "
                                       "killed") from None
            except BaseException:  # the fetcher is going down: leave no program behind
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
            size = errors.seek(0, os.SEEK_END)
            errors.seek(max(0, size - _STDERR_TAIL))
            said = _last_line(errors.read())
        if status == 0:
            return
        because = f": {said}" if said else ""
        if status < 0:
            raise DeliveryDeferred(f"{name} was killed by signal {_signal(-status)}{because}")
        if status == EX_TEMPFAIL:
            raise DeliveryDeferred(f"{name} exited with status 75 (temporary failure)"
                                   f"{because}")
        raise DeliveryFailed(f"{name} exited with status {status}{because}")
