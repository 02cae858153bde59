"""The mail store contract.

A POP3 session sees its maildrop through a `Maildrop`: a snapshot listing taken when the
session opened it (numbers never change inside a session, RFC 1939 §4), a way to stream
one message's stored bytes, and ONE `commit` after QUIT (RFC 1939 §6, the UPDATE state).
DELE and RSET never reach the store. Opening a maildrop takes its exclusive lock; a
second open of the same maildrop anywhere answers `Failure.IN_USE` at once. The lock is
released by `release()` and dies with the process that holds it.

Expected outcomes are values (`Failure`), not exceptions.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, Iterator, Sequence, Set
from dataclasses import dataclass
from typing import NamedTuple, Protocol, overload

from popbox.proto.types import Uidl


class Failure(enum.Enum):
    """Why a store operation did not succeed."""

    IN_USE = "in-use"  # another session holds the maildrop lock
    TEMPORARY = "temporary"  # I/O or database trouble that may pass
    PERMANENT = "permanent"  # the maildrop is unusable (missing, corrupt, not a maildir)
    GONE = "gone"  # the message vanished underneath (another agent removed it)


class MessageInfo(NamedTuple):
    """One message of a snapshot: its unique-id and its size on the wire (proto.wire)."""

    uidl: Uidl
    size: int


class Snapshot(Sequence[MessageInfo]):
    """A session's listing, kept as two columns: index 0 is message number 1.

    Columns, not an object per message: a 100,000-message maildrop is two lists that a
    store builds without a Python loop, and STAT, LIST and UIDL work on whole columns.
    Indexing or iterating gives `MessageInfo` rows, made on the fly."""

    __slots__ = ("sizes", "uidls")

    def __init__(self, uidls: Sequence[Uidl], sizes: Sequence[int]) -> None:
        if len(uidls) != len(sizes):
            raise ValueError("a snapshot needs one size per unique-id")
        self.uidls = uidls
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.sizes)

    @overload
    def __getitem__(self, index: int) -> MessageInfo: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[MessageInfo]: ...
    def __getitem__(self, index: int | slice) -> MessageInfo | Sequence[MessageInfo]:
        if isinstance(index, slice):
            return Snapshot(self.uidls[index], self.sizes[index])
        return MessageInfo(self.uidls[index], self.sizes[index])

    def __iter__(self) -> Iterator[MessageInfo]:
        return map(MessageInfo, self.uidls, self.sizes)


@dataclass(frozen=True, slots=True)
class CommitReport:
    """What the UPDATE state did."""

    deleted: int  # messages removed
    missing: int  # messages to remove or flag that were already gone
    flagged: int  # messages marked seen


class Maildrop(Protocol):
    """A locked maildrop, opened for one session."""

    @property
    def messages(self) -> Snapshot:
        """The snapshot: index 0 is message number 1."""
        ...

    def read(self, index: int) -> AsyncGenerator[bytes, None]:
        """Stream message `index` (0-based) as stored, in chunks.

        Raises `MessageGone` (before the first chunk) when the message has vanished, and
        `StoreError` on other I/O trouble; the server turns both into one `-ERR` line.
        """
        ...

    async def commit(self, delete: Set[int], seen: Set[int]) -> CommitReport | Failure:
        """Apply the session's changes (0-based indexes) once, then release the lock."""
        ...

    async def release(self) -> None:
        """Give the lock up without changing anything. Idempotent; also after commit."""
        ...


class MailStore(Protocol):
    """A backend that holds maildrops, addressed by a location string from the userdb."""

    async def open(self, location: str) -> Maildrop | Failure:
        """Lock the maildrop at `location` and take its snapshot."""
        ...

    async def deliver(self, location: str, message: bytes) -> Failure | None:
        """Store one new message durably (used by delivery agents, the demo and tests)."""
        ...

    async def aclose(self) -> None:
        """Release what the store holds for the process (pools, lock connections)."""
        ...


class StoreError(Exception):
    """An I/O failure while streaming a message."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.value)
        self.failure = failure


class MessageGone(StoreError):
    """The message was removed by another agent after the snapshot was taken."""

    def __init__(self) -> None:
        super().__init__(Failure.GONE)
