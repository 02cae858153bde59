"""Last login records (`server.last_login = true`): when a user last logged in over POP3,
and from which address, kept by the store beside the mail (`popbox last USER` reads it).

One record per maildrop, replaced at each login: a Maildir keeps it in the file
``popbox-last-login`` in its root (beside ``cur/ new/ tmp/`` and ``popbox-sizes``), an
mbox spool beside its index (``<spool>.last-login`` in the index folder), PostgreSQL in
the ``mailboxes`` row (``last_login``, ``last_login_ip``). The file is one line,
``<seconds since the epoch> <address>``, replaced atomically (popbox.fsutil.write_atomic:
a temporary file renamed over it, so a reader sees the old record or the new one, never
half of one) without fsync: the record is worth one rename per login, not a disk flush.
It is read as a regular file only, never through a symlink. It is written by whoever
holds the maildrop (for a user with a uid of their own, that user's mail process), after
the login has succeeded and without the session waiting for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from popbox.fsutil import open_regular, write_atomic
from popbox.store.base import Failure

RECORD_NAME = "popbox-last-login"
MAX_RECORD = 512


@dataclass(frozen=True, slots=True)
class LastLogin:
    when: float  # seconds since the epoch
    address: str  # the client's address, as the session saw it (after a PROXY header)


def encode(login: LastLogin) -> bytes:
    return f"{int(login.when)} {login.address}\n".encode()


def decode(data: bytes) -> LastLogin | None:
    """The record in `data`, or None if it is not one."""
    fields = data.decode("ascii", "replace").split()
    if len(fields) != 2 or not fields[0].isdigit():
        return None
    return LastLogin(float(fields[0]), fields[1])


def write_file(path: str, login: LastLogin) -> None:
    write_atomic(path, encode(login), fsync=False)


def read_file(path: str) -> LastLogin | None:
    """The record at `path`; None if there is none. OSError if it cannot be read."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return None
    try:
        return decode(os.read(fd, MAX_RECORD))
    finally:
        os.close(fd)


@runtime_checkable
class Recorded(Protocol):
    """A store that keeps last login records."""

    async def record_login(self, location: str, login: LastLogin) -> Failure | None:
        """Replace the record of the maildrop at `location`."""
        ...

    async def last_login(self, location: str) -> LastLogin | Failure | None:
        """The record of the maildrop at `location`; None if it never had one."""
        ...
