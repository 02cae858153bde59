"""`limits.max_connections_per_user_ip`: how many sessions one user may have from one
client address at once (Dovecot's mail_max_userip_connections), across every worker.

A session holds a slot from the moment its login is proved until it ends; the slot is
taken before the maildrop is opened, so a client that opens many authenticated
connections at once is refused before any of them touches the store. Every popbox store
allows one session per maildrop (a second gets `[IN-USE]`), so this limits what the
maildrop lock does not: logins racing for the lock, queued for the store (a PostgreSQL
pool, a per-uid mail process being started). A limit of 1 is refused by the
configuration: it would answer a second login with this limit's reason instead of
`[IN-USE]`, which clients such as fetchmail tell apart.

Slots are POSIX record locks (`fcntl`) on bytes of one anonymous file (memfd) that the
supervisor makes before forking the workers (named to them in `POPBOX_USERIP_FD`); a
process without one makes its own. A (user, address) pair owns `limit` consecutive bytes
at an offset given by a 51-bit hash of the pair; a session takes the first byte no other
process has locked and this process does not hold already (POSIX locks belong to a
process, so the sessions of one process are told apart here). A lock is one system call
that never waits, and the kernel drops a process's locks when it exits, so a crashed
worker's slots are free at once and can never go stale. Two pairs whose hashes collide
would share slots: with 2**51 offsets that takes millions of pairs logged in at once.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from dataclasses import dataclass

FD_ENV = "POPBOX_USERIP_FD"
MAX_LIMIT = 2048  # bytes per pair: 2**51 pairs * 2**11 stay below the largest off_t


@dataclass(frozen=True, slots=True)
class Slot:
    key: int
    index: int


def _key(user: str, peer: str) -> int:
    digest = hashlib.blake2b(f"{user}\0{peer}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 13


def shared_fd() -> int:
    """Make the file the workers will share and name it in the environment (the
    supervisor, before it forks; the descriptor stays open for its lifetime)."""
    fd = os.memfd_create("popbox-userip")
    os.environ[FD_ENV] = str(fd)
    return fd


class UserIpSlots:
    """The slots of this process: one object per process (`shared()`), since the locks
    belong to the process, not to a server context."""

    _mine: UserIpSlots | None = None

    def __init__(self) -> None:
        inherited = os.environ.get(FD_ENV, "")
        self._fd = int(inherited) if inherited.isdigit() else os.memfd_create("popbox-userip")
        self._pid = os.getpid()
        self._held: dict[int, set[int]] = {}  # key -> the slots this process holds

    @classmethod
    def shared(cls) -> UserIpSlots:
        """This process's (a forked child makes its own: locks are not inherited)."""
        mine = cls._mine
        if mine is None or mine._pid != os.getpid():
            mine = cls._mine = cls()
        return mine

    def take(self, user: str, peer: str, limit: int) -> Slot | None:
        """A slot for one more session of `user` from `peer`, or None if all `limit`
        are taken (in any worker). A limit of 0 means no limit: no slot is needed."""
        if limit <= 0:
            return Slot(-1, -1)
        key = _key(user, peer)
        held = self._held.setdefault(key, set())
        for index in range(min(limit, MAX_LIMIT)):
            if index in held:
                continue
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1,
                            key * MAX_LIMIT + index)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    continue  # another worker's session holds it
                raise
            held.add(index)
            return Slot(key, index)
        if not held:
            del self._held[key]
        return None

    def release(self, slot: Slot) -> None:
        if slot.key < 0:
            return
        held = self._held.get(slot.key)
        if held is None or slot.index not in held:
            return
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, slot.key * MAX_LIMIT + slot.index)
        held.discard(slot.index)
        if not held:
            del self._held[slot.key]
