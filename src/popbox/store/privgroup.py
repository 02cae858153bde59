"""Dovecot's `mail_privileged_group`: a group a mail process may use for one step only.

An mbox spool in ``/var/mail`` (root:mail, mode 2775 on Debian) is the user's own file,
but its dotlock, ``/var/mail/USER.lock``, is created and removed in the folder, which only
group ``mail`` may write. A per-uid mail process (popbox.mailproc) started with
``store.mail_privileged_group`` keeps that group's gid as its saved set-group-ID only:
its real and effective gid, its filesystem gid and its groups are the user's.
`privileged()` makes the saved gid the effective one around the creation or removal of
a dotlock (or of a spool that does not exist yet) and then goes back.

The switch is made for the calling thread alone, with the raw setresgid(2) system call
(the C library's setegid changes every thread of the process): store I/O runs in worker
threads, and no other thread of the mail process may open a file (another user's spool,
mode 0660 root:mail) with the group while one thread holds it. That needs the call's
number, known here for x86-64 and the architectures of the generic table (arm64,
riscv64, loongarch64); elsewhere `privileged()` fails with ENOSYS, so the dotlock fails
as it would without the group. Where the saved gid is the effective one (no privileged
group: the front, a virtual user's store) `privileged()` does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import platform
from collections.abc import Iterator

_SETRESGID = {"x86_64": 119, "aarch64": 149, "riscv64": 149, "loongarch64": 149}
_KEEP = ctypes.c_long(-1)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _thread_setegid(gid: int) -> None:
    number = _SETRESGID.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, "no per-thread setresgid on this architecture")
    if _libc().syscall(ctypes.c_long(number), _KEEP, ctypes.c_long(gid), _KEEP) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@contextlib.contextmanager
def privileged() -> Iterator[None]:
    """The saved set-group-ID as this thread's effective gid for the block, if it differs."""
    _real, effective, saved = os.getresgid()
    if saved == effective:
        yield
        return
    _thread_setegid(saved)
    try:
        yield
    finally:
        _thread_setegid(effective)
