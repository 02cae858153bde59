"""Fixtures and helpers for the mbox tests: a spool under a /var/mail-like folder,
delivery by the real procmail (Debian's, locking as Debian's Postfix local does: a
dotlock made with link(2), then an fcntl lock), and helpers that read a maildrop."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from popbox.proto.types import Index
from popbox.store.base import Failure, Gone, Maildrop, MailStore

LINE = b"From alice@example.org  Wed Dec  2 02:02:40 2026\n"


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    folder = tmp_path / "var-mail"
    folder.mkdir(mode=0o1777)
    return folder / "alice"


Procmail = Callable[[Path, bytes], None]


@pytest.fixture
def procmail() -> Procmail:
    """Deliver one message into a spool with procmail (mboxo quoting, From_ line made
    from -f, an empty line after the message)."""
    binary = shutil.which("procmail")
    assert binary, "procmail is not installed: run scripts/install-peers"

    def deliver(spool: Path, message: bytes) -> None:
        subprocess.run([binary, "-f", "sender@example.org", "-m", f"DEFAULT={spool}",
                        f"LOGFILE={spool.parent / 'procmail.log'}", "/dev/null"],
                       input=message, check=True, timeout=30)

    return deliver


async def open_drop(store: MailStore, location: str) -> Maildrop:
    drop = await store.open(location)
    assert not isinstance(drop, Failure), drop
    return drop


async def chunks(drop: Maildrop, index: int) -> list[bytes] | Gone:
    """Message `index` as the store hands it out, chunk by chunk."""
    reader = await drop.open_message(Index(index))
    if isinstance(reader, Gone):
        return reader
    try:
        out = [await reader.next()]
        while not reader.done:
            out.append(await reader.next())
    finally:
        reader.close()
    return out


async def read_all(drop: Maildrop) -> list[bytes | Gone]:
    out: list[bytes | Gone] = []
    for i in range(len(drop.messages)):
        got = await chunks(drop, i)
        out.append(got if isinstance(got, Gone) else b"".join(got))
    return out


async def contents(store: MailStore, location: str) -> list[bytes]:
    drop = await open_drop(store, location)
    try:
        return await read_all(drop)
    finally:
        await drop.release()
