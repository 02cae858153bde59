"""The TRANSACTION state's bookkeeping (RFC 1939 §5).

Message numbers are fixed for the session; DELE only marks, RSET unmarks, and nothing
reaches the store until QUIT. Retrieved messages are remembered so the store can mark
them seen at commit.
"""

from __future__ import annotations

from popbox.proto.events import Err
from popbox.proto.types import MsgNo
from popbox.server import replies
from popbox.store.base import Maildrop, MessageInfo


class Transaction:
    __slots__ = ("deleted", "maildrop", "retrieved")

    def __init__(self, maildrop: Maildrop) -> None:
        self.maildrop = maildrop
        self.deleted: set[int] = set()
        self.retrieved: set[int] = set()

    def index(self, msg: MsgNo) -> int | Err:
        """The snapshot index of `msg`, or the error for a missing or deleted message."""
        index = msg - 1
        if not 0 <= index < len(self.maildrop.messages):
            return replies.NO_SUCH_MESSAGE
        if index in self.deleted:
            return replies.ALREADY_DELETED
        return index

    def info(self, index: int) -> MessageInfo:
        return self.maildrop.messages[index]

    def live(self) -> list[tuple[int, MessageInfo]]:
        """(message number, info) of every message not marked deleted."""
        deleted = self.deleted
        return [
            (i + 1, info) for i, info in enumerate(self.maildrop.messages) if i not in deleted
        ]

    def stat(self) -> tuple[int, int]:
        messages = self.maildrop.messages
        if not self.deleted:
            return len(messages), sum(m.size for m in messages)
        live = self.live()
        return len(live), sum(info.size for _, info in live)

    def rset(self) -> None:
        self.deleted.clear()
