"""`popbox fetch` as an agent: runs of accounts, one after another or side by side, and the
daemon that polls every account on its own interval.

A run (`Runner.run`) gets the account's password, opens its state file and destination,
and drives a `Fetcher`; whatever ends it becomes an `Outcome` with a sysexits.h status
(`classify`). Runs that share a state file never overlap: each state file has an
`asyncio.Lock`, so two runs of one account (or of two accounts given one `state`) wait
for each other instead of failing on the file's `flock`.

The daemon (`Daemon`) keeps one task per account: sleep, wait for one of `max_parallel`
places, run, and compute the next delay. The delay is the account's `interval`, never less
than the server's LOGIN-DELAY capability (RFC 2449 §6.8), plus up to 10 % jitter (only ever
longer, so LOGIN-DELAY holds). Temporary failures (exit class 75: [IN-USE], [LOGIN-DELAY],
[SYS/TEMP] of RFC 2449 §8 / RFC 3206, a refused or lost connection) double the delay each
time, up to an hour; [AUTH] failures are retried at the normal interval and reported once
until they change. SIGTERM and SIGINT call `Fetcher.stop()` on every run (the message in
flight is finished and recorded, recorded mail is DELE'd, QUIT is sent); runs still busy
after `STOP_GRACE` seconds are cancelled, which closes their connection without QUIT, so
the server deletes nothing (RFC 1939 §6) and the next run finds what was delivered. SIGHUP
re-reads the accounts file: added accounts start, removed ones stop after their run,
changed ones are replaced; a file that cannot be used changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from popbox.client import accounts as ac
from popbox.client import errors as er
from popbox.client.destinations import describe, open_destination
from popbox.client.fetcher import DeliveryDeferred, Fetcher, Progress, Report
from popbox.client.mbox import MboxBusy
from popbox.client.state import LastRun, StateBusy, StateError, StateFile

EX_OK, EX_USAGE, EX_DATAERR, EX_UNAVAILABLE, EX_IOERR, EX_TEMPFAIL = 0, 64, 65, 69, 74, 75
EX_PROTOCOL, EX_NOPERM, EX_CONFIG = 76, 77, 78
NAMES = {EX_OK: "EX_OK", EX_USAGE: "EX_USAGE", EX_DATAERR: "EX_DATAERR",
         EX_UNAVAILABLE: "EX_UNAVAILABLE",
         EX_IOERR: "EX_IOERR", EX_TEMPFAIL: "EX_TEMPFAIL", EX_PROTOCOL: "EX_PROTOCOL",
         EX_NOPERM: "EX_NOPERM", EX_CONFIG: "EX_CONFIG"}
# Most severe first: what a person must fix here, then what the server refuses for good,
# then what may go away by itself.
SEVERITY = (EX_USAGE, EX_CONFIG, EX_NOPERM, EX_UNAVAILABLE, EX_PROTOCOL, EX_IOERR,
            EX_DATAERR, EX_TEMPFAIL)
MAX_BACKOFF = 3600.0
JITTER = 0.1
STOP_GRACE = 8.0


def overall(statuses: Iterable[int]) -> int:
    """The exit status of a run of several accounts: 0, or the most severe of theirs."""
    found = set(statuses) - {EX_OK}
    return next((status for status in SEVERITY if status in found), EX_OK)


def classify(exc: BaseException) -> int | None:
    """The exit status for what ended a run; None for what is not ours to report."""
    match exc:
        case er.PopAuthError():
            return EX_NOPERM
        case er.PopPermanentError():
            return EX_UNAVAILABLE
        case er.PopError():
            return EX_TEMPFAIL
        case er.PopPlaintextRefused():
            return EX_CONFIG
        case er.PopUnsupportedError():
            return EX_UNAVAILABLE
        case er.PopConnectionError() | StateBusy() | MboxBusy():
            return EX_TEMPFAIL
        case er.PopProtocolError():
            return EX_PROTOCOL
        case StateError() | OSError():
            return EX_IOERR
        case er.PopUsageError() | ac.AccountsError():  # e.g. a user name with a line break
            return EX_USAGE
        case ac.PasswordCommandFailed():  # a locked keyring, an unreachable vault...
            return EX_TEMPFAIL
        case ac.PasswordError():
            return EX_USAGE
        case DeliveryDeferred():
            return EX_TEMPFAIL
        case _:
            return None


def explain(exc: BaseException, account: ac.Account) -> str:
    server, user = account.server, account.config.user
    match exc:
        case er.PopAuthError():
            return f"login to {server} as {user} refused: {exc}"
        case er.PopInUseError():
            return f"the mailbox of {user} on {server} is in use: {exc}"
        case er.PopError():
            return f"{server} answered {exc}"
        case er.PopProtocolError():
            return f"{server} broke the POP3 protocol: {exc}"
        case OSError() if not isinstance(exc, MboxBusy):
            name = f"{exc.filename}: " if exc.filename else ""
            return f"{name}{exc.strerror or exc}"
        case _:
            return str(exc)


@dataclass
class Outcome:
    """One account-run: what it did (`report`), its exit status and error."""

    account: ac.Account
    report: Report
    status: int = EX_OK
    error: str | None = None
    started: float = 0.0  # Unix time
    seconds: float = 0.0
    login_delay: float = 0.0  # the server's LOGIN-DELAY, seconds (0: none said)

    def as_json(self) -> dict[str, Any]:
        r = self.report
        return {
            "account": self.account.label, "server": self.account.server,
            "user": self.account.config.user, "destination": describe(self.account.target),
            "new": r.new, "delivered": r.delivered, "found": r.found, "deleted": r.deleted,
            "skipped": r.skipped, "failed": r.failed, "bytes": r.octets,
            "seconds": round(self.seconds, 3), "notes": list(r.notes),
            "error": None if self.error is None else {
                "status": self.status, "class": NAMES[self.status], "message": self.error},
        }


@dataclass
class Control:
    """A handle on one run, so that it can be told to stop before or while it runs."""

    stopped: bool = False
    running: bool = False
    fetcher: Fetcher | None = None

    def stop(self) -> None:
        self.stopped = True
        if self.fetcher is not None:
            self.fetcher.stop()


def _login_delay(fetcher: Fetcher | None) -> float:
    caps = fetcher.capabilities if fetcher is not None else None
    args = (caps or {}).get("LOGIN-DELAY") or []
    return float(args[0]) if args and args[0].isdigit() else 0.0


class Runner:
    """Runs accounts; `log(account, line)` gets the per-message lines, `progress(account)`
    gives a display for a run (or None), `env_password` is the one-off account's."""

    def __init__(self, *, log: Callable[[ac.Account, str], None] = lambda a, t: None,
                 progress: Callable[[ac.Account], Progress | None] = lambda a: None,
                 env_password: str | None = None) -> None:
        self._log = log
        self._progress = progress
        self._env_password = env_password
        self._locks: dict[Path, asyncio.Lock] = {}

    async def run(self, account: ac.Account, control: Control | None = None,
                  places: asyncio.Semaphore | None = None) -> Outcome | None:
        """Run `account` once its state file is free and then one of `places` (so that a
        run waiting for the file holds no place); None if `control` was stopped first."""
        control = control or Control()
        lock = self._locks.setdefault(account.state.absolute(), asyncio.Lock())
        async with lock, places or contextlib.nullcontext():
            if control.stopped:
                return None
            control.running = True
            try:
                return await self._run(account, control)
            finally:
                control.running = False
                control.fetcher = None

    async def _run(self, account: ac.Account, control: Control) -> Outcome:
        outcome = Outcome(account, Report(), started=time.time())
        clock = time.monotonic()
        state = StateFile(account.state)
        opened = False
        try:
            secret = await ac.password(account, self._env_password)
            source = ac.source(account, secret, ac.context(account))
            try:
                destination = open_destination(account.target, state,
                                               account=account.label,
                                               user=account.config.user)
            except ValueError as exc:  # a target the accounts file's checks let through
                raise ac.AccountsError(str(exc)) from None
            state.open()
            opened = True
            fetcher = Fetcher(source, destination, state, ac.options(account),
                              lambda text: self._log(account, text), self._progress(account))
            outcome.report = fetcher.report
            control.fetcher = fetcher
            if control.stopped:
                fetcher.stop()
            try:
                fetcher.prepare()
                await fetcher.run()
            finally:
                outcome.login_delay = _login_delay(fetcher)
            if fetcher.report.failed:  # each refused message is in the report's notes
                outcome.status = EX_DATAERR
                outcome.error = (f"the destination refused {fetcher.report.failed} "
                                 "message(s) for good; they are left on the server")
        except BaseException as exc:  # every failure we know becomes one line
            status = classify(exc)
            if status is None:
                state.close()
                raise
            outcome.status, outcome.error = status, explain(exc, account)
        outcome.seconds = time.monotonic() - clock
        try:
            # A run that never started is remembered too; one whose state file or
            # destination failed is not (its state in memory may be ahead of the file).
            if outcome.status != EX_IOERR:
                if not opened:
                    state.open()
                _remember(state, outcome)
        except StateError:
            pass
        finally:
            state.close()
        return outcome


def _remember(state: StateFile, outcome: Outcome) -> None:
    """Note the run in the state file, for `--list`; a failure to do so changes nothing."""
    account = outcome.account
    entry = state.account(account.config.server.lower(), account.port, account.config.user)
    r = outcome.report
    entry.last_run = LastRun(time=outcome.started, status=outcome.status,
                             result=outcome.error or "ok", delivered=r.delivered + r.found,
                             deleted=r.deleted)
    with contextlib.suppress(StateError):
        state.save()


def last_run(account: ac.Account) -> LastRun | None:
    """What the account's state file says of its latest run (None: never, or unreadable)."""
    try:
        entries = StateFile(account.state).peek()
    except StateError:
        return None
    key = (account.config.server.lower(), account.port, account.config.user)
    for entry in entries:
        if (entry.server, entry.port, entry.user) == key:
            return entry.last_run
    return None


async def run_all(runner: Runner, accounts: Sequence[ac.Account], max_parallel: int,
                  done: Callable[[Outcome], None]) -> list[Outcome]:
    """Run every account once, at most `max_parallel` at a time; `done` as each ends."""
    places = asyncio.Semaphore(max_parallel)

    async def one(account: ac.Account) -> Outcome:
        outcome = await runner.run(account, places=places)
        assert outcome is not None  # nothing stops these runs
        done(outcome)
        return outcome

    return list(await asyncio.gather(*(one(account) for account in accounts)))


@dataclass
class _Slot:
    account: ac.Account
    control: Control = field(default_factory=Control)
    task: asyncio.Task[None] | None = None
    failures: int = 0
    login_delay: float = 0.0
    last_error: str | None = None


class Daemon:
    """Polls accounts until SIGTERM or SIGINT. `load()` reads the accounts file (again on
    SIGHUP); `done(outcome, next_delay, repeated)` is told of every run (`repeated`: the
    same [AUTH] refusal as last time); `log` takes the daemon's own lines."""

    def __init__(self, load: Callable[[], ac.Accounts], runner: Runner,
                 done: Callable[[Outcome, float, bool], None], log: Callable[[str], None],
                 rng: random.Random | None = None) -> None:
        self._load = load
        self._runner = runner
        self._done = done
        self._log = log
        self._rng = rng or random.Random()
        self._slots: dict[str, _Slot] = {}
        self._places = asyncio.Semaphore(ac.DEFAULT_PARALLEL)
        self._parallel = ac.DEFAULT_PARALLEL
        self._stop = asyncio.Event()
        self._applied = False

    async def run(self, initial: ac.Accounts) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            self._apply(initial)
            await self._stop.wait()
            await self._shutdown()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return EX_OK

    def stop(self) -> None:
        self._stop.set()

    def reload(self) -> None:
        try:
            accounts = self._load()
        except ac.AccountsError as exc:
            first = str(exc).splitlines()[0]
            self._log(f"the accounts file was not reloaded: {first}")
            return
        self._apply(accounts)

    def _apply(self, accounts: ac.Accounts) -> None:
        if accounts.max_parallel != self._parallel:
            self._parallel = accounts.max_parallel
            self._places = asyncio.Semaphore(accounts.max_parallel)
        added: list[str] = []
        removed: list[str] = []
        changed: list[str] = []
        for name, slot in list(self._slots.items()):
            new = accounts.accounts.get(name)
            if new != slot.account:
                (removed if new is None else changed).append(name)
                self._retire(slot)
                del self._slots[name]
        for name, account in accounts.accounts.items():
            if name not in self._slots:
                if name not in changed:
                    added.append(name)
                self._slots[name] = self._start(account)
        parts = [f"{what} {', '.join(names)}" for what, names in
                 (("added", added), ("removed", removed), ("changed", changed)) if names]
        first, self._applied = not self._applied, True
        self._log(f"polling {len(self._slots)} account(s)" +
                  (f": {'; '.join(parts)}" if parts and not first else ""))

    def _start(self, account: ac.Account) -> _Slot:
        slot = _Slot(account)
        slot.task = asyncio.create_task(self._poll(slot), name=f"poll {account.label}")
        return slot

    def _retire(self, slot: _Slot) -> None:
        slot.control.stop()
        if not slot.control.running and slot.task is not None:
            slot.task.cancel()

    async def _poll(self, slot: _Slot) -> None:
        interval = slot.account.config.interval
        delay = interval * self._rng.uniform(0, JITTER)  # spread the first polls a little
        while True:
            await asyncio.sleep(delay)
            outcome = await self._runner.run(slot.account, slot.control, self._places)
            if outcome is None:
                return
            delay = self._next_delay(slot, outcome)
            repeated = outcome.status == EX_NOPERM and outcome.error == slot.last_error
            slot.last_error = outcome.error
            self._done(outcome, delay, repeated)
            if slot.control.stopped:
                return

    def _next_delay(self, slot: _Slot, outcome: Outcome) -> float:
        if outcome.login_delay:
            slot.login_delay = outcome.login_delay
        base = max(slot.account.config.interval, slot.login_delay)
        if outcome.status == EX_TEMPFAIL:
            slot.failures += 1
            delay = min(base * 2.0 ** min(slot.failures, 30), max(MAX_BACKOFF, base))
        else:
            slot.failures = 0
            delay = base
        jitter: float = self._rng.uniform(1, 1 + JITTER)
        return delay * jitter

    async def _shutdown(self) -> None:
        slots = list(self._slots.values())
        for slot in slots:
            self._retire(slot)
        tasks = [slot.task for slot in slots if slot.task is not None]
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=STOP_GRACE)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
