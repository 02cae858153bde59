"""MemoryStore: the reference implementation of the store contract, and the test double.

Maildrops are lists of (UIDL, bytes) in a dict keyed by location, in delivery order. The
semantics are those every backend must have (popbox.store.base), in their plainest form:

* one session per maildrop: a second `open` answers Failure.IN_USE until the first
  session's `release` or `commit`;
* a snapshot: the session's listing is copied at `open`, so messages delivered later show
  up in the next session only;
* one `commit`, applied once: the snapshot's deleted messages are removed by UIDL, those
  already gone (see `remove`, "another agent") are counted as missing;
* `deliver` gives each message a UIDL unique within the store that never changes;
* `times()`: delivery and first retrieval (a commit's `seen`) on the store's `clock`.

Nothing here blocks, so nothing goes to a thread. State lives in one process only.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence, Set
from typing import TYPE_CHECKING

from popbox.proto.types import Index, Uidl, is_valid_uidl
from popbox.proto.wire import wire_size
from popbox.store.base import (
    GONE,
    CommitReport,
    Dated,
    Failure,
    Gone,
    Maildrop,
    MailStore,
    Reader,
    Snapshot,
    Times,
)
from popbox.store.last_login import LastLogin

CHUNK_SIZE = 64 * 1024


class MemoryStore:
    """Maildrops in memory. `chunk_size`: how a `MemoryReader` splits a message (tests use it to
    exercise streaming)."""

    def __init__(
        self, *, chunk_size: int = CHUNK_SIZE, clock: Callable[[], float] = time.time
    ) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.chunk_size = chunk_size
        self.clock = clock
        self._times: dict[tuple[str, Uidl], Times] = {}
        self._boxes: dict[str, list[tuple[Uidl, bytes]]] = {}
        self._seen: dict[str, set[Uidl]] = {}
        self._locked: set[str] = set()
        self._last_logins: dict[str, LastLogin] = {}
        self._serial = itertools.count(1)

    async def open(self, location: str) -> MemoryMaildrop | Failure:
        if location in self._locked:
            return Failure.IN_USE
        self._locked.add(location)
        return MemoryMaildrop(self, location, list(self._boxes.get(location, ())))

    async def aclose(self) -> None:
        """Nothing to release."""

    async def record_login(self, location: str, login: LastLogin) -> Failure | None:
        self._last_logins[location] = login
        return None

    async def last_login(self, location: str) -> LastLogin | Failure | None:
        return self._last_logins.get(location)

    async def deliver(self, location: str, message: bytes) -> Failure | None:
        self.add(location, message)
        return None

    # -- helpers for tests, the demo and "other agents" -----------------------------

    def add(self, location: str, message: bytes, uidl: str | None = None) -> Uidl:
        """Deliver synchronously, optionally with a chosen UIDL; returns the UIDL."""
        box = self._boxes.setdefault(location, [])
        if uidl is None:
            uidl = f"m{next(self._serial):08d}"
        if not is_valid_uidl(uidl) or any(u == uidl for u, _ in box):
            raise ValueError(f"UIDL {uidl!r} is invalid or already in {location!r}")
        box.append((Uidl(uidl), bytes(message)))
        self._times[location, Uidl(uidl)] = Times(self.clock(), None)
        return Uidl(uidl)

    def remove(self, location: str, uidl: Uidl) -> bool:
        """Remove a message behind any session's back (as another agent would)."""
        box = self._boxes.get(location, [])
        kept = [(u, data) for u, data in box if u != uidl]
        self._boxes[location] = kept
        return len(kept) != len(box)

    def contents(self, location: str) -> list[tuple[Uidl, bytes]]:
        """The maildrop as it is now."""
        return list(self._boxes.get(location, ()))

    def seen(self, location: str) -> frozenset[Uidl]:
        """UIDLs that a commit marked as seen."""
        return frozenset(self._seen.get(location, ()))

    def locked(self, location: str) -> bool:
        return location in self._locked

    # -- used by MemoryMaildrop ------------------------------------------------------

    def _find(self, location: str, uidl: Uidl) -> bytes | None:
        for u, data in self._boxes.get(location, ()):
            if u == uidl:
                return data
        return None

    def _unlock(self, location: str) -> None:
        self._locked.discard(location)


class MemoryReader:
    """A message in `step`-sized chunks (popbox.store.base.Reader)."""

    __slots__ = ("_data", "_offset", "_step", "done")

    def __init__(self, data: bytes, step: int) -> None:
        self._data = data
        self._step = step
        self._offset = 0
        self.done = False

    async def next(self) -> bytes:
        chunk = self._data[self._offset : self._offset + self._step]
        self._offset += len(chunk)
        self.done = self._offset >= len(self._data)
        return chunk

    def close(self) -> None:
        self.done = True


class MemoryMaildrop:
    """One session's locked view of an in-memory maildrop."""

    def __init__(self, store: MemoryStore, location: str, box: list[tuple[Uidl, bytes]]) -> None:
        self._store = store
        self._location = location
        self._messages = Snapshot(tuple(u for u, _ in box), tuple(wire_size(d) for _, d in box))
        self._open = True

    @property
    def messages(self) -> Snapshot:
        return self._messages

    async def times(self) -> Sequence[Times]:
        now = self._store.clock()
        return [self._store._times.get((self._location, u), Times(now, None))
                for u in self._messages.uidls]

    async def open_message(self, index: Index) -> MemoryReader | Gone:
        data = self._store._find(self._location, self._messages.uidls[index])
        return GONE if data is None else MemoryReader(data, self._store.chunk_size)

    async def commit(self, delete: Set[Index], seen: Set[Index]) -> CommitReport | Failure:
        if not self._open:
            raise RuntimeError("maildrop already committed or released")
        count = len(self._messages)
        if any(not 0 <= i < count for i in (*delete, *seen)):
            raise IndexError("message index out of range")
        self._open = False
        try:
            uidls = self._messages.uidls
            doomed = {uidls[i] for i in delete}
            flag = {uidls[i] for i in seen} - doomed
            present = {u for u, _ in self._store.contents(self._location)}
            for uidl in doomed & present:
                self._store.remove(self._location, uidl)
            self._store._seen.setdefault(self._location, set()).update(flag & present)
            now = self._store.clock()
            for uidl in flag & present:
                delivered, retrieved = self._store._times[self._location, uidl]
                if retrieved is None:
                    self._store._times[self._location, uidl] = Times(delivered, now)
            return CommitReport(
                deleted=len(doomed & present),
                missing=len((doomed | flag) - present),
                flagged=len(flag & present),
            )
        finally:
            self._store._unlock(self._location)

    async def release(self) -> None:
        if self._open:
            self._open = False
            self._store._unlock(self._location)


if TYPE_CHECKING:  # mypy proves the classes implement the contract

    def _conforms(
        store: MemoryStore, drop: MemoryMaildrop, reader: MemoryReader
    ) -> tuple[MailStore, Maildrop, Reader, Dated]:
        return store, drop, reader, drop
