"""Switching to `popbox fetch` without fetching old mail again: the UIDLs (RFC 1939 §7)
that fetchmail, getmail6 or mpop recorded for an account, recorded as delivered in a
popbox fetch state file (`popbox.client.state`).

The three files, as those programs write them:

- fetchmail's `~/.fetchids`: one line per message, `user@host UIDL` (the user may itself
  contain "@"; the host is the poll name, no port).
- getmail6's `oldmail-HOST-PORT-USER` (in its getmail directory; "/" and ":" in the name
  become "-"): one line per message,
  `UIDL` NUL `seconds since 1970` (when getmail first saw it).
- mpop's uidls file (`~/.mpop_uidls`, or `uidls_file`): `#` comments, then for each
  account a line ` COUNT HOST USER` (starting with a space) followed by COUNT UIDLs.

Only the lines of the account asked for are taken. A UIDL is what the server sent: 1 to
512 octets of printable ASCII or UTF-8 without spaces; other lines are counted as skipped,
never guessed at. `delivered_at` (what `keep_days` counts from) is getmail's time when it
has one, else the time of the import. A UIDL already recorded keeps its record.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from popbox.client.state import StateFile

Tool = Literal["fetchmail", "getmail", "mpop"]
TOOLS: tuple[Tool, ...] = ("fetchmail", "getmail", "mpop")
MAX_FILE = 256 << 20  # a UIDL list bigger than this is not one
_UIDL = re.compile(r"[^\s\x00-\x1f\x7f]{1,512}")


class ImportStateError(Exception):
    """The file cannot be read, is not in the tool's format, or has no such account."""


@dataclass
class Found:
    """What a file holds for one account: UIDL -> first seen (None: not known)."""

    uidls: dict[str, float | None] = field(default_factory=dict)
    skipped: int = 0  # lines that are not a UIDL
    accounts: set[str] = field(default_factory=set)  # every account the file has

    def add(self, uidl: str, seen: float | None = None) -> None:
        if not _UIDL.fullmatch(uidl):
            self.skipped += 1
            return
        old = self.uidls.get(uidl)
        self.uidls[uidl] = seen if old is None else old if seen is None else min(old, seen)


def fetchmail(text: str, server: str, user: str) -> Found:
    found = Found()
    for line in text.splitlines():
        if not line.strip():
            continue
        who, _, uidl = line.partition(" ")
        name, at, host = who.rpartition("@")
        if not at or not uidl:
            found.skipped += 1
            continue
        found.accounts.add(f"{name}@{host}")
        if name == user and host.lower() == server.lower():
            found.add(uidl.strip())
    return found


def getmail(text: str) -> Found:
    found = Found()
    for line in text.splitlines():
        if not line:
            continue
        uidl, nul, stamp = line.partition("\0")
        seen: float | None = None
        if nul:
            try:
                seen = float(stamp)
            except ValueError:
                found.skipped += 1
                continue
        found.add(uidl, seen)
    return found


def mpop(text: str, server: str, user: str) -> Found:
    found = Found()
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.startswith(" "):
            if line and not line.startswith("#"):
                found.skipped += 1
            continue
        words = line.split()
        if len(words) != 3 or not words[0].isdigit():
            raise ImportStateError(f"line {i}: not an mpop account line: {line[:80]!r}")
        count, host, name = int(words[0]), words[1], words[2]
        found.accounts.add(f"{name}@{host}")
        block = lines[i : i + count]
        if len(block) < count or any(u.startswith(" ") for u in block):
            raise ImportStateError(f"line {i}: {name}@{host} should list {count} UIDLs")
        i += count
        if name == user and host.lower() == server.lower():
            for uidl in block:
                found.add(uidl)
    return found


def read(tool: Tool, path: Path, server: str, port: int, user: str) -> Found:
    """The UIDLs `tool` recorded in `path` for `user` at `server` (`port` only getmail
    records, in the file's name)."""
    try:
        if path.stat().st_size > MAX_FILE:
            raise ImportStateError(f"{path} is over {MAX_FILE >> 20} MiB: not a UIDL list")
        data = path.read_bytes()
    except OSError as exc:
        raise ImportStateError(f"cannot read {path}: {exc.strerror or exc}") from None
    if b"\0" in data and tool != "getmail":
        raise ImportStateError(f"{path} has NUL octets: not a {tool} file")
    text = data.decode("utf-8", "replace")
    match tool:
        case "fetchmail":
            found = fetchmail(text, server, user)
        case "mpop":
            found = mpop(text, server, user)
        case "getmail":
            # getmail6 makes the name so, then turns "/" and ":" into "-"
            expected = f"oldmail-{server}-{port}-{user}".replace("/", "-").replace(":", "-")
            if path.name.startswith("oldmail-") and path.name != expected:
                raise ImportStateError(f"{path.name} is getmail's record of another account "
                                       f"(this one's is {expected})")
            found = getmail(text)
    if not found.uidls:
        known = ", ".join(sorted(found.accounts)) or "none"
        raise ImportStateError(f"{path} has no UIDL for {user}@{server} "
                               f"(accounts in it: {known})")
    return found


@dataclass(frozen=True, slots=True)
class Imported:
    added: int  # UIDLs newly recorded
    known: int  # already recorded before
    skipped: int  # lines that were not UIDLs


def record(state: StateFile, server: str, port: int, user: str, found: Found,
           clock: Callable[[], float] = time.time) -> Imported:
    """Record `found` as delivered for (server, port, user) in the open `state`, and
    save it (atomically, as every state write)."""
    account = state.account(server, port, user)
    now = clock()
    added = known = 0
    for uidl, seen in found.uidls.items():
        if uidl in account.delivered:
            known += 1
            continue
        account.delivered.add(uidl)
        account.delivered_at[uidl] = now if seen is None else min(seen, now)
        added += 1
    if added:
        state.save()
    return Imported(added, known, found.skipped)
