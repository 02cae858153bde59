"""The mbox formats (RFC 4155, and qmail's mbox(5) for mboxrd), written and read.

Each message starts with a `From <sender> <date>` line and ends with an empty line. A body
line that would look like a `From ` line is quoted with ">": mboxrd quotes every line
matching ``>*From `` (one more ">"), so reading it back removes exactly one and the message
comes back unchanged; mboxo (what Postfix `local` and procmail write) quotes only
``From ``, so a body line that really began with ">From " comes back without its ">".

Writing: `MboxrdQuoter` quotes a stream of LF pieces (`popbox fetch`); `quote` a whole
message; `from_line` and `envelope_sender` make the separator line. It holds back at most
the start of a line that could still become ">*From " (4 octets of "From", after any number
of ">", which it passes through at once: adding the ">" later, after the run, gives the
same bytes as adding it before).

Reading: `find_starts` finds the From lines that begin messages, `Unquoter` undoes the
quoting on a stream of chunks.
"""

from __future__ import annotations

import re
import time
from typing import Literal

_FROM_AFTER_LF = re.compile(rb"\n(>*From )")
_FROM_AT_START = re.compile(rb">*From ")
_PARTIAL = re.compile(rb">*(F|Fr|Fro|From)?")
_RETURN_PATH = re.compile(rb"(?im)^Return-Path:[ \t]*<?([^\s<>]*)>?[ \t]*$")
HEADER_LIMIT = 65536  # octets read to find Return-Path before the From line is written


class MboxrdQuoter:
    __slots__ = ("_hold", "_last", "_start")

    def __init__(self) -> None:
        self._hold = b""  # a possible "From" prefix at a line start, not yet sent
        self._start = True  # the current line so far is only ">" (or nothing)
        self._last = b"\n"

    def feed(self, chunk: bytes) -> bytes:
        data = self._hold + chunk
        self._hold = b""
        if not data:
            return b""
        nl = data.rfind(b"\n")
        tail = nl + 1  # where the last, unfinished line starts
        if nl >= 0 or self._start:
            partial = _PARTIAL.fullmatch(data, tail)
            if partial and partial.group(1):
                self._hold = data[partial.start(1) :]
                data = data[: partial.start(1)]
        out = _FROM_AFTER_LF.sub(rb"\n>\1", data)
        if self._start and _FROM_AT_START.match(data):
            out = b">" + out
        if nl >= 0 or self._start:
            self._start = data[tail:].strip(b">") == b""
        if out:
            self._last = out[-1:]
        return out

    def finish(self) -> bytes:
        """The rest, then the line end the message lacks, then the separating empty line."""
        out, self._hold = self._hold, b""
        last = out[-1:] or self._last
        return out + (b"\n" if last == b"\n" else b"\n\n")


def envelope_sender(headers: bytes) -> str:
    """The Return-Path address, or MAILER-DAEMON (also for the null sender `<>`)."""
    match = _RETURN_PATH.search(headers)
    sender = match.group(1).decode("ascii", "replace") if match else ""
    if not sender or not sender.isprintable() or not sender.isascii():
        return "MAILER-DAEMON"
    return sender


def from_line(sender: str, when: float | None = None) -> bytes:
    """`From sender Thu Jan  1 00:00:00 2024` (the date in ctime(3) form, local time)."""
    stamp = time.asctime(time.localtime(when))
    return f"From {sender} {stamp}\n".encode("ascii")


# -- reading (popbox.store.mbox) ----------------------------------------------------------

# A `From ` line that starts a message: "From", a sender, then a ctime(3)-style date
# ("Wed Dec  2 02:05:55 2026", possibly with a zone). Like mutt's and Dovecot's readers,
# only a line of this shape separates messages, so an unquoted "From here on" in a body
# written by a careless program stays in its message.
FROM_LINE = re.compile(
    rb"From [^\n]*?[A-Z][a-z]{2},? +[A-Z][a-z]{2} +\d{1,2} +\d{1,2}:\d\d[^\n]*\n"
)
FROM_LINE_MAX = 1024  # longer lines are not From lines
_CANDIDATE = re.compile(rb"\nFrom ")

MboxFormat = Literal["mboxrd", "mboxo"]


def find_starts(data: bytes, offset: int, *, final: bool) -> tuple[list[int], int]:
    """Message starts (positions of the `F` of a From line after a line end) in `data`,
    which begins at file offset `offset`; and how much of `data` is settled: the rest (a
    possible From line cut by the chunk's end) must be looked at again with more data."""
    starts: list[int] = []
    settled = max(0, len(data) - 5)  # "\nFrom" at the very end: undecided
    for match in _CANDIDATE.finditer(data):
        at = match.start() + 1
        line = FROM_LINE.match(data, at, at + FROM_LINE_MAX)
        if line is not None:
            starts.append(offset + at)
        elif not final and data.find(b"\n", at, at + FROM_LINE_MAX) < 0 \
                and len(data) - at < FROM_LINE_MAX:
            return starts, match.start()  # the line goes on in the next chunk
    if final:
        settled = len(data)
    return starts, settled


def quote(message: bytes, fmt: MboxFormat) -> bytes:
    """The message with its `From ` lines quoted as `fmt` writes them (RFC 4155 §2)."""
    pattern = _QUOTE_RD if fmt == "mboxrd" else _QUOTE_O
    return pattern.sub(rb">\1", message)


_QUOTE_RD = re.compile(rb"(?m)^(>*From )")
_QUOTE_O = re.compile(rb"(?m)^(From )")
_UNQUOTE = {"mboxrd": re.compile(rb"(?m)^>(>*From )"), "mboxo": re.compile(rb"(?m)^>(From )")}
_HOLD = {"mboxrd": re.compile(rb">+(?:F|Fr|Fro|From)?"),
         "mboxo": re.compile(rb">(?:F|Fr|Fro|From)?")}
HOLD_LIMIT = 4096  # a line start of more ">" than this is passed on as it is


class Unquoter:
    """Removes the quoting `quote` added, on a stream of chunks: mboxrd takes one ">" off
    every line matching ``>+From ``; mboxo takes it off ``>From `` only (so mboxo cannot
    tell a quoted line from one that was written with its ">"; that is the format).

    A line start that could still turn out to be quoted (">>Fro" at a chunk's end) is
    held back until the next chunk decides; that is at most `HOLD_LIMIT` octets."""

    __slots__ = ("_hold", "_pattern", "_prefix", "_start")

    def __init__(self, fmt: MboxFormat) -> None:
        self._pattern = _UNQUOTE[fmt]
        self._prefix = _HOLD[fmt]
        self._hold = b""
        self._start = True  # the next octet starts a line

    def feed(self, chunk: bytes) -> bytes:
        data = self._hold + chunk
        self._hold = b""
        if not data:
            return b""
        nl = data.rfind(b"\n")
        tail = nl + 1
        if (nl >= 0 or self._start) and len(data) - tail <= HOLD_LIMIT \
                and self._prefix.fullmatch(data, tail):
            self._hold = data[tail:]
            data = data[:tail]
        if not data:
            return b""
        if self._start:
            out = self._pattern.sub(rb"\1", data)
        else:  # the first line began in an earlier chunk: not a line start
            first = data.find(b"\n") + 1
            out = data if first == 0 else data[:first] + self._pattern.sub(rb"\1", data[first:])
        self._start = data.endswith(b"\n") or bool(self._hold)
        return out

    def finish(self) -> bytes:
        out, self._hold = self._hold, b""
        return out
