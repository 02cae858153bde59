"""Where `popbox fetch` delivers: one target per account, named by its configuration.

A target is frozen data (what the accounts file or the command line said); `open_destination`
turns it into a `Destination` the fetcher writes to. Maildir and mbox deliveries are exactly
once across crashes (see `popbox.client.maildir` and `popbox.client.mbox`); MDA
(`popbox.client.mda`), LMTP and SMTP (`popbox.client.smtp_client`) deliveries are at least
once: the record follows the success reply, so a kill between the two delivers that one
message again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from popbox.client.fetcher import DeliveryDeferred, DeliveryFailed, Destination
from popbox.client.maildir import Maildir
from popbox.client.mbox import Mbox
from popbox.client.mda import Mda
from popbox.client.smtp_client import SmtpDestination
from popbox.client.state import StateFile

__all__ = ["DeliveryDeferred", "DeliveryFailed", "LmtpTarget", "MaildirTarget", "MboxTarget",
           "MdaTarget", "SmtpTarget", "Target", "describe", "open_destination"]


@dataclass(frozen=True)
class MaildirTarget:
    path: Path


@dataclass(frozen=True)
class MboxTarget:
    path: Path


@dataclass(frozen=True)
class MdaTarget:
    """A program run once per message, the message on its stdin; `%u` (user), `%a`
    (account) and `%i` (UIDL) are expanded in its arguments, never through a shell."""

    argv: tuple[str, ...]


@dataclass(frozen=True)
class LmtpTarget:
    """An LMTP server (RFC 2033): "host:port" or the path of a Unix socket."""

    address: str
    recipient: str | None = None  # None: the account's user


@dataclass(frozen=True)
class SmtpTarget:
    """An SMTP server (the local MTA): "host:port"."""

    address: str
    recipient: str | None = None  # None: the account's user


Target = MaildirTarget | MboxTarget | MdaTarget | LmtpTarget | SmtpTarget


def describe(target: Target) -> str:
    """How a report names the target."""
    match target:
        case MaildirTarget(path) | MboxTarget(path):
            return str(path)
        case MdaTarget(argv):
            return f"mda {argv[0]}"
        case LmtpTarget(address) | SmtpTarget(address):
            kind = "lmtp" if isinstance(target, LmtpTarget) else "smtp"
            return f"{kind} {address}"


def open_destination(target: Target, state: StateFile, *, account: str,
                     user: str) -> Destination:
    """The destination for `target`; `account` and `user` name the account (for `%a`,
    `%u` and the default recipient). ValueError for a target that cannot work (an empty
    command, an unknown %-sequence, a bad address)."""
    match target:
        case MaildirTarget(path):
            return Maildir(path)
        case MboxTarget(path):
            return Mbox(path, state.spool_dir)
        case MdaTarget(argv):
            return Mda(argv, state.spool_dir, account=account, user=user)
        case LmtpTarget(address, recipient):
            return SmtpDestination(address, recipient or user, state.spool_dir, lmtp=True)
        case SmtpTarget(address, recipient):
            return SmtpDestination(address, recipient or user, state.spool_dir, lmtp=False)
