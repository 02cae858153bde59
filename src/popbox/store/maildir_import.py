"""Reusing the UIDLs another POP3 server already gave out for a maildir (migration).

A client that leaves mail on the server remembers UIDLs; if a new server lists other ones,
the client downloads everything again. Two servers keep theirs in the maildir root:

* Dovecot, ``dovecot-uidlist`` (doc.dovecot.org, "Maildir Mailbox Format"; the comment
  atop Dovecot's src/lib-storage/index/maildir/maildir-uidlist.c). Version 3 (Dovecot
  1.1+): a header ``3 V<uidvalidity> N<next uid> G<guid> ...``, then one line per message
  ``<uid> [<key><value> ...] :<last known file name>``; a ``P<uidl>`` field, when present,
  is the POP3 UIDL Dovecot gave out (pop3_save_uidl, migrations). Version 1: header
  ``1 <uidvalidity> <next uid>``, lines ``<uid> <file name>``. Without ``P``, the UIDL is
  Dovecot's default ``pop3_uidl_format = %08Xu%08Xv`` (Dovecot 1.x-2.3 default, in
  mail-storage-settings.c): the uid then the uidvalidity, each 8 hex digits, which Dovecot
  prints in lower case despite the ``X`` (seen from Dovecot 2.3.19 in popbox's tests).
  ASSUMPTION: the server used that default. Dovecot 2.4 spells the same default
  ``%{uid | hex(8)}%{uidvalidity | hex(8)}``; sites that changed the setting need their
  own mapping. The ``O<n>`` field (Dovecot's POP3 order after a migration) is not used:
  popbox orders by delivery time.
* Courier, ``courierpop3dsizelist`` (courier-imap imap/pop3dserver.c): a header
  ``/<version> <next uid> <uidvalidity>`` (versions 2 and 3), then one line per message
  ``<file name> <size> <uid>:<uidvalidity>[:<utf8>]``; Courier lists such a message as
  ``UID<uid>-<uidvalidity>`` (``UID<uid>`` when the uidvalidity is 0).

Both map a message by its file name, whose flags may have changed since; we match on the
base (popbox.store.maildir_names). The files are read, never written. A malformed line is
skipped; an unreadable or unknown file imports nothing.
"""

from __future__ import annotations

import logging
import os
from typing import Literal

from popbox.fsutil import read_regular
from popbox.proto.types import Uidl, is_valid_uidl
from popbox.store.maildir_names import base_of

UidlImport = Literal["dovecot", "courier"]
DOVECOT_UIDLIST = "dovecot-uidlist"
COURIER_SIZELIST = "courierpop3dsizelist"

log = logging.getLogger(__name__)


def load_imported_uidls(root: str, kind: UidlImport | None) -> dict[str, Uidl]:
    """Base name -> UIDL given out by the previous server (empty when none)."""
    if kind is None:
        return {}
    name = DOVECOT_UIDLIST if kind == "dovecot" else COURIER_SIZELIST
    try:
        text = read_regular(os.path.join(root, name)).decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warning("%s in %s unreadable, not imported: %s", name, root, exc)
        return {}
    lines = text.split("\n")
    return parse_dovecot(lines) if kind == "dovecot" else parse_courier(lines)


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _hex_uidl(uid: int, uidvalidity: int) -> Uidl:
    return Uidl(f"{uid:08x}{uidvalidity:08x}")  # as Dovecot 2.3.19 prints %08Xu%08Xv


def parse_dovecot(lines: list[str]) -> dict[str, Uidl]:
    header = lines[0].split() if lines else []
    if not header or header[0] not in ("1", "3"):
        return {}
    version = header[0]
    uidvalidity = None
    if version == "1" and len(header) >= 2 and _digits(header[1]):
        uidvalidity = int(header[1])
    elif version == "3":
        for field in header[1:]:
            if field.startswith("V") and _digits(field[1:]):
                uidvalidity = int(field[1:])
    if uidvalidity is None:
        return {}
    out: dict[str, Uidl] = {}
    for line in lines[1:]:
        if version == "3":
            head, sep, filename = line.partition(" :")
        else:
            head, sep, filename = line.partition(" ")
        fields = head.split()
        if not sep or not filename or not fields or not _digits(fields[0]):
            continue
        uidl = _hex_uidl(int(fields[0]), uidvalidity)
        for field in fields[1:]:
            if field.startswith("P") and is_valid_uidl(field[1:]):
                uidl = Uidl(field[1:])
        out[base_of(filename)] = uidl
    return out


def parse_courier(lines: list[str]) -> dict[str, Uidl]:
    header = lines[0].split() if lines else []
    if len(header) < 2 or header[0] not in ("/2", "/3"):
        return {}
    out: dict[str, Uidl] = {}
    for line in lines[1:]:
        parts = line.rsplit(" ", 2)
        if len(parts) != 3 or not parts[0]:
            continue
        ids = parts[2].split(":")
        if len(ids) < 2 or not (_digits(ids[0]) and _digits(ids[1])) or int(ids[0]) == 0:
            continue
        uid, uidv = int(ids[0]), int(ids[1])
        out[base_of(parts[0])] = Uidl(f"UID{uid}-{uidv}" if uidv else f"UID{uid}")
    return out
