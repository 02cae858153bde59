"""Delivery into an mbox file (mboxrd) for `popbox fetch`, exactly once across crashes.

Each message is first spooled: written, already in mbox form (`From ` line, quoted body,
empty line), to a file in the state file's spool folder, and fsynced. A batch is then
appended under the mbox's locks (`flock` and `fcntl`, both held, as mail readers use
either):

1. note the mbox's length, and the separator it needs (an empty line before `From `);
2. record a *pending* append in the state file (offset, length, spool files, UIDLs);
3. append the separator and the spool files, fsync the mbox;
4. record the UIDLs as delivered and clear the pending append (one atomic state write);
5. unlock; remove the spool files.

A failure in 3 truncates the mbox back to the noted length. After a crash, the next run
finds the pending append and compares the mbox from its offset with the spool files: all
there means the append finished and only the record was missing (the UIDLs are recorded
now); a prefix of it means a torn append, which is truncated away (its messages are
fetched again); anything else means another program changed the mbox since, and nothing
is touched (`MboxChanged`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from popbox.client.crlf import LfConverter
from popbox.client.state import Journal, Pending, StateError
from popbox.fsutil import fsync_dir
from popbox.store.mbox_format import HEADER_LIMIT, MboxrdQuoter, envelope_sender, from_line

PIECE = 1 << 20
LOCK_WAIT = 60.0  # seconds to wait for a mail reader's lock


class MboxChanged(StateError):
    """The mbox no longer holds what an interrupted delivery left there."""


class MboxBusy(OSError):
    """Another program held the mbox's lock for too long."""


class MboxWriter:
    """One message spooled in mbox form: `write` pieces (CRLF), then `finish`."""

    def __init__(self, spool: Path, done: Callable[[str], None]) -> None:
        self._part = spool.with_suffix(".part")
        self._final = spool.with_suffix(".msg")
        self._done = done
        fd = os.open(self._part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._lf = LfConverter()
        self._quoter = MboxrdQuoter()
        self._head: bytes | None = b""  # headers held until the From line can be written

    def write(self, data: bytes) -> None:
        data = self._lf.feed(data)
        if self._head is None:
            self._file.write(self._quoter.feed(data))
            return
        self._head += data
        if b"\n\n" in self._head or self._head[:1] == b"\n" or len(self._head) > HEADER_LIMIT:
            self._flush_head()

    def _flush_head(self) -> None:
        head, self._head = self._head or b"", None
        self._file.write(from_line(envelope_sender(head.partition(b"\n\n")[0])))
        self._file.write(self._quoter.feed(head))

    def finish(self) -> None:
        tail = self._lf.finish()
        if self._head is not None:
            self._head += tail
            self._flush_head()
        elif tail:
            self._file.write(self._quoter.feed(tail))
        self._file.write(self._quoter.finish())
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._part, self._final)
        self._done(self._final.name)

    def abort(self) -> None:
        self._file.close()
        with contextlib.suppress(OSError):
            self._part.unlink()


@contextlib.contextmanager
def _locked(fd: int, path: Path) -> Iterator[None]:
    deadline = time.monotonic() + LOCK_WAIT
    for lock in (fcntl.flock, fcntl.lockf):
        while True:
            try:
                lock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except (BlockingIOError, PermissionError):
                if time.monotonic() > deadline:
                    raise MboxBusy(f"{path} stayed locked for {LOCK_WAIT:g}s") from None
                time.sleep(0.1)
    try:
        yield
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        fcntl.flock(fd, fcntl.LOCK_UN)


def _separator(fd: int, size: int) -> bytes:
    """What must come before a `From ` line appended at `size`: an empty line."""
    if size == 0:
        return b""
    end = os.pread(fd, 2, max(0, size - 2))
    if end.endswith(b"\n\n") or end == b"\n":
        return b""
    return b"\n" if end.endswith(b"\n") else b"\n\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _pieces(prefix: bytes, spooled: Sequence[Path]) -> Iterator[bytes]:
    if prefix:
        yield prefix
    for path in spooled:
        with path.open("rb") as f:
            while piece := f.read(PIECE):
                yield piece


class Mbox:
    records_each = False  # recorded per batch, after `commit` made the batch durable

    def __init__(self, path: Path, spool_dir: Path) -> None:
        self.path = path
        self.spool_dir = spool_dir
        self._batch: list[str] = []

    def open(self) -> None:
        """Create the spool folder and empty it: the caller has settled every pending
        append of the state file first (`recover`), so nothing there is needed."""
        self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for leftover in self.spool_dir.iterdir():
            leftover.unlink()
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"no such folder: {self.path.parent}")

    def has(self, key: str) -> bool:
        return False  # an mbox has no per-message names: the state file decides

    def writer(self, key: str, uidl: str = "") -> MboxWriter:
        return MboxWriter(self.spool_dir / key, self._batch.append)

    def commit(self, uidls: Sequence[str], journal: Journal) -> None:
        names, self._batch = self._batch, []
        spooled = [self.spool_dir / name for name in names]
        fsync_dir(self.spool_dir)  # the spool files' names survive a power cut too
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            with _locked(fd, self.path):
                size = os.fstat(fd).st_size
                prefix = _separator(fd, size)
                length = len(prefix) + sum(p.stat().st_size for p in spooled)
                journal.begin(Pending(str(self.path), size, length, prefix.decode(),
                                      names, list(uidls)))
                try:
                    for piece in _pieces(prefix, spooled):
                        _write_all(fd, piece)
                    os.fsync(fd)
                except OSError:
                    os.ftruncate(fd, size)
                    os.fsync(fd)
                    journal.abandon()
                    raise
                journal.record(list(uidls))
        finally:
            os.close(fd)
        for path in spooled:
            with contextlib.suppress(OSError):
                path.unlink()

    def close(self) -> None:
        pass


def recover(journal: Journal, spool_dir: Path) -> str:
    """Settle the pending append of an interrupted run; returns what was done."""
    pending = journal.account.pending
    assert pending is not None
    path = Path(pending.path)
    spooled = [spool_dir / name for name in pending.spool]
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        journal.abandon()
        return "nothing appended"
    try:
        with _locked(fd, path):
            size = os.fstat(fd).st_size
            outcome = _compare(fd, pending, spooled, size)
            if outcome == "complete":
                journal.record(pending.uidls)
            elif outcome == "torn":
                os.ftruncate(fd, pending.offset)
                os.fsync(fd)
                journal.abandon()
            elif outcome == "nothing appended":
                journal.abandon()
            else:
                raise MboxChanged(
                    f"{path} changed after an interrupted delivery (at offset "
                    f"{pending.offset}); check it, then remove the \"pending\" entry of "
                    f"{journal.account.user}@{journal.account.server} from {journal.state.path}")
    finally:
        os.close(fd)
    for spool in spooled:
        with contextlib.suppress(OSError):
            spool.unlink()
    return outcome


def _compare(fd: int, pending: Pending, spooled: Sequence[Path], size: int) -> str:
    if size <= pending.offset:
        return "nothing appended"
    there = min(size - pending.offset, pending.length)
    position = pending.offset
    try:
        for piece in _pieces(pending.prefix.encode(), spooled):
            want = piece[: pending.offset + there - position]
            if os.pread(fd, len(want), position) != want:
                return "changed"
            position += len(want)
            if position >= pending.offset + there:
                break
    except FileNotFoundError:
        return "changed"
    if position < pending.offset + there:
        return "changed"
    return "complete" if there == pending.length else "torn"
