"""`popbox fetch`'s memory: which messages (by UIDL) each account has delivered already.

One JSON file holds every account (server, port, user) fetched with it:

    {"version": 1, "accounts": [{"server": "pop.example.org", "port": 995, "user": "alice",
      "delivered": ["uidl", ...], "delivered_at": {"uidl": 1767225600.0, ...},
      "oversize_reported": ["uidl", ...], "pending": null}]}

`delivered_at` is when each UIDL was first recorded as delivered (wall-clock seconds; what
`keep_days` counts from); `oversize_reported` lists messages over `max_size` that a run
has reported already, so each is reported once. Both are optional: files written before
them read as empty. A message over `max_size` whose headers were delivered in its place is
recorded in `delivered` as `"headers " + UIDL` (a space never occurs in a UIDL, RFC 1939
§7), so the stand-in is not delivered twice and the message itself is still new.

`last_run` (absent in older files) is what the latest run of the account did:
`{"time": 1764640800.0, "result": "ok" or the error, "status": 0, "delivered": 3,
"deleted": 3}`, for `popbox fetch --list`.

`pending` is set only while messages are being appended to an mbox (see
`popbox.client.mbox`): where the append started, what it holds, and which UIDLs it
delivers, so that a run after a crash can tell a finished append from a torn one.

The file is replaced atomically and durably (popbox.fsutil.write_atomic: a temporary file
in the same folder, fsynced, renamed over the old one, the folder fsynced). A run holds an
exclusive `flock` on `<file>.lock` from start to end, so two runs never interleave; the
lock dies with its holder, so a killed run leaves none behind. UIDLs the server no longer
lists are forgotten at the start of a session (`forget_missing`), so the file does not grow
without bound.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from popbox.fsutil import read_regular, write_atomic

VERSION = 1
HEADERS = "headers "  # the record of a headers-only stand-in: HEADERS + UIDL


class StateError(Exception):
    """The state file cannot be read, written or locked."""


class StateBusy(StateError):
    """Another `popbox fetch` holds the state file."""


@dataclass
class Pending:
    """An mbox append in progress: `length` octets (`prefix` then the spool files, in
    order) written at `offset` of the mbox at `path`; they deliver `uidls`."""

    path: str
    offset: int
    length: int
    prefix: str
    spool: list[str]
    uidls: list[str]


@dataclass
class LastRun:
    """How the latest run of an account ended: when (Unix time), its exit status and
    result ("ok" or the error), and what it did."""

    time: float
    status: int
    result: str
    delivered: int = 0
    deleted: int = 0


@dataclass
class Account:
    server: str
    port: int
    user: str
    delivered: set[str] = field(default_factory=set)
    pending: Pending | None = None
    delivered_at: dict[str, float] = field(default_factory=dict)
    oversize_reported: set[str] = field(default_factory=set)
    last_run: LastRun | None = None


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.spool_dir = path.with_name(path.name + ".spool")
        self._accounts: list[Account] = []
        self._lock_fd: int | None = None

    def open(self) -> None:
        """Create the folder, take the lock (StateBusy if held), read the file."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path.with_name(self.path.name + ".lock"),
                         os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateBusy(f"another popbox fetch is using {self.path}") from None
        self._lock_fd = fd
        try:
            self._accounts = self._read()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _read(self) -> list[Account]:
        try:
            raw = read_regular(self.path)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(raw)
            if data.get("version") != VERSION:
                raise ValueError(f"unknown version {data.get('version')!r}")
            return [_account(item) for item in data["accounts"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateError(f"{self.path} is not a popbox fetch state file: {exc}") from None

    def peek(self) -> list[Account]:
        """The accounts as the file has them now, without the lock (the file is only
        ever replaced whole, so what is read is one consistent version)."""
        return self._read()

    def accounts(self) -> list[Account]:
        return list(self._accounts)

    def account(self, server: str, port: int, user: str) -> Account:
        for account in self._accounts:
            if (account.server, account.port, account.user) == (server, port, user):
                return account
        account = Account(server, port, user)
        self._accounts.append(account)
        return account

    def save(self) -> None:
        data = {"version": VERSION, "accounts": [_plain(a) for a in self._accounts]}
        try:
            # what was delivered must stay recorded after a power cut, or it is fetched again
            write_atomic(self.path, json.dumps(data, indent=1).encode() + b"\n")
        except OSError as exc:
            raise StateError(f"cannot write {self.path}: {exc.strerror or exc}") from None


class Journal:
    """One account's part of the state file: what the fetcher and destinations record."""

    def __init__(self, state: StateFile, account: Account,
                 clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.account = account
        self.clock = clock

    def delivered(self, uidl: str) -> bool:
        return uidl in self.account.delivered

    def forget_missing(self, present: set[str]) -> bool:
        """Drop UIDLs the server no longer lists (saved with the next change); True if
        anything was dropped."""
        account = self.account
        before = (len(account.delivered), len(account.delivered_at),
                  len(account.oversize_reported))
        account.delivered = {u for u in account.delivered
                             if u.removeprefix(HEADERS) in present}
        account.delivered_at = {u: t for u, t in account.delivered_at.items()
                                if u in account.delivered}
        account.oversize_reported &= present
        return before != (len(account.delivered), len(account.delivered_at),
                          len(account.oversize_reported))

    def begin(self, pending: Pending) -> None:
        """Durably note an mbox append before it starts."""
        self.account.pending = pending
        self.state.save()

    def record(self, uidls: list[str]) -> None:
        """Durably note `uidls` as delivered (and any pending append as finished), and
        when, for those not delivered before."""
        now = self.clock()
        for uidl in uidls:
            self.account.delivered_at.setdefault(uidl, now)
        self.account.delivered.update(uidls)
        self.account.oversize_reported.difference_update(uidls)
        self.account.pending = None
        self.state.save()

    def abandon(self) -> None:
        """The pending append was undone: forget it."""
        self.account.pending = None
        self.state.save()


def _account(item: dict[str, Any]) -> Account:
    pending = item.get("pending")
    last = item.get("last_run")
    return Account(
        server=str(item["server"]), port=int(item["port"]), user=str(item["user"]),
        delivered={str(u) for u in item["delivered"]},
        pending=None if pending is None else Pending(
            path=str(pending["path"]), offset=int(pending["offset"]),
            length=int(pending["length"]), prefix=str(pending["prefix"]),
            spool=[str(s) for s in pending["spool"]], uidls=[str(u) for u in pending["uidls"]]),
        delivered_at={str(u): float(t) for u, t in item.get("delivered_at", {}).items()},
        oversize_reported={str(u) for u in item.get("oversize_reported", [])},
        last_run=None if last is None else LastRun(
            time=float(last["time"]), status=int(last["status"]), result=str(last["result"]),
            delivered=int(last["delivered"]), deleted=int(last["deleted"])),
    )


def _plain(account: Account) -> dict[str, Any]:
    return {
        "server": account.server, "port": account.port, "user": account.user,
        "delivered": sorted(account.delivered),
        "delivered_at": dict(sorted(account.delivered_at.items())),
        "oversize_reported": sorted(account.oversize_reported),
        "pending": None if account.pending is None else asdict(account.pending),
        "last_run": None if account.last_run is None else asdict(account.last_run),
    }
