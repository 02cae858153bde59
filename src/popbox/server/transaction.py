"""The TRANSACTION state's policy (RFC 1939 §5) and the UPDATE state (§6).

`handle()` answers every TRANSACTION command: STAT, LIST, UIDL, DELE, NOOP and RSET with a
reply, RETR and TOP with a `Body` (the +OK line and the opened message) that the session
streams through the core. Message numbers are fixed for the session; DELE only marks,
RSET unmarks, and nothing reaches the store until `quit()` commits once. Retrieved
messages (a RETR streamed to its end, never a TOP: RFC 1939 §7 and fetchmail's peek)
are remembered so the store can mark them seen at commit.

A client that has not said UTF8 gets messages with 8-bit header octets as "?"
(RFC 6856 §2.1, popbox.proto.headers), at the size LIST promised.

LAST (RFC 1460 §5, where the server enables it) answers the highest message number
accessed in this session: RETR and DELE raise it, TOP does not (a peek), RSET sets it
back to 0. Earlier sessions do not count: the snapshot does not carry seen flags.

A maildrop that keeps messages in wire form (store.base.WireSource: the postgres store)
serves RETR from it, so the session copies the bytes out; TOP, and a message kept only
as delivered, take the stored form through the encoder. Where the maildrop can read a
small message whole (store.base.WholeSource: the Maildir store), the session first asks
`retr_whole` for a RETR of at most `WHOLE_MAX` octets: a `Whole`, which it sends as the
+OK line, the message and its end in one piece after the core has checked its size in
the same pass; `handle` answers what that leaves (None). A maildrop that holds a
message's wire form already (store.base.HeldWire: the postgres store's read-ahead) gives
it to `retr_whole` the same way, sent as it is.

One bad message costs only itself: a message that vanished, cannot be read, or whose
stored size no longer matches the snapshot's (the file was changed after login) gets a
`-ERR` (replies.failure, MESSAGE_GONE, MESSAGE_CHANGED), logged with the user and the
message, and the session goes on. The size is checked before the +OK for a message read
in one chunk (most are); for a longer one the session counts the octets as it streams
them and hangs up before the terminating "." rather than end a wrong body (session.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import assert_never, cast

from popbox.proto import events as ev
from popbox.proto.events import Err
from popbox.proto.headers import HeaderGuard, ascii_header
from popbox.proto.types import Index, MsgNo, Uidl, to_index
from popbox.proto.wire import TopFilter, wire_size
from popbox.server import replies
from popbox.server.logfmt import quote
from popbox.store.base import (
    Failure,
    Gone,
    HeldWire,
    Maildrop,
    Reader,
    StoreError,
    WholeSource,
    WireSource,
)

log = logging.getLogger("popbox")

Command = (
    ev.Stat | ev.List | ev.Uidl | ev.Retr | ev.Top | ev.Dele | ev.Noop | ev.Rset | ev.Last
)

WHOLE_MAX = 64 * 1024  # a RETR of at most this many octets is read whole, sent in one piece


@dataclass(slots=True)
class Whole:
    """The answer to a RETR of a small message read whole: the +OK `text`, then `data`
    (the message as stored, 7-bit headers applied) and the end, sent in one piece
    (`ServerConnection.send_message`), which checks its size first."""

    text: str
    index: Index
    data: bytes
    wire: bool = False  # `data` is in wire form already (HeldWire): sent as it is


@dataclass(slots=True)
class Body:
    """The answer to RETR or TOP: `ok`, then `first` and the rest of `reader`, each through
    `limit` (TOP's, else None), then the end of the reply. The session closes `reader`."""

    ok: ev.Ok
    index: Index
    first: bytes
    reader: Reader
    limit: TopFilter | None
    wire: bool = False  # the reader's chunks are in wire form (WireSource)


class _Guarded:
    """A `Reader` whose chunks pass through a `HeaderGuard` (RFC 6856 §2.1)."""

    __slots__ = ("_guard", "_reader")

    def __init__(self, reader: Reader, guard: HeaderGuard) -> None:
        self._reader = reader
        self._guard = guard

    @property
    def done(self) -> bool:
        return self._reader.done

    async def next(self) -> bytes:
        return self._guard.feed(await self._reader.next())

    def close(self) -> None:
        self._reader.close()


# "1", "2", ...: made once and shared by every session. Formatting the numbers of a
# 100,000-message LIST or UIDL cost as much as the rest of the listing.
_NUMBERS: list[str] = []
_NUMBERS_KEPT = 1_000_000


def _numbers(count: int) -> Sequence[str]:
    if count > _NUMBERS_KEPT:
        return list(map(str, range(1, count + 1)))
    if count > len(_NUMBERS):
        _NUMBERS.extend(map(str, range(len(_NUMBERS) + 1, count + 1)))
    return _NUMBERS


# Whether a maildrop class is a WireSource, a WholeSource: asked once per class, as an
# isinstance() against a runtime-checkable Protocol looks at every member each time (a
# twentieth of a whole login's CPU). The stores' methods are their classes' own.
_SOURCES: dict[type, tuple[bool, bool, bool]] = {}


def _sources(maildrop: Maildrop) -> tuple[bool, bool, bool]:
    kind = type(maildrop)
    found = _SOURCES.get(kind)
    if found is None:
        found = _SOURCES[kind] = (
            isinstance(maildrop, WireSource), isinstance(maildrop, WholeSource),
            isinstance(maildrop, HeldWire))
    return found


class Transaction:
    __slots__ = ("count", "deleted", "held_source", "last", "maildrop", "retrieved", "sizes",
                 "store_error", "user", "utf8", "whole_source", "wire_source")

    def __init__(self, maildrop: Maildrop, user: str = "", *, utf8: bool = False,
                 store_error: Callable[[Failure], object] = lambda failure: None) -> None:
        """`user` names the session in the log; `utf8`: the client said UTF8 (RFC 6856
        §2), so headers go out as stored; `store_error` is told of every store failure a
        client is answered."""
        self.maildrop = maildrop
        wire, whole, held = _sources(maildrop)
        self.wire_source = cast(WireSource, maildrop) if wire else None
        self.whole_source = cast(WholeSource, maildrop) if whole else None
        self.held_source = cast(HeldWire, maildrop) if held else None
        self.user = user
        self.utf8 = utf8
        self.store_error = store_error
        self.sizes = maildrop.messages.sizes  # the snapshot's: fixed for the session
        self.count = len(self.sizes)
        self.deleted: set[Index] = set()
        self.retrieved: set[Index] = set()
        self.last = 0  # RFC 1460 §5: the highest message number accessed

    def index(self, msg: MsgNo) -> Index | Err:
        """The snapshot index of `msg`, or the error for a missing or deleted message."""
        index = to_index(msg)
        if not 0 <= index < self.count:
            return replies.NO_SUCH_MESSAGE
        if index in self.deleted:
            return replies.ALREADY_DELETED
        return index

    def size(self, index: Index) -> int:
        return self.sizes[index]

    def uidl(self, index: Index) -> Uidl:
        return self.maildrop.messages.uidls[index]

    def lines(self, column: Sequence[str]) -> tuple[str, ...]:
        """"number value" for every message not marked deleted (LIST, UIDL)."""
        numbers = _numbers(len(column))
        if not self.deleted:
            return tuple(map(" ".join, zip(numbers, column, strict=False)))  # numbers: longer
        deleted = self.deleted
        return tuple(
            f"{numbers[i]} {value}" for i, value in enumerate(column) if i not in deleted
        )

    def stat(self) -> tuple[int, int]:
        sizes = self.maildrop.messages.sizes
        if not self.deleted:
            return len(sizes), sum(sizes)
        deleted = self.deleted
        return len(sizes) - len(deleted), sum(sizes) - sum(sizes[i] for i in deleted)

    def rset(self) -> None:
        self.deleted.clear()
        self.last = 0

    async def handle(self, event: Command) -> ev.Ok | Err | replies.Listing | Body:
        """The answer to one TRANSACTION command (RFC 1939 §§5, 7)."""
        match event:  # RETR first: most commands of a session are RETR
            case ev.Retr(msg) | ev.Top(msg):  # (inline: a coroutine less per message)
                index = self.index(msg)
                if isinstance(index, Err):
                    return index
                wire = False
                try:
                    reader: Reader | Gone | None = None
                    if self.wire_source is not None and isinstance(event, ev.Retr):
                        reader = await self.wire_source.open_wire(index)
                        wire = reader is not None
                    if reader is None:
                        reader = await self.maildrop.open_message(index)
                except StoreError as exc:
                    self.unsent(index, exc.failure.value)
                    self.store_error(exc.failure)
                    return replies.failure(exc.failure)
                if isinstance(reader, Gone):
                    self.unsent(index, "gone")
                    self.store_error(Failure.GONE)
                    return replies.MESSAGE_GONE
                try:
                    first = await reader.next()
                except StoreError as exc:
                    reader.close()
                    self.unsent(index, exc.failure.value)
                    self.store_error(exc.failure)
                    return replies.failure(exc.failure)
                if reader.done and not wire and wire_size(first) != self.size(index):
                    reader.close()
                    self.unsent(index, "size changed")
                    return replies.MESSAGE_CHANGED
                if not self.utf8 and not ascii_header(first):
                    guard = HeaderGuard()
                    first = guard.feed(first)
                    if guard.active:  # the header goes on past the first chunk
                        reader = _Guarded(reader, guard)
                if isinstance(event, ev.Retr):
                    return Body(ev.Ok(f"{self.sizes[index]} octets"), index, first, reader, None,
                                wire)
                limit = TopFilter(event.lines)
                return Body(ev.Ok("Top of message follows"), index, first, reader, limit)
            case ev.Stat():
                count, size = self.stat()
                return ev.Ok(f"{count} {size}")
            case ev.List(None):
                count, size = self.stat()
                lines = self.lines(list(map(str, self.maildrop.messages.sizes)))
                return replies.Listing(f"{count} messages ({size} octets)", lines)
            case ev.Uidl(None):
                lines = self.lines(self.maildrop.messages.uidls)
                return replies.Listing("Unique-ID listing follows", lines)
            case ev.List(msg) | ev.Uidl(msg) | ev.Dele(msg):
                assert msg is not None
                index = self.index(msg)
                if isinstance(index, Err):
                    return index
                if isinstance(event, ev.List):
                    return ev.Ok(f"{msg} {self.size(index)}")
                if isinstance(event, ev.Uidl):
                    return ev.Ok(f"{msg} {self.uidl(index)}")
                self.deleted.add(index)
                self.last = max(self.last, msg)
                return ev.Ok(f"Message {msg} deleted.")
            case ev.Noop():
                return ev.Ok()
            case ev.Last():
                return ev.Ok(str(self.last))
            case ev.Rset():
                self.rset()
                count, size = self.stat()
                return ev.Ok(f"Maildrop has {count} messages ({size} octets).")
            case _:
                assert_never(event)

    def retr_whole(self, msg: MsgNo) -> Whole | Err | None:
        """RETR answered at once, without a coroutine, where the maildrop reads small
        messages whole (WholeSource) and this one is at most `WHOLE_MAX` octets, or holds
        this one's wire form already (HeldWire): its `Whole`, or the -ERR for a missing,
        deleted or unreadable message. None: `handle` answers it (a larger message, one
        not held, a file not where the snapshot saw it)."""
        whole, held = self.whole_source, self.held_source
        if whole is None and held is None:
            return None
        index = self.index(msg)
        if isinstance(index, Err):
            return index
        size = self.sizes[index]
        if held is not None:
            data = held.held_wire(index)
            wire = True
        elif size > WHOLE_MAX:
            return None
        else:
            assert whole is not None
            try:
                data = whole.read_whole(index, size)
            except StoreError as exc:
                self.unsent(index, exc.failure.value)
                self.store_error(exc.failure)
                return replies.failure(exc.failure)
            wire = False
        if data is None:
            return None
        if not self.utf8 and not data.isascii() and not ascii_header(data):
            data = HeaderGuard().feed(data)
        return Whole(f"{size} octets", index, data, wire)

    def unsent(self, index: Index, reason: str) -> None:
        log.warning("message not sent user=%s msg=%d uidl=%s reason=%s", quote(self.user),
                    index + 1, quote(self.uidl(index)), reason.replace(" ", "-"))

    def sent(self, index: Index, *, retr: bool) -> None:
        """Message `index` went out to its end: a RETR (`retr`, not a TOP) marks it seen
        at commit."""
        if retr:
            self.retrieved.add(index)
            if index >= self.last:
                self.last = index + 1

    async def quit(self) -> ev.Ok | Err:
        """RFC 1939 §6, the UPDATE state: commit the deletions and the seen marks once.
        Shielded: a shutdown must not cut a commit in half."""
        seen = self.retrieved - self.deleted
        result = await asyncio.shield(self.maildrop.commit(self.deleted, seen))
        if isinstance(result, Failure):
            self.store_error(result)
            return replies.failure(result)
        return ev.Ok(f"Logging out, {result.deleted} messages deleted.")
