"""The TRANSACTION state's bookkeeping (RFC 1939 §5).

Message numbers are fixed for the session; DELE only marks, RSET unmarks, and nothing
reaches the store until QUIT. Retrieved messages are remembered so the store can mark
them seen at commit.
"""

from __future__ import annotations

from collections.abc import Sequence

from popbox.proto.events import Err
from popbox.proto.types import MsgNo
from popbox.server import replies
from popbox.store.base import Maildrop

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


class Transaction:
    __slots__ = ("count", "deleted", "maildrop", "retrieved")

    def __init__(self, maildrop: Maildrop) -> None:
        self.maildrop = maildrop
        self.count = len(maildrop.messages)  # the snapshot's: fixed for the session
        self.deleted: set[int] = set()
        self.retrieved: set[int] = set()

    def index(self, msg: MsgNo) -> int | Err:
        """The snapshot index of `msg`, or the error for a missing or deleted message."""
        index = msg - 1
        if not 0 <= index < self.count:
            return replies.NO_SUCH_MESSAGE
        if index in self.deleted:
            return replies.ALREADY_DELETED
        return index

    def size(self, index: int) -> int:
        return self.maildrop.messages.sizes[index]

    def uidl(self, index: int) -> str:
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
