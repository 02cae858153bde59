"""Times the Maildir format has no place for, kept by popbox in small record files.

* ``popbox.retrieved`` in the maildir: when each message was first retrieved. The
  Maildir format keeps a seen flag (``S``) but no time, and `popbox expire` needs the
  time (RFC 2449 §6.7: retention counts from retrieval).
* ``popbox.trashed`` in the ``.Trash`` folder: when popbox moved each message there
  (``store.deleted = "trash"``), for the purge and `popbox undelete --since`.

A record is lines ``<unique base> <unix seconds>``, appended (O_APPEND, under the maildrop
lock, no fsync). Reading keeps the first time per base and ignores what it cannot parse
(a torn last line after a crash). `forget` rewrites the file without some bases
(temporary file, rename), so a record holds only messages still there.

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


def read(root: str, name: str = RETRIEVED) -> dict[str, float]:
    """The first time of every base in the record (empty if there is none)."""
    try:
        with open(os.path.join(root, name), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    found: dict[str, float] = {}
    for line in data.split(b"\n")[:-1]:  # the part after the last newline may be torn
        base, _, when = line.partition(b" ")
        try:
            seconds = float(when)
            name = base.decode("ascii")
        except (ValueError, UnicodeDecodeError):
            continue
        if name and (name not in found or seconds < found[name]):
            found[name] = seconds
    return found


def append(root: str, bases: Iterable[str], now: float, name: str = RETRIEVED) -> None:
    """Record `bases` at `now`. OSError propagates."""
    data = "".join(f"{base} {now:.0f}\n" for base in bases).encode("ascii", "replace")
    if not data:
        return
    fd = os.open(os.path.join(root, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def forget(root: str, bases: set[str], name: str = RETRIEVED) -> None:
    """Drop the lines of `bases` (atomically replaced). OSError propagates."""
    path = os.path.join(root, name)
    if not bases or not os.path.exists(path):
        return
    kept = {base: when for base, when in read(root, name).items() if base not in bases}
    # No fsync, as for appends: a record lost in a crash only keeps mail longer.
    data = "".join(f"{b} {w:.0f}\n" for b, w in kept.items()).encode("ascii", "replace")
    write_atomic(path, data, fsync=False)
