"""The index of an mbox spool: where each message is, its size, its UIDL.

Scanning (RFC 4155): a message starts at a `From ` line (popbox.store.mbox_format) at the
start of the spool or after a line end, and runs to the next one (its *span*). Its content
is what follows the From line, without the empty line that separates it from the next
message (one "\\n" off a span that ends in two). Octets before the first From line, if
any are not blank, are served as a message of their own (nothing is hidden or lost).
The size is the content's CRLF size after unquoting (RFC 1939 §11, popbox.proto.wire).

UIDLs (RFC 1939 §7) must not change when other messages are deleted, so they never
depend on a position. A message's *key* is a hash of its From line and the first KB of
its content (the headers: Received, Message-ID, Date). Its UIDL is, in this order: the
``X-UIDL:`` header qpopper wrote, when valid and not taken; the UIDL the index file gave
the same key before; else one derived from the key. Two messages with the same key (a
message delivered twice) get ``-2``, ``-3``... in spool order, and the index keeps them.

The index file (``<name>.uidlist``, atomically replaced) stores each message's offsets,
size, key, UIDL and seen mark, with the spool's inode and size. A later login reuses it
when the spool is the same inode, has not shrunk, its first and last indexed messages
still have their keys at their offsets, and whatever follows the indexed end starts with
a From line: then only the appended tail is scanned. Anything else (another program
rewrote the spool) is a full scan, keeping the UIDLs by key. A reader checks the key
again before serving a message, so a stale index can never serve the wrong mail.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from popbox.fsutil import write_atomic
from popbox.proto.types import is_valid_uidl
from popbox.proto.wire import SizeCounter
from popbox.store.mbox_format import FROM_LINE, FROM_LINE_MAX, MboxFormat, Unquoter, find_starts

SCAN_CHUNK = 1 << 20
KEY_BYTES = 1024
HEADER_LIMIT = 65536  # octets searched for X-UIDL
PREFIX_LIMIT = 4096  # a blank prefix longer than this is served as a message
_MAGIC = "popbox-mbox-index 1"
_X_UIDL = re.compile(rb"(?im)^X-UIDL:[ \t]*(\S+)[ \t]*\r?$")


@dataclass(slots=True)
class Entry:
    """One message: its span [start, end), its content [body, cend), and its listing."""

    start: int
    body: int
    cend: int
    end: int
    size: int
    key: str
    uidl: str
    seen: bool = False


def message_key(from_line: bytes, content_head: bytes) -> str:
    return hashlib.sha256(from_line + b"\0" + content_head[:KEY_BYTES]).hexdigest()[:32]


def derived_uidl(key: str) -> str:
    return "m" + key[:24]


def key_at(fd: int, entry: Entry) -> str | None:
    """The key of the message now at `entry`'s offsets (None if the spool is shorter)."""
    head = os.pread(fd, entry.body - entry.start + KEY_BYTES, entry.start)
    if len(head) < entry.body - entry.start:
        return None
    return message_key(head[: entry.body - entry.start],
                       head[entry.body - entry.start :][: max(0, entry.cend - entry.body)])


def _starts(fd: int, start: int, size: int) -> list[int]:
    """Message starts in [start, size): `start` itself when it holds a From line."""
    head = os.pread(fd, FROM_LINE_MAX, start)
    found = [start] if FROM_LINE.match(head) else []
    pos, carry = start, b""
    while pos < size:
        data = carry + os.pread(fd, min(SCAN_CHUNK, size - pos), pos)
        base = pos - len(carry)
        final = base + len(data) >= size or len(data) == len(carry)
        more, settled = find_starts(data, base, final=final)
        found.extend(more)
        if final:
            break
        pos = base + len(data)
        carry = data[settled:]
    if start == 0 and size > 0 and found[:1] != [0]:
        # Octets before the first From line: a blank prefix is no message, anything
        # else is served as one (it may be mail some program wrote without a From line).
        first = found[0] if found else size
        if first > PREFIX_LIMIT or os.pread(fd, first, 0).strip(b"\n\r\t ") != b"":
            found.insert(0, 0)
    return found


def _measure(fd: int, start: int, end: int, fmt: MboxFormat) -> tuple[int, int, int, bytes, bytes]:
    """(body, cend, size, from line, first octets of the content) of the span."""
    head = os.pread(fd, min(end - start, FROM_LINE_MAX + HEADER_LIMIT), start)
    line = FROM_LINE.match(head)
    body = start + (line.end() if line else 0)
    tail = os.pread(fd, min(3, end - body), max(body, end - 3))
    cend = end  # the empty line before the next From line is not the message's:
    if tail.endswith(b"\n\n"):
        cend = end - 1
    elif tail.endswith(b"\n\r\n"):  # a spool written with CRLF line ends
        cend = end - 2
    unquote = Unquoter(fmt)
    counter = SizeCounter()
    pos = body
    while pos < cend:
        chunk = os.pread(fd, min(SCAN_CHUNK, cend - pos), pos)
        if not chunk:
            break
        pos += len(chunk)
        counter.feed(unquote.feed(chunk))
    counter.feed(unquote.finish())
    size = counter.finish() if cend > body else 0
    return body, cend, size, head[: body - start], head[body - start :][: cend - body]


def _x_uidl(content_head: bytes) -> str | None:
    headers = re.split(rb"\r?\n\r?\n", content_head, maxsplit=1)[0]
    match = _X_UIDL.search(headers)
    if match is None:
        return None
    value = match.group(1).decode("ascii", "replace")
    return value if is_valid_uidl(value) else None


def scan(fd: int, start: int, size: int, fmt: MboxFormat, *,
         used: set[str], known: dict[str, list[str]]) -> list[Entry]:
    """Index the messages in [start, size). `used`: UIDLs already taken (updated);
    `known`: UIDLs an earlier index gave each key, used first to last (consumed)."""
    starts = _starts(fd, start, size)
    entries: list[Entry] = []
    for i, at in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else size
        body, cend, octets, line, head = _measure(fd, at, end, fmt)
        key = message_key(line, head)
        candidates = [_x_uidl(head), *known.pop(key, []), derived_uidl(key)]
        uidl = next((u for u in candidates if u is not None and u not in used), None)
        if uidl is None:
            base = derived_uidl(key)
            uidl = next(f"{base}-{n}" for n in range(2, len(used) + 3) if f"{base}-{n}" not in used)
        used.add(uidl)
        entries.append(Entry(at, body, cend, end, octets, key, uidl))
    return entries


@dataclass(slots=True)
class Index:
    """The index of one spool, as stored in its index file."""

    ino: int
    size: int
    entries: list[Entry]

    def known(self) -> dict[str, list[str]]:
        by_key: dict[str, list[str]] = {}
        for entry in self.entries:
            by_key.setdefault(entry.key, []).append(entry.uidl)
        return by_key

    def seen(self) -> set[str]:
        return {e.uidl for e in self.entries if e.seen}


def load(path: str) -> Index | None:
    """The index file, or None when it is missing, unreadable or not ours."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            return None  # another user's file in a shared folder: not trusted
        with os.fdopen(os.dup(fd), "rb") as f:
            lines = f.read().decode("ascii").splitlines()
        magic, ino, size = lines[0].rsplit(" ", 2)
        if magic != _MAGIC:
            return None
        entries = []
        for line in lines[1:]:
            s, b, c, e, n, key, seen, uidl = line.split(" ")
            entries.append(Entry(int(s), int(b), int(c), int(e), int(n), key, uidl, seen == "1"))
        return Index(int(ino), int(size), entries)
    except (ValueError, IndexError, UnicodeDecodeError, OSError):
        return None
    finally:
        os.close(fd)


def save(path: str, index: Index) -> None:
    """Replace the index file atomically (temporary file, fsync, rename). OSError
    propagates."""
    lines = [f"{_MAGIC} {index.ino} {index.size}\n"]
    lines.extend(f"{e.start} {e.body} {e.cend} {e.end} {e.size} {e.key} {int(e.seen)} {e.uidl}\n"
                 for e in index.entries)
    write_atomic(path, "".join(lines).encode("ascii"))  # fsynced, its folder too


def _reusable(fd: int, st: os.stat_result, old: Index) -> bool:
    if st.st_ino != old.ino or st.st_size < old.size:
        return False
    if old.entries:
        first, last = old.entries[0], old.entries[-1]
        if last.end != old.size or key_at(fd, first) != first.key or key_at(fd, last) != last.key:
            return False
    if st.st_size > old.size:
        return FROM_LINE.match(os.pread(fd, FROM_LINE_MAX, old.size)) is not None
    return True


def refresh(fd: int, old: Index | None, fmt: MboxFormat) -> tuple[Index, bool]:
    """The spool's index now (the caller holds the spool's locks), and whether it differs
    from `old`. Seen marks carry over by UIDL."""
    st = os.fstat(fd)
    if old is not None and _reusable(fd, st, old):
        if st.st_size == old.size:
            return old, False
        used = {e.uidl for e in old.entries}
        tail = scan(fd, old.size, st.st_size, fmt, used=used, known={})
        return Index(st.st_ino, st.st_size, [*old.entries, *tail]), True
    known = old.known() if old is not None else {}
    entries = scan(fd, 0, st.st_size, fmt, used=set(), known=known)
    if old is not None:
        mark(entries, old.seen())
    return Index(st.st_ino, st.st_size, entries), True


def mark(entries: Iterable[Entry], seen: Sequence[str] | set[str]) -> int:
    """Mark the entries whose UIDL is in `seen`; returns how many."""
    wanted = set(seen)
    count = 0
    for entry in entries:
        if entry.uidl in wanted:
            entry.seen = True
            count += 1
    return count
