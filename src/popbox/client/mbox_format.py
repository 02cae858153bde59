"""The mboxrd format (the "mbox" family as described by RFC 4155 and qmail's mbox(5)).

Each message starts with a `From <sender> <date>` line and ends with an empty line; a body
line that starts with any number of ">" followed by "From " gets one more ">" (mboxrd),
so reading it back removes exactly one and the message comes back unchanged.

`MboxrdQuoter` does the quoting on a stream of LF pieces. It holds back at most the start
of a line that could still become ">*From " (4 octets of "From", after any number of ">",
which it passes through at once: adding the ">" later, after the run, gives the same
bytes as adding it before).
"""

from __future__ import annotations

import re
import time

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
