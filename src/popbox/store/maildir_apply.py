"""A Maildir commit's file operations in one batch: unlink the deleted messages, rename
the retrieved ones into ``cur/`` with the ``S`` flag.

A QUIT after RETR of 1,000 messages from ``new/`` renames 1,000 files. Done one by one
from Python, each rename came with an lstat(2) of its target (never replace another
file) and the objects around both calls. `apply` does all of them in one call of
compiled code, `popbox.store._apply` (built from source at install, as
popbox.store._measure is): ``unlinkat(2)``, or ``renameat2(2)`` with
``RENAME_NOREPLACE``, which refuses to replace an existing target in the same system
call (no look-up first, and no window between the look-up and the rename), relative to
the descriptors of ``new/`` and ``cur/``, with the GIL released. Where the extension was
not built, or with POPBOX_PURE_PYTHON=1 (popbox.proto.wire.PURE_PYTHON_ENV), the same
is done in Python: an lstat of the target, then the rename. `APPLIER` says which ("c"
or "python"); both give the same results (tests/store/test_maildir_apply.py).

An operation is ``(in_cur, name, target)``: the file ``name`` in ``cur/`` (in_cur) or
``new/``; ``target`` None to unlink it, else its new name in ``cur/``. The result has
one int per operation: 0, or the errno it failed with (ENOENT: gone or renamed
meanwhile; EEXIST: the target is taken, so it is left alone). A file system without
RENAME_NOREPLACE (EINVAL, ENOSYS from renameat2) gets that operation done in Python.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from popbox.proto.wire import PURE_PYTHON_ENV

Op = tuple[bool, str, str | None]
_Apply = Callable[[int, int, list[Op]], list[int]]
_NO_NOREPLACE = (errno.EINVAL, errno.ENOSYS)


def _python_apply(new_fd: int, cur_fd: int, ops: list[Op]) -> list[int]:
    out: list[int] = []
    add = out.append
    unlink, rename, lstat = os.unlink, os.rename, os.lstat
    for in_cur, name, target in ops:
        src = cur_fd if in_cur else new_fd
        try:
            if target is None:
                unlink(name, dir_fd=src)
            else:
                try:
                    lstat(target, dir_fd=cur_fd)
                except FileNotFoundError:
                    rename(name, target, src_dir_fd=src, dst_dir_fd=cur_fd)
                else:  # never replace another file; a missing source comes first, as
                    lstat(name, dir_fd=src)  # renameat2 reports it (ENOENT)
                    add(errno.EEXIST)
                    continue
        except OSError as exc:
            add(exc.errno or errno.EIO)
            continue
        except ValueError:  # a NUL in a name
            add(errno.EINVAL)
            continue
        add(0)
    return out


def _applier() -> tuple[str, _Apply]:
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return "python", _python_apply
    try:
        from popbox.store import _apply
    except ImportError:  # built without a C compiler: the same in Python
        return "python", _python_apply
    return "c", _apply.apply


APPLIER, _run = _applier()


def apply(new_fd: int, cur_fd: int, ops: list[Op]) -> list[int]:
    """Carry out `ops` (see the module's doc); one errno or 0 per operation."""
    if not ops:
        return []
    results = _run(new_fd, cur_fd, ops)
    if _run is not _python_apply:
        redo = [i for i, code in enumerate(results)
                if code in _NO_NOREPLACE and ops[i][2] is not None]
        if redo:  # no RENAME_NOREPLACE here: those renames the Python way
            again = _python_apply(new_fd, cur_fd, [ops[i] for i in redo])
            for i, code in zip(redo, again, strict=True):
                results[i] = code
    return results
