"""Filling in ``messages.wire`` for rows stored before migration 3 (`popbox db upgrade`).

Migration 3 only adds the column; the rows are converted afterwards, a batch per
transaction (at most `BATCH_ROWS` rows or `BATCH_OCTETS` of bodies, one row at least),
in id order, with the server running:

* a row is converted by reading its ``body``, making its wire form with
  popbox.proto.wire.to_wire (the code every RETR of it used to run) and setting it with
  ``WHERE wire IS NULL``: a row that a session deleted meanwhile is just not updated,
  and a row is never written twice;
* the state is the data itself (``wire IS NULL``), so a conversion that was stopped
  (Ctrl-C, a lost connection) goes on where it was when run again, and rows that an
  older popbox delivered meanwhile are found by the next run;
* sessions keep working throughout: a row without ``wire`` is served from ``body``;
  the batches take only row locks, and a commit that deletes a row being converted
  waits for that one batch at most.

A message is held in memory whole while it is converted (once as stored, once in wire
form): a 100 MB message costs about 200 MB for a moment.
"""

from __future__ import annotations

from collections.abc import Callable

from popbox.pg.pool import Connection
from popbox.proto.wire import to_wire

BATCH_ROWS = 500
BATCH_OCTETS = 32 * 1024 * 1024

_PENDING = "SELECT count(*) FROM messages WHERE wire IS NULL"
_NEXT = """
SELECT id, raw_size FROM messages WHERE wire IS NULL AND id > $1 ORDER BY id LIMIT $2"""
_BODIES = "SELECT id, body FROM messages WHERE id = ANY($1::bigint[]) AND wire IS NULL"
_SET = """
UPDATE messages SET wire = v.wire
FROM unnest($1::bigint[], $2::bytea[]) AS v (id, wire)
WHERE messages.id = v.id AND messages.wire IS NULL"""


def _cut(rows: list[tuple[int, int]], octets: int) -> list[int]:
    """The ids of the first rows whose bodies fit in `octets` (the first one always)."""
    ids: list[int] = []
    total = 0
    for row, size in rows:
        if ids and total + size > octets:
            break
        ids.append(row)
        total += size
    return ids


async def pending(conn: Connection) -> int:
    """Rows without a wire form."""
    count: int = await conn.fetchval(_PENDING)
    return count


async def convert(
    conn: Connection, *, rows: int = BATCH_ROWS, octets: int = BATCH_OCTETS,
    progress: Callable[[int, int], object] = lambda done, total: None,
) -> int:
    """Give every row without one its wire form; `progress(done, total)` after each
    batch. Returns the rows converted. Raises DB_ERRORS (what was done stays done)."""
    total = await pending(conn)
    done = 0
    last = 0
    while True:
        found = await conn.fetch(_NEXT, last, rows)
        if not found:
            return done
        ids = _cut([(r["id"], r["raw_size"]) for r in found], octets)
        last = ids[-1]
        async with conn.transaction():
            bodies = await conn.fetch(_BODIES, ids)
            result = await conn.execute(
                _SET, [r["id"] for r in bodies], [to_wire(r["body"]) for r in bodies])
        done += int(result.split()[-1])
        progress(done, max(total, done))
