"""Where `popbox fetch` delivers: one target per account, named by its configuration.

A target is frozen data (what the accounts file or the command line said); `open_destination`
turns it into a `Destination` the fetcher writes to. Maildir and mbox deliveries are exactly
once across crashes (see `popbox.client.maildir` and `popbox.client.mbox`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from popbox.client.fetcher import Destination
from popbox.client.maildir import Maildir
from popbox.client.mbox import Mbox
from popbox.client.state import StateFile


class DeliveryDeferred(Exception):
    """The destination could not take a message now (an MDA's exit status 75 or a signal,
    an LMTP/SMTP 4xx reply): it was not delivered, and the run ends; the next run tries it
    again."""


class DeliveryFailed(Exception):
    """The destination refused a message for good (another MDA exit status, a 5xx reply):
    it is left on the server and reported; the run goes on with the next message."""


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
    `%u` and the default recipient)."""
    match target:
        case MaildirTarget(path):
            return Maildir(path)
        case MboxTarget(path):
            return Mbox(path, state.spool_dir)
        case _:
            raise ValueError(f"delivery to {describe(target)} is not available yet")
