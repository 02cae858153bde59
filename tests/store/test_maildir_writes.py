"""What a Maildir session writes besides the mail: the listing cache in place, the size
cache and the retrieval record only when they must change. A session that deletes a
message (RFC 1939 §6: at QUIT) makes no new file for them, so the file system allocates
no inode per session; nothing planted in the maildir is written through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from popbox.proto.types import Index
from popbox.store import maildir_cache, maildir_listing, maildir_scan, maildir_times
from popbox.store.base import CommitReport
from popbox.store.maildir import MaildirDrop, MaildirStore


def maildir(tmp_path: Path, count: int) -> Path:
    """`count` messages in new/, named as Postfix names them (no size in the name)."""
    root = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    for n in range(count):
        (root / "new" / f"17000000{n:02d}.V801I{n:x}M{n}.mx").write_bytes(
            b"Subject: %d\n\nbody %d\n" % (n, n))
    return root


async def session(root: Path, *, delete: set[int] = frozenset(),
                  seen: set[int] = frozenset()) -> MaildirDrop:
    drop = await MaildirStore().open(str(root))
    assert isinstance(drop, MaildirDrop), drop
    report = await drop.commit({Index(i) for i in delete}, {Index(i) for i in seen})
    assert isinstance(report, CommitReport), report
    return drop


def inode(path: Path) -> int:
    return path.stat().st_ino


def temporaries(root: Path) -> list[str]:
    return [name for name in os.listdir(root) if name.endswith(".tmp")]


async def test_a_deletion_rewrites_only_the_listing_in_place(tmp_path: Path) -> None:
    """After a QUIT that deleted a message, the next listing writes over the listing
    cache's file (same inode), leaves the size cache as it was, and lists the rest."""
    root = maildir(tmp_path, 5)
    await session(root, seen={0, 1})  # lists, measures, moves 0 and 1 to cur/
    await session(root)  # lists the moved files: the caches are made
    listing, sizes = root / maildir_listing.LISTING_NAME, root / maildir_cache.CACHE_NAME
    before = (inode(listing), inode(sizes), sizes.read_bytes())
    drop = await session(root, delete={2})
    uidls = [m.uidl for i, m in enumerate(drop.messages) if i != 2]
    after = await session(root)
    assert [m.uidl for m in after.messages] == uidls
    assert (inode(listing), inode(sizes), sizes.read_bytes()) == before
    assert temporaries(root) == []


async def test_sizes_of_messages_gone_go_once_they_outnumber_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maildir_scan, "STALE_SIZES", 2)
    root = maildir(tmp_path, 6)
    await session(root)
    sizes = root / maildir_cache.CACHE_NAME
    assert len(maildir_cache.decode(sizes.read_bytes()) or {}) == 6
    await session(root, delete={0, 1})
    await session(root)  # 2 gone, 4 there: kept
    assert len(maildir_cache.decode(sizes.read_bytes()) or {}) == 6
    await session(root, delete={0, 1, 2})
    last = await session(root)  # 5 gone, 1 there: rewritten with the one
    assert len(last.messages) == 1
    assert len(maildir_cache.decode(sizes.read_bytes()) or {}) == 1


async def test_a_planted_hard_link_is_replaced_not_written_through(tmp_path: Path) -> None:
    root = maildir(tmp_path, 3)
    await session(root)
    listing = root / maildir_listing.LISTING_NAME
    victim = tmp_path / "victim"
    victim.write_bytes(b"not popbox's")
    listing.unlink()
    os.link(victim, listing)
    await session(root, delete={0})
    drop = await session(root)
    assert victim.read_bytes() == b"not popbox's"
    assert inode(listing) != inode(victim)
    stored = maildir_listing.load(str(root))
    assert stored is not None and list(stored[1].uidls) == [m.uidl for m in drop.messages]


def test_forgetting_appends_a_line_and_reading_applies_it(tmp_path: Path) -> None:
    maildir_times.append(str(tmp_path), ["a", "b", "c"], 100)
    record = tmp_path / maildir_times.RETRIEVED
    first = inode(record)
    maildir_times.forget(str(tmp_path), {"b", "never-recorded"})
    assert record.read_bytes() == b"a 100\nb 100\nc 100\nb -\n"
    assert maildir_times.read(str(tmp_path)) == {"a": 100, "c": 100}
    maildir_times.append(str(tmp_path), ["b"], 200)  # back again (undelete, RETR)
    assert maildir_times.read(str(tmp_path)) == {"a": 100, "b": 200, "c": 100}
    maildir_times.forget(str(tmp_path), {"never-recorded"})  # nothing to forget
    assert inode(record) == first


def test_the_record_is_rewritten_once_forgotten_lines_outnumber_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maildir_times, "FORGOTTEN_MAX", 1)
    maildir_times.append(str(tmp_path), ["a", "b", "c", "d"], 100)
    record = tmp_path / maildir_times.RETRIEVED
    maildir_times.forget(str(tmp_path), {"a", "b"})  # 2 forgotten, 2 recorded: appended
    assert record.read_bytes().endswith(b"d 100\na -\nb -\n")
    maildir_times.forget(str(tmp_path), {"c"})  # 3 forgotten, 1 recorded: rewritten
    assert record.read_bytes() == b"d 100\n"
    assert temporaries(tmp_path) == []
