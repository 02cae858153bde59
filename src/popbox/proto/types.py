"""Value types shared by every layer: states, message numbers, UIDLs, response codes.

Three kinds of number and name, three types, so that none is mistaken for another (the
three index spaces of Dovecot's pop3-client.h): `MsgNo`, the 1-based message number a
client sees (RFC 1939 §4), exists only at the wire; `Index`, the 0-based position in a
session's snapshot, is what the server and the store speak; `Uidl` is a message's
unique-id (RFC 1939 §7). `MsgNo(1).index()` does not exist on purpose: `to_index` is
the one conversion.
"""

from __future__ import annotations

import enum
from typing import NewType

MsgNo = NewType("MsgNo", int)
"""A message number as the client sees it: 1 is the first message of the snapshot."""

Index = NewType("Index", int)
"""A position in a session's snapshot: 0 is message number 1."""


def to_index(msg: MsgNo) -> Index:
    # Not Index(msg - 1): calling a NewType is a Python call too, on every command.
    return msg - 1  # type: ignore[return-value]


Uidl = NewType("Uidl", str)
"""A unique-id listing: 1 to 70 characters in 0x21..0x7E (RFC 1939 §7)."""


class State(enum.Enum):
    """The POP3 session states of RFC 1939 §3, plus the end of the conversation."""

    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    CLOSED = "CLOSED"


class RespCode(enum.StrEnum):
    """Extended response codes: RFC 2449 §8, RFC 3206, RFC 6856. Strings, so a code the
    server sends and one a client reads compare equal."""

    IN_USE = "IN-USE"
    LOGIN_DELAY = "LOGIN-DELAY"
    SYS_TEMP = "SYS/TEMP"
    SYS_PERM = "SYS/PERM"
    AUTH = "AUTH"
    UTF8 = "UTF8"


def is_valid_uidl(value: str) -> bool:
    """RFC 1939 §7: 1 to 70 characters in the range 0x21 to 0x7E."""
    return 0 < len(value) <= 70 and value.isascii() and value.isprintable() and " " not in value
