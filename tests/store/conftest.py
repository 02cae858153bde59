"""The mbox tests' fixtures live in mbox_support."""

from mbox_support import procmail, spool

__all__ = ["procmail", "spool"]
