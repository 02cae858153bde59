"""Value types shared by every layer: states, message numbers, UIDLs, response codes.

Message numbers (1-based, per session, RFC 1939 §4) and unique-ids (RFC 1939 §7, UIDL)
are distinct types so that neither is mistaken for a list index or a file name.
"""

from __future__ import annotations

import enum
from typing import NewType

MsgNo = NewType("MsgNo", int)
"""A message number as the client sees it: 1 is the first message of the snapshot."""

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
