"""Delivery into a Maildir for `popbox fetch` (cr.yp.to/proto/maildir.html).

A message is written to `tmp/` with LF line ends, fsynced, hard-linked into `new/` (a
link never replaces an existing file) and unlinked from `tmp/`. Before the fetcher records
a batch of UIDLs as delivered, `commit` fsyncs `new/`, so what the state file calls
delivered is on disk.

The name is `<sec>.M<usec>K<key>.<host>,S=<size>,W=<wire size>`: the delivery time first,
so that readers sort by it, and the message's key (a hash of server, port, user and UIDL,
made by the fetcher) in the unique part. A run that was killed after delivering a
message but before recording it finds the key in `new/` or `cur/` (where a mail reader may
have moved it, adding flags after ":") and does not deliver it again. `S=` and `W=`
(Dovecot's size fields, which popbox reads too) are the file's size and its size with
CRLF line ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from popbox.client.crlf import LfConverter
from popbox.client.state import Journal
from popbox.fsutil import fsync_dir
from popbox.proto.wire import SizeCounter

_OURS = re.compile(r"\d+\.M\d{6}K([0-9a-f]{32})\.")
_TMP_PREFIX = "popbox-fetch."
_STALE_TMP = 36 * 3600  # the Maildir convention for leftovers in tmp/


def _host() -> str:
    host = socket.gethostname() or "localhost"
    return host.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")


class MaildirWriter:
    """One message on its way into `new/`: `write` pieces (CRLF), then `finish`."""

    def __init__(self, root: Path, key: str, done: Callable[[str], None]) -> None:
        self._root = root
        self._key = key
        self._done = done
        self._tmp = root / "tmp" / f"{_TMP_PREFIX}{key}"
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._lf = LfConverter()
        self._wire = SizeCounter()
        self._size = 0

    def write(self, data: bytes) -> None:
        self._put(self._lf.feed(data))

    def _put(self, data: bytes) -> None:
        self._file.write(data)
        self._wire.feed(data)
        self._size += len(data)

    def finish(self) -> None:
        """Make the message durable and visible in `new/`."""
        self._put(self._lf.finish())
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        now = time.time_ns()
        seconds, rest = divmod(now, 1_000_000_000)
        name = (f"{seconds}.M{rest // 1000:06d}K{self._key}.{_host()}"
                f",S={self._size},W={self._wire.finish()}")
        os.link(self._tmp, self._root / "new" / name)
        os.unlink(self._tmp)
        self._done(self._key)

    def abort(self) -> None:
        self._file.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()


class Maildir:
    records_each = False  # recorded per batch, after `commit` made the batch durable

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: set[str] = set()

    def open(self) -> None:
        """Create tmp/, new/, cur/ if missing; find the keys already delivered; remove our
        own leftovers from tmp/ that are older than 36 hours."""
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        for sub in ("new", "cur"):
            with os.scandir(self.path / sub) as entries:
                for entry in entries:
                    match = _OURS.match(entry.name)
                    if match:
                        self._keys.add(match.group(1))
        now = time.time()
        with os.scandir(self.path / "tmp") as entries:
            for entry in entries:
                if entry.name.startswith(_TMP_PREFIX):
                    with contextlib.suppress(OSError):
                        if now - entry.stat().st_mtime > _STALE_TMP:
                            os.unlink(entry.path)

    def has(self, key: str) -> bool:
        return key in self._keys

    def writer(self, key: str, uidl: str = "") -> MaildirWriter:
        return MaildirWriter(self.path, key, self._keys.add)

    def commit(self, uidls: Sequence[str], journal: Journal) -> None:
        """The batch's links are durable, then its UIDLs are recorded."""
        fsync_dir(self.path / "new")
        journal.record(list(uidls))

    def close(self) -> None:
        pass
