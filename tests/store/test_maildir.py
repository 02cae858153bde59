"""MaildirStore on real maildirs written the way Postfix, Dovecot and Courier write them.

No mocks and no sleeps: every test builds files under tmp_path. "No message file was
read" is proven by changing the files after the first open in a way that a read would
notice (other length with ``,S=`` in the name; same length but other CRLF size without),
then checking that the second open still lists the cached sizes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from popbox.proto.types import Index, Uidl, is_valid_uidl
from popbox.proto.wire import wire_size
from popbox.store import maildir_cache, maildir_listing
from popbox.store.base import GONE, CommitReport, Failure, Gone, read_message
from popbox.store.maildir import LOCK_NAME, MaildirDrop, MaildirStore

POSTFIX = "1700000000.V801I2bM3.mx"
DOVECOT = "1700000001.M2P3.mx"
COURIER = "1700000002.M20046P2137_0.mx"
MSG_A = b"From: a@example.org\nSubject: postfix\n\nhello\n"
MSG_B = b"From: b@example.org\nSubject: dovecot\n\n.dot\n"
MSG_C = b"From: c@example.org\r\nSubject: courier\r\n\r\nbody\r\n"


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def forget_listing(root: Path) -> None:
    """Remove the listing cache, so that the next open lists the maildir and uses the size
    cache (the tests of the size cache go through it, not around it)."""
    (root / maildir_listing.LISTING_NAME).unlink(missing_ok=True)


def same_length_other_size(data: bytes) -> bytes:
    """Same physical length, different CRLF size: a read would report another size."""
    return data.replace(b"\n", b"x")


@pytest.fixture
def maildir(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    yield root


def mixed_maildir(root: Path) -> list[bytes]:
    """A Postfix, a Dovecot and a Courier message, plus everything that is not mail."""
    put(root / "new" / POSTFIX, MSG_A)
    put(root / "cur" / f"{DOVECOT},S={len(MSG_B)},W={wire_size(MSG_B)}:2,S", MSG_B)
    put(root / "cur" / f"{COURIER},S={len(MSG_C)}:2,", MSG_C)
    put(root / "tmp" / "1699999999.M1P1.mx", b"half written")
    put(root / "new" / ".hidden", b"x")
    put(root / "cur" / ".1699999999.M1P1.mx", b"x")
    (root / "cur" / "subdir").mkdir()
    put(root / ".Sent" / "cur" / "1699999998.M1P1.mx:2,S", b"a folder's mail")
    put(root / "dovecot-uidlist", b"3 V1 N1\n")
    put(root / "courierpop3dsizelist", b"/3 1 1\n")
    return [MSG_A, MSG_B, MSG_C]


async def opened(store: MaildirStore, root: Path) -> MaildirDrop:
    drop = await store.open(str(root))
    assert isinstance(drop, MaildirDrop), drop
    return drop


async def read_all(drop: MaildirDrop, index: int) -> bytes | Gone:
    return await read_message(drop, Index(index))


async def chunk_list(drop: MaildirDrop, index: int) -> list[bytes]:
    """The chunks message `index` is read in."""
    reader = await drop.open_message(Index(index))
    assert not isinstance(reader, Gone)
    chunks = [await reader.next()]
    while not reader.done:
        chunks.append(await reader.next())
    reader.close()
    return [chunk for chunk in chunks if chunk]


async def listing(root: Path, store: MaildirStore | None = None) -> list[tuple[str, int]]:
    drop = await opened(store or MaildirStore(), root)
    await drop.release()
    return [(m.uidl, m.size) for m in drop.messages]


def names(root: Path, sub: str) -> list[str]:
    return sorted(p.name for p in (root / sub).iterdir() if not p.name.startswith("."))


# -- what is served, in which order, under which UIDL ------------------------------------


async def test_serves_postfix_dovecot_and_courier_files_only(maildir: Path) -> None:
    bodies = mixed_maildir(maildir)
    drop = await opened(MaildirStore(), maildir)
    assert [(m.uidl, m.size) for m in drop.messages] == [
        (POSTFIX, wire_size(MSG_A)),
        (DOVECOT, wire_size(MSG_B)),
        (COURIER, wire_size(MSG_C)),
    ]
    assert [await read_all(drop, i) for i in range(3)] == bodies
    await drop.release()


async def test_order_by_time_then_microseconds_then_name(maildir: Path) -> None:
    for name in [
        "1700000005.M5P9.b",
        "1700000005.M123P1.a",
        "999999999.M7P1.z",
        "1700000005.M5P9.a",
    ]:
        put(maildir / "new" / name, b"x\n")
    assert [u for u, _ in await listing(maildir)] == [
        "999999999.M7P1.z",
        "1700000005.M5P9.a",
        "1700000005.M5P9.b",
        "1700000005.M123P1.a",
    ]


async def test_uidl_survives_move_to_cur_and_flag_changes(maildir: Path) -> None:
    put(maildir / "new" / POSTFIX, MSG_A)
    before = await listing(maildir)
    os.rename(maildir / "new" / POSTFIX, maildir / "cur" / f"{POSTFIX}:2,S")
    assert await listing(maildir) == before
    os.rename(maildir / "cur" / f"{POSTFIX}:2,S", maildir / "cur" / f"{POSTFIX}:2,FRS")
    assert await listing(maildir) == before == [(POSTFIX, wire_size(MSG_A))]


async def test_read_finds_a_file_renamed_during_the_session(maildir: Path) -> None:
    put(maildir / "new" / POSTFIX, MSG_A)
    drop = await opened(MaildirStore(), maildir)
    os.rename(maildir / "new" / POSTFIX, maildir / "cur" / f"{POSTFIX}:2,T")
    assert await read_all(drop, 0) == MSG_A
    assert await drop.commit(set(), {0}) == CommitReport(deleted=0, missing=0, flagged=1)
    assert names(maildir, "cur") == [f"{POSTFIX}:2,ST"]


class CountingExecutor(ThreadPoolExecutor):
    """A real thread pool that counts the calls handed to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.calls = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return super().submit(fn, *args, **kwargs)


async def test_finding_a_renamed_file_is_done_off_the_event_loop(maildir: Path) -> None:
    """A RETR of a file where the snapshot saw it opens it on the loop, with no thread hop;
    a RETR of a renamed one lists cur/ and new/ in a worker thread, never on the loop (in
    a 100,000-message maildrop that listing would stall every session)."""
    for i in range(3):
        put(maildir / "new" / f"1700000{i:03d}.M1P{i}.host", MSG_A)
    drop = await opened(MaildirStore(), maildir)
    executor = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    assert await read_all(drop, 0) == MSG_A
    assert executor.calls == 0
    os.rename(maildir / "new" / "1700000001.M1P1.host", maildir / "cur" / "1700000001.M1P1.host:2,")
    assert await read_all(drop, 1) == MSG_A
    assert executor.calls == 1
    await drop.release()


async def test_unusable_bases_get_stable_hashed_uidls(maildir: Path) -> None:
    long_base = "1700000000." + "x" * 80 + ".mx"
    put(maildir / "new" / long_base, b"a\n")
    put(maildir / "new" / "1700000001.M1P1.h\u00f6st", b"b\n")
    first = await listing(maildir)
    assert all(is_valid_uidl(u) for u, _ in first)
    os.rename(maildir / "new" / long_base, maildir / "cur" / f"{long_base}:2,S")
    assert await listing(maildir) == first


async def test_copies_sharing_a_base_get_unique_stable_uidls(maildir: Path) -> None:
    put(maildir / "cur" / f"{DOVECOT}:2,S", MSG_B)
    put(maildir / "new" / DOVECOT, MSG_B)  # a copy restored from a backup
    first = await listing(maildir)
    uidls = [u for u, _ in first]
    assert len(set(uidls)) == 2 and DOVECOT in uidls and all(map(is_valid_uidl, uidls))
    os.rename(maildir / "new" / DOVECOT, maildir / "cur" / f"{DOVECOT}:2,F")
    os.rename(maildir / "cur" / f"{DOVECOT}:2,S", maildir / "cur" / f"{DOVECOT}:2,RS")
    assert sorted(await listing(maildir)) == sorted(first)


# -- sizes: W=, the cache, and never reading a message twice ------------------------------


async def test_w_field_is_trusted(maildir: Path) -> None:
    put(maildir / "cur" / f"{DOVECOT},S=999,W=12345:2,S", MSG_B)
    assert await listing(maildir) == [(DOVECOT, 12345)]


async def test_sizes_are_cached_and_files_not_read_again(maildir: Path) -> None:
    with_s = maildir / "cur" / f"{COURIER},S={len(MSG_C)}:2,"
    put(with_s, MSG_C)
    without_s = put(maildir / "new" / POSTFIX, MSG_A)
    first = await listing(maildir)
    assert first == [(POSTFIX, wire_size(MSG_A)), (COURIER, wire_size(MSG_C))]
    cache = maildir / maildir_cache.CACHE_NAME
    assert cache.read_bytes().startswith(maildir_cache.MAGIC)
    cache_id = (cache.stat().st_ino, cache.stat().st_mtime_ns)
    rewrite_keeping_mtime(with_s, b"other length\n")
    rewrite_keeping_mtime(without_s, same_length_other_size(MSG_A))
    assert await listing(maildir) == first  # the listing cache
    forget_listing(maildir)
    assert await listing(maildir) == first  # the size cache
    assert (cache.stat().st_ino, cache.stat().st_mtime_ns) == cache_id  # unchanged: not rewritten


async def test_a_name_whose_s_field_disagrees_with_the_cache_is_measured_again(
    maildir: Path,
) -> None:
    path = put(maildir / "new" / f"{POSTFIX},S={len(MSG_A)}", MSG_A)
    await listing(maildir)
    path.unlink()
    put(maildir / "new" / f"{POSTFIX},S={2 * len(MSG_A)}", MSG_A + MSG_A)
    assert await listing(maildir) == [(POSTFIX, wire_size(MSG_A + MSG_A))]


async def test_sizes_are_cached_by_base_without_a_stat_per_message(maildir: Path) -> None:
    """Maildir files are never rewritten, only renamed, and a base is never reused
    (cr.yp.to/proto/maildir.html): the size cache trusts the base alone. A file without
    ``,S=`` rewritten to another length keeps its cached size - it was not even stat'ed -
    also after a rename (new/ -> cur/, flags), which forces the maildir to be listed again."""
    path = put(maildir / "new" / POSTFIX, MSG_A)
    first = await listing(maildir)
    rewrite_keeping_mtime(path, MSG_A + b"longer\n")
    os.rename(path, maildir / "cur" / f"{POSTFIX}:2,S")
    assert await listing(maildir) == first == [(POSTFIX, wire_size(MSG_A))]


def _corruptions(good: bytes) -> dict[str, bytes]:
    flipped = bytearray(good)
    flipped[-3] ^= 0x40
    return {
        "random": os.urandom(len(good)),
        "truncated": good[: len(good) // 2],
        "header only": good[: len(maildir_cache.MAGIC) + 10],
        "empty": b"",
        "wrong magic": b"POPBOX-SIZES\n" + good[len(maildir_cache.MAGIC) :],
        "bad checksum": bytes(flipped),
        "other version": maildir_cache.MAGIC
        + (maildir_cache.VERSION + 1).to_bytes(2, "little")
        + good[len(maildir_cache.MAGIC) + 2 :],
        "text": b"popbox-sizes\n1 2 3\n" * 10,
    }


@pytest.mark.parametrize("kind", sorted(_corruptions(b"x" * 64)))
async def test_corrupt_cache_is_ignored_and_rebuilt(maildir: Path, kind: str) -> None:
    path = put(maildir / "new" / POSTFIX, MSG_A)
    put(maildir / "new" / DOVECOT, MSG_B)
    correct = await listing(maildir)
    cache = maildir / maildir_cache.CACHE_NAME
    cache.write_bytes(_corruptions(cache.read_bytes())[kind])
    forget_listing(maildir)
    assert await listing(maildir) == correct  # measured again, no crash
    assert maildir_cache.decode(cache.read_bytes()) is not None  # rebuilt
    rewrite_keeping_mtime(path, same_length_other_size(MSG_A))
    forget_listing(maildir)
    assert await listing(maildir) == correct  # and used again


async def test_a_lying_cache_with_a_valid_checksum_is_only_a_hint(maildir: Path) -> None:
    put(maildir / "new" / f"{POSTFIX},S={len(MSG_A)}", MSG_A)
    put(maildir / "new" / f"{DOVECOT},S={len(MSG_B)},W=99", MSG_B)
    cache = maildir / maildir_cache.CACHE_NAME
    cache.write_bytes(
        maildir_cache.encode(
            {"other": (5, 7), POSTFIX: (len(MSG_A) + 1, 3), DOVECOT: (len(MSG_B), 4)}
        )
    )
    assert await listing(maildir) == [(POSTFIX, wire_size(MSG_A)), (DOVECOT, 99)]
    assert maildir_cache.decode(cache.read_bytes()) == {
        POSTFIX: (len(MSG_A), wire_size(MSG_A))  # only what was measured; W= is not cached
    }


def v1_cache(sizes: dict[tuple[str, int], int]) -> bytes:
    """A size cache as popbox wrote it before version 2: keyed by base and physical size."""
    body = b"".join(
        struct.pack("<HQQ", len(os.fsencode(base)), physical, wire) + os.fsencode(base)
        for (base, physical), wire in sorted(sizes.items())
    )
    digest = hashlib.blake2b(body, digest_size=16).digest()
    header = struct.pack("<HIQ16s", 1, len(sizes), len(body), digest)
    return maildir_cache.MAGIC + header + body


async def test_a_version_1_size_cache_is_used_and_upgraded(maildir: Path) -> None:
    """After an upgrade no maildir is measured again: a cache of version 1 is read (sizes
    only it knows are listed) and saved again as the current version."""
    put(maildir / "new" / POSTFIX, MSG_A)
    cache = maildir / maildir_cache.CACHE_NAME
    cache.write_bytes(v1_cache({(POSTFIX, len(MSG_A)): 1234, ("gone", 5): 6}))
    assert await listing(maildir) == [(POSTFIX, 1234)]
    data = cache.read_bytes()
    version = data[len(maildir_cache.MAGIC) : len(maildir_cache.MAGIC) + 2]
    assert version == maildir_cache.VERSION.to_bytes(2, "little")
    assert maildir_cache.decode(data) == {POSTFIX: (len(MSG_A), 1234)}


async def test_unwritable_cache_does_not_break_open(maildir: Path) -> None:
    (maildir / maildir_cache.CACHE_NAME).mkdir()  # neither readable nor replaceable as a file
    put(maildir / "new" / POSTFIX, MSG_A)
    assert await listing(maildir) == [(POSTFIX, wire_size(MSG_A))]
    assert not [p for p in maildir.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.timeout(600)  # 200,000 file writes: minutes when the machine is busy
async def test_hundred_thousand_messages_second_open_reads_none(tmp_path: Path) -> None:
    root = tmp_path / "Big"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    body = b"Subject: hi\n\nx\n"
    count = 100_000
    paths = [
        str(
            root
            / ("cur" if i % 2 else "new")
            / f"{1700000000 + i // 1000}.M{i % 1000}P7Q{i}.mx,S={len(body)}"
        )
        for i in range(count)
    ]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for path in paths:
        fd = os.open(path, flags, 0o600)
        os.write(fd, body)
        os.close(fd)
    first = await listing(root)
    assert len(first) == count and {size for _, size in first} == {wire_size(body)}
    assert (
        first[0][0] == "1700000000.M0P7Q0.mx"
        and first[-1][0] == f"1700000099.M999P7Q{count - 1}.mx"
    )
    for path in paths:
        os.truncate(path, 0)  # a read now would give size 0
    assert await listing(root) == first  # from the listing cache
    forget_listing(root)
    assert await listing(root) == first  # listed again, sizes from the size cache


# -- the listing cache: a later login to an unchanged maildir reads no directory -----------

LISTING = maildir_listing.LISTING_NAME


def age(root: Path, seconds: int = 3600) -> None:
    """Put cur/'s and new/'s mtimes in the past, as for a maildir left alone for a while
    (a listing is only trusted when they are 2 s older than it)."""
    then = time.time_ns() - seconds * 1_000_000_000
    for sub in ("cur", "new"):
        os.utime(root / sub, ns=(then, then))


def stored(root: Path) -> tuple[maildir_listing.Watch, maildir_listing.Listing]:
    decoded = maildir_listing.decode((root / LISTING).read_bytes())
    assert decoded is not None
    return decoded


def file_id(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def store_listing(
    root: Path, state: maildir_listing.Watch, listing: maildir_listing.Listing
) -> None:
    (root / LISTING).write_bytes(maildir_listing.encode(state, listing))


def replaced(listing: maildir_listing.Listing, **fields: Any) -> maildir_listing.Listing:
    parts = {
        "subs": listing.subs,
        "names": listing.names,
        "sizes": listing.sizes,
        "uidls": listing.uidls,
        "inos": listing.inos,
    }
    return maildir_listing.Listing(**{**parts, **fields})


def without(listing: maildir_listing.Listing, index: int) -> maildir_listing.Listing:
    keep = [i for i in range(len(listing.names)) if i != index]
    return maildir_listing.Listing(
        bytes(listing.subs[i] for i in keep),
        [listing.names[i] for i in keep],
        [listing.sizes[i] for i in keep],
        [listing.uidls[i] for i in keep],
        {},
    )


def three_messages(root: Path) -> list[tuple[str, int]]:
    put(root / "new" / POSTFIX, MSG_A)
    put(root / "cur" / f"{DOVECOT}:2,S", MSG_B)
    put(root / "cur" / f"{COURIER},S={len(MSG_C)}:2,", MSG_C)
    return [(POSTFIX, wire_size(MSG_A)), (DOVECOT, wire_size(MSG_B)), (COURIER, wire_size(MSG_C))]


async def test_an_unchanged_maildir_is_served_from_the_listing_cache(maildir: Path) -> None:
    correct = three_messages(maildir)
    age(maildir)
    assert await listing(maildir) == correct
    state, stored_listing = stored(maildir)
    assert state.trusted and stored_listing.names == [
        POSTFIX,
        f"{DOVECOT}:2,S",
        f"{COURIER},S={len(MSG_C)}:2,",
    ]
    # Nothing a listing would derive again is looked at: the size cache is gone and a
    # file says otherwise, yet the stored listing is served, and neither cache is written.
    (maildir / maildir_cache.CACHE_NAME).unlink()
    rewrite_keeping_mtime(maildir / "new" / POSTFIX, same_length_other_size(MSG_A))
    listing_id = file_id(maildir / LISTING)
    assert await listing(maildir) == correct
    assert file_id(maildir / LISTING) == listing_id
    assert not (maildir / maildir_cache.CACHE_NAME).exists()
    # Served verbatim, without reading the directories: a stored listing that lacks a
    # message still on disk (with the state it was taken from) is believed.
    store_listing(maildir, state, without(stored_listing, 1))
    assert await listing(maildir) == [correct[0], correct[2]]


async def test_reading_and_committing_work_from_a_cached_listing(maildir: Path) -> None:
    put(maildir / "cur" / f"{DOVECOT}:2,S", MSG_B)
    copy = MSG_B + b"restored from a backup\n"
    put(maildir / "new" / DOVECOT, copy)  # sharing the base, other content, no ,S=
    put(maildir / "new" / POSTFIX, MSG_A)
    age(maildir)
    first = await listing(maildir)
    assert sorted(size for _, size in first) == sorted(map(wire_size, [MSG_A, MSG_B, copy]))
    listing_id = file_id(maildir / LISTING)
    drop = await opened(MaildirStore(), maildir)
    assert file_id(maildir / LISTING) == listing_id  # served from the cache
    assert [(m.uidl, m.size) for m in drop.messages] == first
    bodies = [await read_all(drop, i) for i in range(3)]
    assert sorted(bodies) == sorted([MSG_A, MSG_B, copy])
    # Renamed by another agent during the session: found again by base, and among the
    # copies by the inode number the listing kept.
    os.rename(maildir / "new" / DOVECOT, maildir / "cur" / f"{DOVECOT}:2,T")
    os.rename(maildir / "cur" / f"{DOVECOT}:2,S", maildir / "cur" / f"{DOVECOT}:2,RS")
    os.rename(maildir / "new" / POSTFIX, maildir / "cur" / f"{POSTFIX}:2,")
    assert [await read_all(drop, i) for i in range(3)] == bodies
    assert await drop.commit(set(), {0, 1, 2}) == CommitReport(deleted=0, missing=0, flagged=3)
    assert names(maildir, "cur") == sorted([f"{DOVECOT}:2,ST", f"{DOVECOT}:2,RS", f"{POSTFIX}:2,S"])
    assert sorted(await listing(maildir)) == sorted(first)


@pytest.mark.parametrize("change", ["add", "remove", "rename in cur", "move to cur"])
async def test_a_changed_directory_is_listed_again(maildir: Path, change: str) -> None:
    correct = three_messages(maildir)
    age(maildir)
    assert await listing(maildir) == correct
    if change == "add":
        put(maildir / "new" / "1700000003.M1P1.mx", b"new\n")
        correct.append(("1700000003.M1P1.mx", 5))
    elif change == "remove":
        (maildir / "cur" / f"{DOVECOT}:2,S").unlink()
        del correct[1]
    elif change == "rename in cur":
        os.rename(maildir / "cur" / f"{DOVECOT}:2,S", maildir / "cur" / f"{DOVECOT}:2,FS")
    else:
        os.rename(maildir / "new" / POSTFIX, maildir / "cur" / f"{POSTFIX}:2,")
    assert await listing(maildir) == correct
    stored_names = sorted(stored(maildir)[1].names)
    assert stored_names == sorted(names(maildir, "cur") + names(maildir, "new"))


async def test_a_rename_with_the_directory_mtime_put_back_is_noticed(maildir: Path) -> None:
    """The directory's ctime is compared too, and no process can set it (utime(2) and
    ``rsync -a`` restore mtimes)."""
    correct = three_messages(maildir)
    age(maildir)
    await listing(maildir)
    cur = maildir / "cur"
    before = cur.stat()
    os.rename(cur / f"{DOVECOT}:2,S", cur / f"{DOVECOT}:2,FS")
    os.utime(cur, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert cur.stat().st_mtime_ns == before.st_mtime_ns
    assert await listing(maildir) == correct
    assert f"{DOVECOT}:2,FS" in stored(maildir)[1].names


async def test_a_listing_taken_within_two_seconds_of_a_change_is_not_trusted(
    maildir: Path,
) -> None:
    """A change made just after the listing was taken, in the same timestamp tick as the
    directory's last change, leaves the directory's mtime as it was. Simulated: a stored
    listing that lacks a message, with the directories' current state, taken 1 ns less
    than 2 s after new/'s mtime, is not served: the directories are read again."""
    correct = three_messages(maildir)
    now = time.time_ns()
    os.utime(maildir / "new", ns=(now, now))  # changed just now
    assert await listing(maildir) == correct
    state, complete = stored(maildir)
    assert not state.trusted
    mtime = state.stats[6]  # new/: (inode, size, mtime, ctime) after cur/'s
    assert mtime == now
    margin = maildir_listing.TRUST_MARGIN_NS
    for listed_at, served in [(mtime + margin - 1, correct), (mtime + margin, None)]:
        taken = maildir_listing.Watch(state.mode, listed_at, state.stats)
        store_listing(maildir, taken, without(complete, 0))
        assert await listing(maildir) == (served or correct[1:])


async def test_the_same_names_reuse_the_stored_listing_after_one_readdir(
    maildir: Path,
) -> None:
    """A stored listing that cannot be served as it is - taken within 2 s of a change, or
    the directories' state changed since (chmod, utime) - is checked against one readdir
    per directory: with the same names, its sizes, UIDLs and order are reused (observable
    with sizes only it has) and it is stored again with the new state."""
    correct = three_messages(maildir)
    now = time.time_ns()
    os.utime(maildir / "new", ns=(now, now))
    assert await listing(maildir) == correct
    state, complete = stored(maildir)
    assert not state.trusted
    store_listing(maildir, state, replaced(complete, sizes=[1, 2, 3]))
    assert [size for _, size in await listing(maildir)] == [1, 2, 3]
    age(maildir)
    assert [size for _, size in await listing(maildir)] == [1, 2, 3]
    assert stored(maildir)[0].trusted
    os.rename(maildir / "cur" / f"{DOVECOT}:2,S", maildir / "cur" / f"{DOVECOT}:2,FS")
    assert await listing(maildir) == correct  # another name: derived again


def _listing_corruptions(good: bytes) -> dict[str, bytes]:
    flipped = bytearray(good)
    flipped[-3] ^= 0x40
    magic = maildir_listing.MAGIC
    return {
        "random": os.urandom(len(good)),
        "truncated": good[: len(good) // 2],
        "header only": good[: len(magic) + 20],
        "empty": b"",
        "wrong magic": b"POPBOX-LISTING\n" + good[len(magic) :],
        "bad checksum": bytes(flipped),
        "other version": magic
        + (maildir_listing.VERSION + 1).to_bytes(2, "little")
        + good[len(magic) + 2 :],
        "one byte more": good + b"\0",
    }


@pytest.mark.parametrize("kind", sorted(_listing_corruptions(b"x" * 64)))
async def test_corrupt_listing_cache_is_rejected_and_rebuilt(maildir: Path, kind: str) -> None:
    correct = three_messages(maildir)
    age(maildir)
    assert await listing(maildir) == correct
    path = maildir / LISTING
    path.write_bytes(_listing_corruptions(path.read_bytes())[kind])
    assert await listing(maildir) == correct
    assert stored(maildir)[0].trusted  # rebuilt
    listing_id = file_id(path)
    assert await listing(maildir) == correct
    assert file_id(path) == listing_id  # and used again


def _insane(listing: maildir_listing.Listing) -> dict[str, maildir_listing.Listing]:
    def changed(**fields: object) -> maildir_listing.Listing:
        return replaced(listing, **fields)

    uidls = listing.uidls
    return {
        "path in a name": changed(names=["../../../etc/passwd", *listing.names[1:]]),
        "dot name": changed(names=[".hidden", *listing.names[1:]]),
        "empty name": changed(names=["", *listing.names[1:]]),
        "uidl with a space": changed(uidls=["a b", *uidls[1:]]),
        "uidl too long": changed(uidls=["x" * 71, *uidls[1:]]),
        "empty uidl": changed(uidls=["", *uidls[1:]]),
        "empty last uidl": changed(uidls=[*uidls[:-1], ""]),
        "empty uidl between": changed(uidls=[uidls[0], "", *uidls[2:]]),
        "uidl twice": changed(uidls=[uidls[1], *uidls[1:]]),
        "negative size": changed(sizes=[-1, *listing.sizes[1:]]),
        "other subdir": changed(subs=b"t" + listing.subs[1:]),
        "inode of no message": changed(inos={len(uidls): 5}),
    }


_SAMPLE = maildir_listing.Listing(b"nn", ["a", "b"], [1, 2], [Uidl("a"), Uidl("b")], {})


@pytest.mark.parametrize("kind", sorted(_insane(_SAMPLE)))
async def test_a_listing_with_a_valid_checksum_but_insane_content_is_rejected(
    maildir: Path, kind: str
) -> None:
    """A listing is trusted with file names: whoever wrote one cannot make popbox open
    anything outside cur/ and new/, nor serve invalid or repeated UIDLs."""
    correct = three_messages(maildir)
    age(maildir)
    assert await listing(maildir) == correct
    state, good = stored(maildir)
    store_listing(maildir, state, _insane(good)[kind])
    assert maildir_listing.decode((maildir / LISTING).read_bytes()) is None
    assert await listing(maildir) == correct


async def test_the_listing_follows_the_uidl_import_setting_and_file(maildir: Path) -> None:
    put(maildir / "cur" / f"{POSTFIX}:2,S", MSG_A)
    uidlist = put(maildir / "dovecot-uidlist", f"1 1275660208 8\n7 {POSTFIX}:2,\n".encode())
    age(maildir)
    dovecot = MaildirStore(uidl_import="dovecot")
    size = wire_size(MSG_A)
    for _ in range(2):
        assert await listing(maildir, dovecot) == [("000000074c0907b0", size)]
        assert await listing(maildir) == [(POSTFIX, size)]
    assert await listing(maildir, dovecot) == [("000000074c0907b0", size)]
    uidlist.write_bytes(f"1 1275660208 9\n8 {POSTFIX}:2,\n".encode())
    assert await listing(maildir, dovecot) == [("000000084c0907b0", size)]
    then = time.time_ns() - 3_600_000_000_000
    os.utime(uidlist, ns=(then, then))
    assert await listing(maildir, dovecot) == [("000000084c0907b0", size)]
    assert stored(maildir)[0].trusted
    listing_id = file_id(maildir / LISTING)
    assert await listing(maildir, dovecot) == [("000000084c0907b0", size)]
    assert file_id(maildir / LISTING) == listing_id  # served from the cache
    uidlist.unlink()
    assert await listing(maildir, dovecot) == [(POSTFIX, size)]


async def test_an_imported_uidl_file_changed_within_two_seconds_is_read_again(
    maildir: Path,
) -> None:
    """The 2 s rule holds for the imported-UIDL file too, also when the directories hold
    the same names (a readdir does not check that file). Simulated as above: a stored
    listing with other UIDLs and the current state, taken 1 ns too early, is not used."""
    put(maildir / "cur" / f"{POSTFIX}:2,S", MSG_A)
    put(maildir / "dovecot-uidlist", f"1 1275660208 8\n7 {POSTFIX}:2,\n".encode())
    age(maildir)
    dovecot = MaildirStore(uidl_import="dovecot")
    correct = [("000000074c0907b0", wire_size(MSG_A))]
    assert await listing(maildir, dovecot) == correct
    state, complete = stored(maildir)
    mtime = state.stats[10]  # the imported-UIDL file: (inode, size, mtime, ctime)
    margin = maildir_listing.TRUST_MARGIN_NS
    for listed_at, served in [(mtime + margin - 1, correct), (mtime + margin, None)]:
        taken = maildir_listing.Watch(state.mode, listed_at, state.stats)
        store_listing(maildir, taken, replaced(complete, uidls=[Uidl("stale")]))
        assert await listing(maildir, dovecot) == (served or [("stale", wire_size(MSG_A))])


async def test_an_unwritable_listing_cache_does_not_break_open(maildir: Path) -> None:
    (maildir / LISTING).mkdir()  # neither readable nor replaceable as a file
    correct = three_messages(maildir)
    age(maildir)
    for _ in range(2):
        assert await listing(maildir) == correct
    assert not [p for p in maildir.iterdir() if p.name.endswith(".tmp")]


async def test_a_size_too_large_to_store_does_not_break_open(maildir: Path) -> None:
    put(maildir / "new" / f"{POSTFIX},W={2**64}", MSG_A)
    age(maildir)
    for _ in range(2):
        assert await listing(maildir) == [(POSTFIX, 2**64)]
    assert not (maildir / LISTING).exists()


async def test_orphaned_listing_temporary_files_are_removed(maildir: Path) -> None:
    orphan = put(maildir / f"{LISTING}.4242.deadbeef.tmp", b"half")
    put(maildir / "new" / POSTFIX, MSG_A)
    await listing(maildir)
    assert not orphan.exists()


# -- the lock ------------------------------------------------------------------------------

HOLDER = """
import asyncio, sys
from popbox.store.maildir import MaildirStore

async def main():
    drop = await MaildirStore().open(sys.argv[1])
    print("locked" if hasattr(drop, "messages") else drop, flush=True)
    sys.stdin.readline()

asyncio.run(main())
"""


async def test_lock_held_by_another_process_dies_with_it(maildir: Path) -> None:
    store = MaildirStore()
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(maildir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "locked"
        assert await store.open(str(maildir)) is Failure.IN_USE
        child.kill()  # SIGKILL: no cleanup code runs in the child
        child.wait()
        drop = await opened(store, maildir)
        await drop.release()
    finally:
        child.kill()
        child.wait()
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()
    assert (maildir / LOCK_NAME).exists()  # the file stays; only the lock mattered


async def test_two_sessions_in_one_process_exclude_each_other(maildir: Path) -> None:
    first, second = MaildirStore(), MaildirStore()
    drop = await opened(first, maildir)
    assert await second.open(str(maildir)) is Failure.IN_USE
    await drop.release()
    await (await opened(second, maildir)).release()


# -- creating maildirs, and paths that are not ----------------------------------------------


async def test_missing_maildir_is_created_private(tmp_path: Path) -> None:
    root = tmp_path / "new-user" / "Maildir"
    assert await listing(root) == []
    for path in (root, root / "cur", root / "new", root / "tmp"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    other = tmp_path / "other-user" / "Maildir"
    assert await MaildirStore().deliver(str(other), b"first\n") is None
    assert stat.S_IMODE(other.stat().st_mode) == 0o700
    assert await listing(other) == [(names(other, "new")[0].split(",")[0], 7)]


async def test_orphaned_cache_temporary_files_are_removed(maildir: Path) -> None:
    orphan = put(maildir / f"{maildir_cache.CACHE_NAME}.4242.deadbeef.tmp", b"half")
    put(maildir / "new" / POSTFIX, MSG_A)
    await listing(maildir)
    assert not orphan.exists()


async def test_missing_subdirectories_are_created(maildir: Path) -> None:
    (maildir / "cur").rmdir()
    put(maildir / "new" / POSTFIX, MSG_A)
    assert await listing(maildir) == [(POSTFIX, wire_size(MSG_A))]
    assert (maildir / "cur").is_dir()


async def test_a_file_in_place_of_the_maildir_is_permanent(tmp_path: Path) -> None:
    path = put(tmp_path / "Maildir", b"not a directory")
    assert await MaildirStore().open(str(path)) is Failure.PERMANENT
    assert await MaildirStore().deliver(str(path), b"x\n") is Failure.PERMANENT
    assert await MaildirStore().open(str(path / "below")) is Failure.PERMANENT


# -- delivery ----------------------------------------------------------------------------------


async def test_delivery_follows_the_maildir_protocol(maildir: Path) -> None:
    message = b"Subject: hi\n\n.line\n"
    assert await MaildirStore(hostname="mx/1:2,3").deliver(str(maildir), message) is None
    assert names(maildir, "tmp") == [] and names(maildir, "cur") == []
    [name] = names(maildir, "new")
    unique, _, fields = name.partition(",S=")
    seconds, rest = unique.split(".", 1)
    assert seconds.isdigit() and rest.startswith("M") and "P" in rest and "Q" in rest
    assert rest.endswith(".mx\\0571\\0722\\0543")
    assert fields == f"{len(message)},W={wire_size(message)}"
    assert (maildir / "new" / name).read_bytes() == message


async def test_nul_bytes_and_a_megabyte_line_come_back_intact(maildir: Path) -> None:
    store = MaildirStore()
    messages = [b"Subject: nul\n\n\0a\0\r\n\0", b"Subject: long\n\n" + b"y" * 1_048_576]
    for message in messages:
        assert await store.deliver(str(maildir), message) is None
    drop = await opened(store, maildir)
    assert [m.size for m in drop.messages] == [wire_size(m) for m in messages]
    chunks = await chunk_list(drop, 1)
    assert len(chunks) > 1 and b"".join(chunks) == messages[1]
    assert await read_all(drop, 0) == messages[0]
    await drop.release()


@pytest.mark.parametrize("size", [70_000, 3 * 256 * 1024, 3 * 256 * 1024 + 1])
async def test_large_files_read_whole_from_the_page_cache_or_the_disk(
    maildir: Path, size: int
) -> None:
    """Large files are read on the loop only from the page cache (RWF_NOWAIT); pages the
    kernel has dropped are read in a thread. Both give every byte, once, in order."""
    store = MaildirStore()
    line = b"0123456789" * 7 + b"\n"
    header = b"Subject: big\n\n"
    message = header + (line * (size // len(line) + 1))[: size - len(header)]
    assert len(message) == size
    assert await store.deliver(str(maildir), message) is None
    drop = await opened(store, maildir)
    assert await read_all(drop, 0) == message  # from the page cache
    [path] = (maildir / "new").iterdir()
    with path.open("rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # drop the cached pages
    chunks = await chunk_list(drop, 0)
    assert b"".join(chunks) == message
    assert all(len(chunk) <= 256 * 1024 for chunk in chunks)
    await drop.release()


# -- commit --------------------------------------------------------------------------------


async def test_commit_marks_retrieved_messages_seen(maildir: Path) -> None:
    put(maildir / "new" / "1700000000.M1P1.a", b"1\n")
    put(maildir / "cur" / "1700000001.M1P1.b:2,F", b"2\n")
    put(maildir / "cur" / "1700000002.M1P1.c:2,a", b"3\n")
    put(maildir / "cur" / "1700000003.M1P1.d,S=2:2,F,xyz", b"4\n")
    put(maildir / "cur" / "1700000004.M1P1.e:2,RS", b"5\n")
    put(maildir / "cur" / "1700000005.M1P1.f:1,opaque", b"6\n")
    put(maildir / "new" / "1700000006.M1P1.g", b"7\n")
    put(maildir / "new" / "1700000007.M1P1.h", b"8\n")
    before = await listing(maildir)
    drop = await opened(MaildirStore(), maildir)
    report = await drop.commit({6}, {0, 1, 2, 3, 4, 5, 6})
    assert report == CommitReport(deleted=1, missing=0, flagged=5)
    assert names(maildir, "new") == ["1700000007.M1P1.h"]
    assert names(maildir, "cur") == [
        "1700000000.M1P1.a:2,S",
        "1700000001.M1P1.b:2,FS",
        "1700000002.M1P1.c:2,Sa",
        "1700000003.M1P1.d,S=2:2,FS,xyz",
        "1700000004.M1P1.e:2,RS",
        "1700000005.M1P1.f:1,opaque",
    ]
    assert await listing(maildir) == before[:6] + before[7:]


async def test_mark_seen_can_be_turned_off(maildir: Path) -> None:
    put(maildir / "new" / POSTFIX, MSG_A)
    drop = await opened(MaildirStore(mark_seen=False), maildir)
    assert await drop.commit(set(), {0}) == CommitReport(deleted=0, missing=0, flagged=0)
    assert names(maildir, "new") == [POSTFIX]


async def test_commit_follows_renames_and_counts_vanished(maildir: Path) -> None:
    for i in range(4):
        put(maildir / "new" / f"170000000{i}.M1P1.m", b"%d\n" % i)
    drop = await opened(MaildirStore(), maildir)
    os.unlink(maildir / "new" / "1700000001.M1P1.m")  # another agent expunged it
    os.rename(maildir / "new" / "1700000002.M1P1.m", maildir / "cur" / "1700000002.M1P1.m:2,T")
    assert await read_all(drop, 1) == GONE
    report = await drop.commit({0, 1, 2}, {3})
    assert report == CommitReport(deleted=2, missing=1, flagged=1)
    assert names(maildir, "new") == [] and names(maildir, "cur") == ["1700000003.M1P1.m:2,S"]


async def test_commit_never_replaces_a_file_in_its_way(maildir: Path) -> None:
    """A file that another agent put where the seen message would go keeps its place and
    its content; the message stays where it was (not lost, not flagged), and the other
    messages of the same commit are done. RFC 1939 §6: the commit removes only what the
    session deleted."""
    for i in range(3):
        put(maildir / "new" / f"170000000{i}.M1P1.m", b"%d\n" % i)
    drop = await opened(MaildirStore(), maildir)
    put(maildir / "cur" / "1700000001.M1P1.m:2,S", b"someone else's\n")
    report = await drop.commit({2}, {0, 1, 2})
    assert report == CommitReport(deleted=1, missing=0, flagged=1)
    assert names(maildir, "new") == ["1700000001.M1P1.m"]
    assert names(maildir, "cur") == ["1700000000.M1P1.m:2,S", "1700000001.M1P1.m:2,S"]
    assert (maildir / "cur" / "1700000001.M1P1.m:2,S").read_bytes() == b"someone else's\n"
    assert (maildir / "new" / "1700000001.M1P1.m").read_bytes() == b"1\n"


@pytest.mark.parametrize("delete", [False, True])
async def test_a_commit_fsyncs_what_its_deletions_changed(
    maildir: Path, monkeypatch: pytest.MonkeyPatch, delete: bool
) -> None:
    """A deletion is made durable before QUIT is answered (the directory it changed is
    fsynced, once); renames that only flag messages seen are atomic and are not fsynced.
    The fsyncs are the real ones, counted on their way (which directory: by inode)."""
    for i in range(3):
        put(maildir / "new" / f"170000000{i}.M1P1.m", b"%d\n" % i)
    drop = await opened(MaildirStore(), maildir)
    synced: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    report = await drop.commit({0, 1} if delete else set(), {0, 1, 2})
    assert report == CommitReport(deleted=2 if delete else 0, missing=0,
                                  flagged=1 if delete else 3)
    assert synced == ([(maildir / "new").stat().st_ino] if delete else [])


async def test_release_during_nothing_and_commit_release_lock(maildir: Path) -> None:
    store = MaildirStore()
    drop = await opened(store, maildir)
    await drop.commit(set(), set())
    await drop.release()
    await (await opened(store, maildir)).release()


# -- UIDL migration -------------------------------------------------------------------------


async def test_dovecot_uidlist_import(maildir: Path) -> None:
    put(maildir / "cur" / f"{DOVECOT},S={len(MSG_B)},W={wire_size(MSG_B)}:2,S", MSG_B)
    put(maildir / "cur" / f"{POSTFIX}:2,S", MSG_A)
    put(maildir / "new" / COURIER, MSG_C)  # arrived after the migration: not listed
    put(
        maildir / "dovecot-uidlist",
        b"3 V1275660208 N26 G3085f01b7f11094c501100008c4a11c1\n"
        + f"25 :{DOVECOT},S={len(MSG_B)},W={wire_size(MSG_B)}:2,\n".encode()
        + f"24 W2481 Pfrom-the-old-server :{POSTFIX}\n".encode()
        + b"garbage line\n",
    )
    imported = await listing(maildir, MaildirStore(uidl_import="dovecot"))
    assert [u for u, _ in imported] == ["from-the-old-server", "000000194c0907b0", COURIER]
    assert [u for u, _ in await listing(maildir)] == [POSTFIX, DOVECOT, COURIER]


async def test_dovecot_uidlist_version_1(maildir: Path) -> None:
    put(maildir / "cur" / f"{POSTFIX}:2,S", MSG_A)
    put(maildir / "dovecot-uidlist", f"1 1275660208 8\n7 {POSTFIX}:2,\n".encode())
    assert await listing(maildir, MaildirStore(uidl_import="dovecot")) == [
        ("000000074c0907b0", wire_size(MSG_A))
    ]


async def test_courier_sizelist_import(maildir: Path) -> None:
    put(maildir / "cur" / f"{COURIER},S={len(MSG_C)}:2,S", MSG_C)
    put(maildir / "cur" / f"{POSTFIX}:2,", MSG_A)
    put(maildir / "new" / DOVECOT, MSG_B)
    put(
        maildir / "courierpop3dsizelist",
        f"/3 9 1700000000\n{COURIER},S={len(MSG_C)}:2, 60 7:1700000000:0\n"
        f"{POSTFIX}:2, 50 8:0\n".encode(),
    )
    imported = await listing(maildir, MaildirStore(uidl_import="courier"))
    assert [u for u, _ in imported] == ["UID8", DOVECOT, "UID7-1700000000"]


@pytest.mark.parametrize("kind", ["dovecot", "courier"])
async def test_unusable_migration_files_import_nothing(maildir: Path, kind: str) -> None:
    put(maildir / "new" / POSTFIX, MSG_A)
    put(maildir / "dovecot-uidlist", b"\xff\x00garbage\n1 :x\n")
    put(maildir / "courierpop3dsizelist", b"/9 1 1\nx 1 1:1\n")
    store = MaildirStore(uidl_import=kind)  # type: ignore[arg-type]
    assert await listing(maildir, store) == [(POSTFIX, wire_size(MSG_A))]


class _CountingExecutor(ThreadPoolExecutor):
    """The event loop's default executor, counting the work sent to its threads."""

    submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def tree_state(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and directory under `root` (but the lock): inode, mtime, ctime."""
    out = {}
    for path in [root, *root.rglob("*")]:
        if path.name != LOCK_NAME:
            st = path.lstat()
            out[str(path.relative_to(root))] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    return out


async def test_commit_of_messages_read_already_seen_touches_nothing(maildir: Path) -> None:
    """RFC 1939 §6: QUIT after RETR of messages already in cur/ with the S flag (a client
    that leaves mail on the server) has nothing to change: no file or directory changes
    (names, inodes, mtimes, ctimes) and no work goes to a thread. A message not yet seen
    among them is still renamed, in a thread."""
    for i in range(5):
        put(maildir / "cur" / f"170000000{i}.M1P1.m:2,S", b"%d\n" % i)
    put(maildir / "cur" / "1700000009.M1P1.m:2,RS", b"9\n")
    put(maildir / "new" / "1700000010.M1P1.n", b"new\n")
    await listing(maildir)  # the listing cache written: later opens write nothing
    executor = _CountingExecutor(max_workers=1)
    asyncio.get_running_loop().set_default_executor(executor)
    store = MaildirStore()

    before = tree_state(maildir)
    drop = await opened(store, maildir)
    read = [i for i, m in enumerate(drop.messages) if m.size == 3]  # the six seen ones
    assert len(read) == 6
    for i in read:
        await read_all(drop, i)
    submitted = executor.submitted
    assert await drop.commit(set(), set(read)) == CommitReport(deleted=0, missing=0, flagged=6)
    assert executor.submitted == submitted  # no trip to a thread: no rename, stat, fsync
    assert tree_state(maildir) == before

    drop = await opened(store, maildir)  # the same with the unseen message among them
    for i in range(len(drop.messages)):
        await read_all(drop, i)
    submitted = executor.submitted
    report = await drop.commit(set(), set(range(len(drop.messages))))
    assert report == CommitReport(deleted=0, missing=0, flagged=7)
    assert executor.submitted == submitted + 1
    assert names(maildir, "new") == []
    assert "1700000010.M1P1.n:2,S" in names(maildir, "cur")
    after = tree_state(maildir)
    assert after != before
    assert {k: v for k, v in after.items() if ".m:2," in k} == {
        k: v for k, v in before.items() if ".m:2," in k}  # the seen files left alone


async def test_a_seen_message_that_was_not_read_is_still_checked(maildir: Path) -> None:
    """Only a message opened in this session is known to be in place; one that was not
    is looked for at commit, and counted missing if it is gone."""
    put(maildir / "cur" / "1700000000.M1P1.m:2,S", b"0\n")
    drop = await opened(MaildirStore(), maildir)
    os.unlink(maildir / "cur" / "1700000000.M1P1.m:2,S")
    assert await drop.commit(set(), {0}) == CommitReport(deleted=0, missing=1, flagged=0)
