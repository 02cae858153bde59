"""Maildir file names: what they carry and how popbox derives UIDLs from them.

A Maildir message file is named ``<unique>[:<info>]`` (cr.yp.to/proto/maildir.html).
The unique part is written once, by the delivery agent, and never changes; the info part
``2,<flags>`` is rewritten by every agent that changes a flag, and moving a message from
``new/`` to ``cur/`` adds it. Dovecot appends size fields to the unique part, separated
by commas: ``,S=<file size>`` and ``,W=<size with CRLF line ends>``, and allows
``<flags>,<other fields>`` after the flags (doc.dovecot.org, "Maildir Mailbox Format").
Courier's deliverquota writes ``,S=`` too.

So the *base* of a name - the unique part up to the first ``,`` or ``:`` - identifies a
message for its whole life, whatever directory or flags it has: it is the UIDL, when it
is a valid one (1-70 characters in 0x21-0x7E, RFC 1939 §7); otherwise a hash of it is.

Ordering: the unique part starts with the delivery time in seconds; Dovecot, Courier and
Postfix also write the microseconds as an ``M<usec>`` field in the next dot-separated
component (``1700000000.M123P456.host``, ``1700000000.V801I2bM3.host``), which sorts
deliveries within one second numerically.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import threading
from typing import NamedTuple

from popbox.proto.types import Uidl, is_valid_uidl

_NAME = re.compile(r"([^,:]*)(?:,([^:]*))?")
_TIME = re.compile(r"(\d+)(?:\.[^.]*?M(\d+))?")
_NAME_MATCH = _NAME.match
_TIME_MATCH = _TIME.match
_HASHED_UIDL_CHARS = 40  # hex digits of SHA-256 kept for derived UIDLs (160 bits)


class NameInfo(NamedTuple):
    """What a message file name tells without opening the file."""

    base: str
    physical_size: int | None  # ,S=
    wire_size: int | None  # ,W=
    seconds: int  # delivery time, 0 when the name does not start with one
    usec: int


def _number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def parse_name(name: str) -> NameInfo:
    """Split a message file name into its base, its size fields and its delivery time."""
    return NameInfo(*name_fields(name))


def name_fields(name: str) -> tuple[str, int | None, int | None, int, int]:
    """`parse_name` as a plain tuple, for listing 100,000 names: the common names (no
    fields, no info, as Postfix and qmail deliver into ``new/``) skip the first pattern."""
    if "," in name or ":" in name:
        match = _NAME_MATCH(name)
        assert match is not None  # the pattern matches every string
        base, fields = match.groups()
        if not base:  # a name starting with "," or ":" - keep the whole name as identity
            base = name
        physical = wire = None
        if fields:
            for field in fields.split(","):
                if field.startswith("S="):
                    physical = _number(field[2:])
                elif field.startswith("W="):
                    wire = _number(field[2:])
    else:
        base, physical, wire = name, None, None
    when = _TIME_MATCH(base)
    if when is None:
        return base, physical, wire, 0, 0
    seconds, usec = when.groups()
    return base, physical, wire, int(seconds), int(usec) if usec else 0


def base_of(name: str) -> str:
    """The base of a file name (see `parse_name`)."""
    match = _NAME.match(name)
    return (match.group(1) if match else "") or name


def hashed_uidl(text: str) -> Uidl:
    """A stable UIDL for text that cannot be one itself: hex of its SHA-256."""
    digest = hashlib.sha256(os.fsencode(text)).hexdigest()
    return Uidl(digest[:_HASHED_UIDL_CHARS])


def uidl_for_base(base: str) -> Uidl:
    """The base itself when it is a valid UIDL, else a hash of it."""
    return Uidl(base) if is_valid_uidl(base) else hashed_uidl(base)


def with_flag(name: str, flag: str) -> str | None:
    """The name with `flag` added to its ``:2,`` flags (ASCII order, as the spec requires).

    A name without info gets ``:2,<flag>``. Dovecot's ``,<fields>`` after the flags are
    kept. Returns None for info of another kind (``:1,...``), which is left alone.
    """
    colon = name.find(":")
    if colon < 0:
        return f"{name}:2,{flag}"
    info = name[colon + 1 :]
    if not info.startswith("2,"):
        return None
    flags, sep, extra = info[2:].partition(",")
    if flag in flags:
        return name
    return f"{name[:colon]}:2,{''.join(sorted(flags + flag))}{sep}{extra}"


def has_flag(name: str, flag: str) -> bool:
    colon = name.find(":")
    if colon < 0:
        return False
    info = name[colon + 1 :]
    return info.startswith("2,") and flag in info[2:].partition(",")[0]


_deliveries = itertools.count(1)
_deliveries_lock = threading.Lock()


def _escape_host(host: str) -> str:
    # The spec's escapes for "/" and ":"; "," too, since it ends the base for Dovecot.
    host = host.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")
    return host or "localhost"


def unique_name(now_ns: int, host: str) -> str:
    """``<sec>.M<usec>P<pid>Q<n>.<host>``: Dovecot's form; usec zero-padded so it sorts."""
    with _deliveries_lock:
        serial = next(_deliveries)
    seconds, rest = divmod(now_ns, 1_000_000_000)
    return f"{seconds}.M{rest // 1000:06d}P{os.getpid()}Q{serial}.{_escape_host(host)}"
