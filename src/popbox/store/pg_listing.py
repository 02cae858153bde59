"""The postgres store's listing: what a session's snapshot takes from a mailbox's rows, and
the listings a process keeps.

`Listings.read` (on a pooled connection, the session holding the maildrop lock) first reads
the mailbox's change counter (``mailboxes.modseq``, popbox.pg.schema migration 7) and its
retrieval log not folded yet (the ids it marks seen, and its last row), in one query, then,
unless the process keeps a listing of that mailbox at that counter, the rows with ONE query
over the listing index: (id, UIDL, size, stored size, seen, wire size, form) in delivery
order. The counter is read first, so a kept listing is never older than its counter: a
change committed between the two queries only makes the next login list anew.

A kept listing is used while the counter is the same, whichever frontend (or person with
psql) wrote last: the database counts every change of what a listing shows. The fold of the
retrieval log changes nothing a listing shows, and does not move the counter. At most
`rows` rows are kept in all (the least recently used go first; a larger listing is not
kept; 0 keeps none), about 270 bytes each (tracemalloc: 26.6 MB for 99,000 rows).
Sessions share a kept listing and never change it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence, Set
from typing import Any

from popbox.pg.pool import Connection
from popbox.store.base import Snapshot

LISTING_CACHE_ROWS = 200_000  # rows of listings a process keeps, all mailboxes together

_LISTING = """
SELECT id, uidl, size, raw_size, seen AND retrieved_at IS NOT NULL AS seen,
    octet_length(wire) AS wire_size, body_from_wire
FROM messages WHERE mailbox_id = $1 AND deleted_at IS NULL ORDER BY id"""

# The change counter, the log's last row and the ids it marks seen.
_STATE = """
SELECT (SELECT modseq FROM mailboxes WHERE id = $1) AS modseq, max(r.seq) AS upto,
    array_agg(u.id) FILTER (WHERE r.seen) AS seen
FROM retrievals r CROSS JOIN LATERAL unnest(r.ids) AS u(id) WHERE r.mailbox_id = $1"""


class Columns:
    """The snapshot's rows as columns, by index (made by one `zip`, no object per row)."""

    __slots__ = ("forms", "ids", "raw_sizes", "seen", "snapshot", "wire_sizes")

    def __init__(self, rows: Sequence[Sequence[object]], logged: Set[int]) -> None:
        columns: list[tuple[Any, ...]] = list(zip(*rows, strict=True)) or [()] * 7
        self.snapshot = Snapshot(columns[1], columns[2])  # uidl (a str: Uidl), size
        self.ids: tuple[int, ...] = columns[0]
        self.raw_sizes: tuple[int, ...] = columns[3]
        # as the snapshot found it, the retrieval log (`logged`: seen there) applied
        self.seen: tuple[bool, ...] = columns[4] if not logged else tuple(
            seen or i in logged for i, seen in zip(self.ids, columns[4], strict=True))
        self.wire_sizes: tuple[int | None, ...] = columns[5]  # None: no wire form
        self.forms: tuple[int | None, ...] = columns[6]  # body_from_wire (pg_body)


class Listings:
    """The listings this process has read, by mailbox, each with the change counter it
    was read at (see the module docstring)."""

    __slots__ = ("_kept", "_rows", "rows")

    def __init__(self, rows: int = LISTING_CACHE_ROWS) -> None:
        self.rows = rows
        self._rows = 0
        self._kept: OrderedDict[int, tuple[int, Columns]] = OrderedDict()

    async def read(self, conn: Connection, box: int) -> tuple[Columns, int | None]:
        """Mailbox `box`'s listing, and the last row of its retrieval log (None: none)."""
        state = await conn.fetchrow(_STATE, box)
        assert state is not None  # (an aggregate: always one row)
        modseq = state["modseq"]
        columns = self._get(box, modseq)
        if columns is None:
            rows = await conn.fetch(_LISTING, box)
            columns = Columns(rows, frozenset(state["seen"] or ()))
            self._put(box, modseq, columns)
        return columns, state["upto"]

    def _get(self, box: int, modseq: int) -> Columns | None:
        kept = self._kept.get(box)
        if kept is None:
            return None
        if kept[0] != modseq:
            self._drop(box)
            return None
        self._kept.move_to_end(box)
        return kept[1]

    def _put(self, box: int, modseq: int, columns: Columns) -> None:
        size = len(columns.ids)
        if size > self.rows:
            return
        self._drop(box)
        while self._rows + size > self.rows:
            self._drop(next(iter(self._kept)))
        self._kept[box] = (modseq, columns)
        self._rows += size

    def _drop(self, box: int) -> None:
        kept = self._kept.pop(box, None)
        if kept is not None:
            self._rows -= len(kept[1].ids)
