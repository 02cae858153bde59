"""Where a Maildir is opened: a small one on the event loop, unless a message file must be
read for its size; that case and a large maildir in a worker thread, with the same
listing and the same maildrop lock (RFC 1939 §8: one session per maildrop)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from popbox.proto.wire import wire_size
from popbox.store import maildir as maildir_module
from popbox.store.base import Failure
from popbox.store.maildir import INLINE_DIR_OCTETS, MaildirDrop, MaildirStore


def message(n: int) -> bytes:
    return b"Subject: %d\n\nbody %d\n" % (n, n)


def maildir(tmp_path: Path, count: int) -> Path:
    root = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for n in range(count):
        (root / "new" / f"1700{n:06d}.V801I{n:x}M{n}.mx").write_bytes(message(n))
    return root


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions the maildir store ran in a worker thread."""
    ran: list[str] = []
    real = asyncio.to_thread

    async def counted(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        ran.append(func.__name__)
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(maildir_module.asyncio, "to_thread", counted)
    return ran


async def opened(root: Path) -> MaildirDrop:
    drop = await MaildirStore().open(str(root))
    assert isinstance(drop, MaildirDrop), drop
    return drop


async def test_a_small_maildir_is_opened_on_the_loop(tmp_path: Path, threads: list[str]) -> None:
    root = maildir(tmp_path, 3)
    first = await opened(root)  # the sizes are measured: in a thread
    await first.release()
    assert threads == ["_open"]
    (root / "new" / "1800000000.V801I99M9.mx").write_bytes(b"Subject: x\n\n")
    second = await opened(root)  # a new message: measured, in a thread again
    await second.release()
    assert threads == ["_open", "_open"]
    third = await opened(root)  # every size known: on the loop
    assert threads == ["_open", "_open"]
    assert [m.size for m in third.messages] == [
        *(wire_size(message(n)) for n in range(3)), wire_size(b"Subject: x\n\n")]
    await third.release()


async def test_measured_in_a_thread_with_the_lock_held(tmp_path: Path, threads: list[str]) -> None:
    """The lock taken on the loop is the one the thread's listing runs under: no second
    session gets in between, and it is given back with the session."""
    root = maildir(tmp_path, 2)
    drop = await opened(root)
    assert threads == ["_open"]
    assert await MaildirStore().open(str(root)) is Failure.IN_USE
    await drop.release()
    again = await opened(root)
    await again.release()
    assert [m.size for m in again.messages] == [wire_size(message(n)) for n in range(2)]


async def test_a_large_maildir_is_opened_in_a_thread(tmp_path: Path, threads: list[str]) -> None:
    root = maildir(tmp_path, 0)
    count = 0
    while (root / "new").stat().st_size <= INLINE_DIR_OCTETS:
        for n in range(count, count + 100):
            (root / "new" / f"1700{n:06d}.V801I{n:x}M{n}.mx").write_bytes(message(n))
        count += 100
    for _ in range(2):  # measured once, then known: a thread each time all the same
        drop = await opened(root)
        await drop.release()
    assert threads == ["_open", "_open"]
    assert len(drop.messages) == count
