"""What `popbox fetch` prints: one line per account-run (or one JSON object with `--json`),
`--list`'s table, and on a terminal a `rich` progress display per account (messages,
bytes, rate, time left) fed by the fetcher's `Progress` hook."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from popbox.client import accounts as ac
from popbox.client.agent import NAMES, Outcome, last_run
from popbox.client.destinations import describe
from popbox.client.state import LastRun

if TYPE_CHECKING:  # rich is imported only when a display is drawn: it is slow to import
    from rich.progress import Progress, TaskID

PREFIX = "popbox fetch: "


def summary(outcome: Outcome) -> str:
    """The line for a run that succeeded."""
    account, report = outcome.account, outcome.report
    who = f"{account.config.user}@{account.server}"
    if not report.delivered and not report.found:
        text = f"no new mail for {who}"
    else:
        text = (f"{report.delivered} new message(s) for {who} delivered to "
                f"{describe(account.target)}")
        if report.found:
            text += f", {report.found} found delivered by an interrupted run"
    if report.deleted:
        text += f"; {report.deleted} deleted on the server"
    if report.left:
        text += f"; {report.left} left for the next run (limit)"
    if report.failed:
        text += f"; {report.failed} refused by the destination, left on the server"
    if report.stopped:
        text += "; stopped early"
    return text


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2f}"


def _named(account: ac.Account, text: str) -> str:
    return f"{PREFIX}{account.name}: {text}" if account.name is not None else PREFIX + text


class Output:
    """Prints outcomes: a line to stdout (or a JSON object), errors to stderr; each line
    flushed at once, so that stdout and stderr sent to one place keep their order."""

    def __init__(self, *, as_json: bool, quiet: bool, out: TextIO | None = None,
                 err: TextIO | None = None) -> None:
        self.as_json = as_json
        self.quiet = quiet
        self._out = out
        self._err = err

    @property
    def out(self) -> TextIO:
        return self._out or sys.stdout

    @property
    def err(self) -> TextIO:
        return self._err or sys.stderr

    def line(self, text: str, *, error: bool = False) -> None:
        stream = self.err if error else self.out
        print(text, file=stream, flush=True)

    def log(self, account: ac.Account, text: str) -> None:
        """A `-v` line."""
        self.line(_named(account, text), error=True)

    def outcome(self, outcome: Outcome, next_delay: float | None = None) -> None:
        if self.as_json:
            self.line(json.dumps(outcome.as_json()))
        after = "" if next_delay is None else f"; next poll in {_seconds(next_delay)} s"
        if not self.as_json:  # refused, skipped or oversized messages, and the like
            for note in outcome.report.notes:
                self.line(_named(outcome.account, note), error=True)
        if outcome.error is not None:
            self.line(_named(outcome.account, outcome.error + after), error=True)
        elif not self.as_json and not self.quiet:
            self.line(_named(outcome.account, summary(outcome) + after))


def _when(run: LastRun) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(run.time))


def list_accounts(accounts: list[ac.Account], output: Output) -> None:
    """`--list`: each account, where it delivers, and its last run."""
    for account in accounts:
        run = last_run(account)
        if output.as_json:
            item: dict[str, Any] = {
                "account": account.label, "server": account.server,
                "user": account.config.user, "destination": describe(account.target),
                "state": str(account.state), "interval": account.config.interval,
                "last_run": None if run is None else {
                    "time": run.time, "status": run.status, "class": NAMES.get(run.status),
                    "result": run.result, "delivered": run.delivered, "deleted": run.deleted},
            }
            output.line(json.dumps(item))
            continue
        if run is None:
            last = "never run"
        else:
            last = (f"last run {_when(run)}: {run.result}, {run.delivered} delivered, "
                    f"{run.deleted} deleted")
        output.line(f"{account.label}\t{account.config.user}@{account.server}\t"
                    f"{describe(account.target)}\t{last}")


class _AccountProgress:
    """The `Progress` hook of one account's run, drawn as one row."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task
        self._messages = 0
        self._done = 0

    def begin(self, messages: int, octets: int) -> None:
        self._messages = messages
        self._progress.update(self._task, total=octets, messages=f"0/{messages}")

    def advance(self, octets: int) -> None:
        self._progress.advance(self._task, octets)

    def done_message(self) -> None:
        self._done += 1
        self._progress.update(self._task, messages=f"{self._done}/{self._messages}")


class Display:
    """A live display of every running account (rows stay when a run ends)."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.console = Console(file=stream)
        self.progress = Progress(
            TextColumn("{task.description}"), TextColumn("{task.fields[messages]} msgs"),
            BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
            console=self.console, transient=False)

    def __enter__(self) -> Display:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def hook(self, account: ac.Account) -> _AccountProgress:
        task = self.progress.add_task(account.label, total=None, messages="-")
        return _AccountProgress(self.progress, task)
