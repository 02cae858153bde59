"""Measuring message files: the wire size of every file a Maildir listing must read.

A file delivered without ``,W=`` in its name (Postfix, Exim, procmail...) has to be read
once to learn its POP3 size, which counts CRLF line ends (RFC 1939 §11,
popbox.proto.wire.SizeCounter). The first listing of a large maildrop reads every file:
100,000 messages are 100,000 times open(2), fstat(2), read(2) and close(2). Done from
Python, the calls and objects around each file cost more than the system calls do.

So `sizes` measures all the named files of one directory in one call of compiled code,
`popbox.store._measure` (built from source when popbox is installed, as
popbox.proto._speedups is): it opens each file relative to the directory's descriptor,
refuses anything but a regular file (O_NOFOLLOW, O_NONBLOCK, then fstat), reads it to
the end and counts its bare line feeds with memchr, with the GIL released. A large batch
is cut into one part per CPU (at most `MAX_THREADS`), each measured by its own thread:
the parts' system calls and counting then overlap. Where the extension was not built,
or with POPBOX_PURE_PYTHON=1 in the environment (popbox.proto.wire.PURE_PYTHON_ENV), the
same is done in Python, one file at a time (threads would only contend for the GIL).
`MEASURER` says which ("c" or "python"); both give the same sizes
(tests/store/test_maildir_measure.py).

A file that could not be measured (gone, unreadable, not a regular file) comes back as
None: the caller measures it again on its own to learn why, and decides.

`read_small` reads one small message file whole for a RETR under the same rules (open
with O_NOFOLLOW and O_NONBLOCK, fstat: a regular file only, one read, close), in one
call of the same compiled module where it was built: from Python, the four calls and
fstat's result object cost more than the system calls.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable

from popbox.fsutil import open_regular
from popbox.proto.wire import PURE_PYTHON_ENV, SizeCounter

Measured = list[tuple[int, int] | None]  # per name: (physical size, wire size), or None
_Pass = Callable[[int, list[str], int], Measured]

PARALLEL_FROM = 2048  # files in a batch before it is cut into parts, one thread each
MAX_THREADS = 4
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def measure_fd(fd: int, chunk_size: int) -> tuple[int, int]:
    """(physical size, wire size) of the open file `fd`, read to its end in chunks."""
    counter = SizeCounter()
    physical = 0
    while chunk := os.read(fd, chunk_size):
        physical += len(chunk)
        counter.feed(chunk)
    return physical, counter.finish()


def _python_sizes(dir_fd: int, names: list[str], chunk_size: int) -> Measured:
    out: Measured = []
    add = out.append
    for name in names:
        try:
            fd = open_regular(name, dir_fd=dir_fd)
        except (OSError, ValueError):  # ValueError: a NUL in the name, or not encodable
            add(None)
            continue
        try:
            add(measure_fd(fd, chunk_size))
        except OSError:
            add(None)
        finally:
            os.close(fd)
    return out


_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _python_read_small(path: str, limit: int) -> bytes | int:
    fd = os.open(path, _READ_FLAGS)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            return mode
        return os.read(fd, limit)  # a regular file's read is short only at its end
    finally:
        os.close(fd)


def _measurer() -> tuple[str, _Pass, Callable[[str, int], bytes | int]]:
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return "python", _python_sizes, _python_read_small
    try:
        from popbox.store import _measure
    except ImportError:  # built without a C compiler: the same in Python
        return "python", _python_sizes, _python_read_small
    return "c", _measure.sizes, _measure.read_small


# read_small(path, limit): the regular file at `path` (never through a final symlink,
# never waiting on a FIFO), at most its first `limit` octets, read in one go; its st_mode
# (an int) if it is not a regular file. OSError when a call fails.
MEASURER, _pass, read_small = _measurer()


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def sizes(directory: str, names: list[str], chunk_size: int) -> Measured:
    """(physical size, wire size) of each file `names` names in `directory`, or None for
    one that could not be measured (also all of them when `directory` cannot be opened)."""
    if not names:
        return []
    try:
        dir_fd = os.open(directory, _DIR_FLAGS)
    except OSError:
        return [None] * len(names)
    try:
        return _split(_pass, dir_fd, names, chunk_size)
    finally:
        os.close(dir_fd)


def _split(run: _Pass, dir_fd: int, names: list[str], chunk_size: int) -> Measured:
    parts = min(_cpus(), MAX_THREADS, len(names) // (PARALLEL_FROM // 2))
    if run is _python_sizes or parts < 2:
        return run(dir_fd, names, chunk_size)
    step = -(-len(names) // parts)
    results: list[Measured] = [[] for _ in range(parts)]
    errors: list[BaseException] = []

    def part(i: int) -> None:
        try:
            results[i] = run(dir_fd, names[i * step : (i + 1) * step], chunk_size)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=part, args=(i,), daemon=True) for i in range(1, parts)]
    for t in threads:
        t.start()
    part(0)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [hit for result in results for hit in result]
