"""The mail store contract.

A POP3 session sees its maildrop through a `Maildrop`: a snapshot listing taken when the
session opened it (numbers never change inside a session, RFC 1939 §4), a way to open
one message (`open_message` -> a `Reader` of its stored bytes, in chunks) and ONE
`commit` after QUIT (RFC 1939 §6, the UPDATE state). Messages are addressed by `Index`,
the 0-based snapshot position, never by the client's message number.
DELE and RSET never reach the store. Opening a maildrop takes its exclusive lock; a
second open of the same maildrop anywhere answers `Failure.IN_USE` at once. The lock is
released by `release()` and dies with the process that holds it.

Expected outcomes are values (`Failure`; `Gone` for a message another agent removed
after the snapshot), not exceptions. `StoreError` is for I/O trouble while reading.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Iterator, Sequence, Set
from dataclasses import dataclass
from typing import NamedTuple, Protocol, overload, runtime_checkable

from popbox.proto.types import Index, Uidl


class Failure(enum.Enum):
    """Why a store operation did not succeed."""

    IN_USE = "in-use"  # another session holds the maildrop lock
    TEMPORARY = "temporary"  # I/O or database trouble that may pass
    PERMANENT = "permanent"  # the maildrop is unusable (missing, corrupt, not a maildir)
    GONE = "gone"  # the message vanished in the middle of being read
    FULL = "full"  # no space or quota left (ENOSPC, EDQUOT): temporary, nothing applied


FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True, slots=True)
class Gone:
    """The message was removed by another agent after the snapshot was taken."""


GONE = Gone()


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


class Reader(Protocol):
    """One opened message, read as stored in chunks: `next()` until `done`."""

    @property
    def done(self) -> bool:
        """The last chunk has been returned."""
        ...

    async def next(self) -> bytes:
        """The next chunk (b"" only at the end). Raises `StoreError` on I/O trouble."""
        ...

    def close(self) -> None:
        """Give the message up, read to the end or not. Called once."""
        ...


class Maildrop(Protocol):
    """A locked maildrop, opened for one session."""

    @property
    def messages(self) -> Snapshot:
        """The snapshot: index 0 is message number 1."""
        ...

    async def open_message(self, index: Index) -> Reader | Gone:
        """Open message `index`, or say it is gone. Raises `StoreError` on I/O trouble;
        the server turns that and `Gone` into one `-ERR` line each."""
        ...

    async def commit(self, delete: Set[Index], seen: Set[Index]) -> CommitReport | Failure:
        """Apply the session's changes once, then release the lock."""
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


class Times(NamedTuple):
    """When a message arrived and when a session first retrieved it (RETR to its end,
    committed at QUIT), as seconds since the epoch; `retrieved` is None if never."""

    delivered: float
    retrieved: float | None


@runtime_checkable
class Dated(Protocol):
    """A maildrop that knows its messages' `Times` (what `popbox expire` needs)."""

    async def times(self) -> Sequence[Times]:
        """One `Times` per snapshot index. Raises `StoreError` on I/O trouble."""
        ...


@runtime_checkable
class WireSource(Protocol):
    """A maildrop that keeps messages also as RETR sends them (popbox.proto.wire.to_wire).

    `open_wire` opens one in that form: a `Reader` whose chunks go out unchanged (the
    session only terminates them), or None when this message is not kept so (then
    `open_message` serves it). `open_message` always gives the message as stored."""

    async def open_wire(self, index: Index) -> Reader | Gone | None:
        """Like `open_message`, in wire form; None if the message has none."""
        ...


@runtime_checkable
class HeldWire(Protocol):
    """A WireSource that may hold a message's wire form whole already (read with an
    earlier one: the postgres store's read-ahead). `held_wire(index)` gives it, and
    forgets it: the bytes RETR sends between its +OK line and its end, in one piece. None:
    not held (or not whole), so `open_wire` must be asked. No I/O, no waiting."""

    def held_wire(self, index: Index) -> bytes | None: ...


@runtime_checkable
class WholeSource(Protocol):
    """A maildrop that can read a small message whole, at once, without a `Reader`.

    `read_whole(index, size)` gives the message as stored, read in one go on the caller's
    thread (a small file: as `open_message`'s first read would be), or None when it must
    be opened the general way (the file is not where the snapshot saw it). It reads at
    most `size` + 1 octets: `size` is the message's wire size in the snapshot, never less
    than its stored size, so a longer result means the message changed. Raises
    `StoreError` as `open_message` does."""

    def read_whole(self, index: Index, size: int) -> bytes | None: ...


@runtime_checkable
class Trash(Protocol):
    """A store that can keep deleted messages for a while (``store.deleted = "trash"``):
    `purge` removes for good what was deleted at or before `before`, `undelete` puts
    back what was deleted at or after `since` (everything if None) with the UIDLs it
    had. Both take the maildrop lock (`Failure.IN_USE` while a session holds it) and
    answer how many messages they moved."""

    async def purge(self, location: str, before: float) -> int | Failure: ...

    async def undelete(self, location: str, since: float | None) -> int | Failure: ...


class StoreError(Exception):
    """An I/O failure while streaming a message."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.value)
        self.failure = failure



async def read_message(maildrop: Maildrop, index: Index) -> bytes | Gone:
    """Message `index` whole, as stored (for tools and tests; sessions stream it)."""
    reader = await maildrop.open_message(index)
    if isinstance(reader, Gone):
        return reader
    try:
        parts = [await reader.next()]
        while not reader.done:
            parts.append(await reader.next())
    finally:
        reader.close()
    return b"".join(parts)
