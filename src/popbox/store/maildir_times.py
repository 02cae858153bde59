"""Times the Maildir format has no place for, kept by popbox in small record files.

* ``popbox.retrieved`` in the maildir: when each message was first retrieved. The
  Maildir format keeps a seen flag (``S``) but no time, and `popbox expire` needs the
  time (RFC 2449 §6.7: retention counts from retrieval).
* ``popbox.trashed`` in the ``.Trash`` folder: when popbox moved each message there
  (``store.deleted = "trash"``), for the purge and `popbox undelete --since`.

A record is lines ``<unique base> <unix seconds>``, appended (O_APPEND, under the maildrop
lock, no fsync). Reading keeps the first time per base and ignores what it cannot parse
(a torn last line after a crash). `forget` appends a line ``<base> -`` for each base it
drops, which reading applies in order (a base recorded again later is back); once such
lines outnumber the bases still recorded (and are more than FORGOTTEN_MAX), it rewrites
the file with the recorded bases only (temporary file, rename). So a commit that
deletes messages appends to the record, the way one that retrieves them does, and the
record stays under about twice the size of what it holds.

Losing ``popbox.retrieved`` only ever keeps mail longer: a message without a line but
with the S flag counts as retrieved when its file last changed (its ctime, never earlier
than the flag), and one with neither is unretrieved. Bases are the UIDL-stable part of
file names (popbox.store.maildir_names), so moving new->cur or changing flags keeps them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from popbox.fsutil import write_atomic

RETRIEVED = "popbox.retrieved"
TRASHED = "popbox.trashed"


FORGOTTEN_MAX = 64  # "<base> -" lines a record keeps before it is rewritten without them


def read(root: str, name: str = RETRIEVED) -> dict[str, float]:
    """The first time of every base in the record (empty if there is none)."""
    return _parse(_load(root, name))[0]


def _load(root: str, name: str) -> bytes:
    try:
        with open(os.path.join(root, name), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def _parse(data: bytes) -> tuple[dict[str, float], int]:
    """The first time of every base still recorded, and how many lines forgot one."""
    found: dict[str, float] = {}
    forgotten = 0
    for line in data.split(b"\n")[:-1]:  # the part after the last newline may be torn
        base, _, when = line.partition(b" ")
        try:
            name = base.decode("ascii")
            if when == b"-":
                forgotten += 1
                found.pop(name, None)
                continue
            seconds = float(when)
        except (ValueError, UnicodeDecodeError):
            continue
        if name and (name not in found or seconds < found[name]):
            found[name] = seconds
    return found, forgotten


def append(root: str, bases: Iterable[str], now: float, name: str = RETRIEVED) -> None:
    """Record `bases` at `now`. OSError propagates."""
    _append(root, "".join(f"{base} {now:.0f}\n" for base in bases), name)


def _append(root: str, text: str, name: str) -> None:
    data = text.encode("ascii", "replace")
    if not data:
        return
    fd = os.open(os.path.join(root, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def forget(root: str, bases: set[str], name: str = RETRIEVED) -> None:
    """Drop the times of `bases`: a line each, or the record rewritten without the bases
    it no longer holds (see the module docstring). OSError propagates."""
    if not bases:
        return
    found, forgotten = _parse(_load(root, name))
    dropped = sorted(base for base in bases if base in found)
    if not dropped:
        return
    for base in dropped:
        del found[base]
    forgotten += len(dropped)
    if forgotten <= max(FORGOTTEN_MAX, len(found)):
        _append(root, "".join(f"{base} -\n" for base in dropped), name)
        return
    # No fsync, as for appends: a record lost in a crash only keeps mail longer.
    data = "".join(f"{b} {w:.0f}\n" for b, w in found.items()).encode("ascii", "replace")
    write_atomic(os.path.join(root, name), data, fsync=False)
