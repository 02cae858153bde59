"""MboxStore on real spools: written by procmail (Debian's delivery agent, locking as
Postfix local does), by qpopper (X-UIDL headers), by nobody careful (hostile spools).

RFC 4155 §2 (the format), RFC 1939 §7 (UIDLs stable across sessions, 1-70 printable
characters) and §4 (the exclusive-access lock; here the MTA may still deliver)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from mbox_support import LINE, Procmail, chunks, contents, open_drop, read_all

from popbox.proto.types import Index, is_valid_uidl
from popbox.proto.wire import wire_size
from popbox.store.base import GONE, CommitReport, Failure, Gone
from popbox.store.mbox import MboxStore
from popbox.store.mbox_format import HOLD_LIMIT, quote

MESSAGES = [
    b"From: a@example.org\nSubject: one\n\nFrom the start of a line\n>From quoted\nend\n",
    b"From: b@example.org\nSubject: two\n\n.dot\n",
    b"From: c@example.org\nSubject: three\n\n\n\nblank lines before\n",
]


def mboxo_read(message: bytes) -> bytes:
    """What a mboxo spool gives back: ">From " lines lose their ">" (RFC 4155 §2)."""
    return message.replace(b"\n>From ", b"\nFrom ")


async def test_reads_what_procmail_delivered(spool: Path, procmail: Procmail) -> None:
    """procmail's spool (From_ lines, mboxo quoting, an empty line after each message)
    lists with CRLF sizes and reads back each message."""
    for m in MESSAGES:
        procmail(spool, m)
    assert spool.read_bytes().count(b"\n>From the start") == 1
    store = MboxStore(fmt="mboxo")
    drop = await open_drop(store, str(spool))
    expected = [mboxo_read(m) for m in MESSAGES]
    assert [m.size for m in drop.messages] == [wire_size(m) for m in expected]
    assert await read_all(drop) == expected
    assert all(is_valid_uidl(u) for u in drop.messages.uidls)
    await drop.release()


async def test_procmail_delivers_during_a_session_and_quit_keeps_it(
    spool: Path, procmail: Procmail
) -> None:
    """The spool locks are held only while indexing and committing: procmail delivers
    while a session is open (not blocked), the session's snapshot does not change, and
    the QUIT rewrite removes the session's deleted message and keeps the new one."""
    store = MboxStore(fmt="mboxo")
    for m in MESSAGES[:2]:
        procmail(spool, m)
    drop = await open_drop(store, str(spool))
    assert await store.open(str(spool)) is Failure.IN_USE  # one session per maildrop
    procmail(spool, MESSAGES[2])  # returns: no lock of ours is in its way
    assert len(drop.messages) == 2
    first = list(drop.messages)
    assert await drop.commit({0}, {1}) == CommitReport(deleted=1, missing=0, flagged=1)
    after = await open_drop(store, str(spool))
    assert after.messages[0] == first[1]
    assert await read_all(after) == [mboxo_read(m) for m in MESSAGES[1:]]
    await after.release()


def _hold(kind: str, spool: Path) -> subprocess.Popen[str]:
    """Another process holding the spool's fcntl (POSIX, as procmail and mutt take it) or
    flock lock until its stdin closes."""
    code = (
        "import fcntl, sys\n"
        f"f = open({str(spool)!r}, 'r+b')\n"
        f"fcntl.{'lockf' if kind == 'fcntl' else 'flock'}(f, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "held\n"
    return child


@pytest.mark.parametrize(("kind", "locks"), [("fcntl", ["dotlock", "fcntl"]),
                                             ("flock", ["flock"])])
async def test_waits_for_another_programs_lock(spool: Path, kind: str, locks: list[str]) -> None:
    """While another process holds the spool's lock, open waits, then answers IN_USE
    after the timeout and delivery is deferred; both work once it lets go."""
    spool.write_bytes(LINE + quote(MESSAGES[0], "mboxrd") + b"\n")
    store = MboxStore(locks=locks, lock_timeout=0.3)  # type: ignore[arg-type]
    child = _hold(kind, spool)
    try:
        assert await store.open(str(spool)) is Failure.IN_USE
        assert await store.deliver(str(spool), MESSAGES[1]) is Failure.TEMPORARY
    finally:
        child.communicate("")
    assert await contents(store, str(spool)) == MESSAGES[:1]
    assert await store.deliver(str(spool), MESSAGES[1]) is None
    assert len(await contents(store, str(spool))) == 2


async def test_dotlock_rules(spool: Path) -> None:
    """A dotlock made by procmail's `lockfile` is respected; one whose content names a
    dead process, or that has not changed (nor the spool) for the stale time, is broken
    (liblockfile's and Dovecot's rules); the lock file is gone after the session."""
    spool.write_bytes(LINE + quote(MESSAGES[0], "mboxrd") + b"\n")
    lock = Path(str(spool) + ".lock")
    store = MboxStore(lock_timeout=0.3, dotlock_stale=60)
    subprocess.run(["lockfile", "-r0", str(lock)], check=True, timeout=10)
    assert await store.open(str(spool)) is Failure.IN_USE
    old = os.stat(lock).st_mtime - 120
    os.utime(lock, (old, old))
    os.utime(spool, (old, old))
    assert await contents(store, str(spool)) == MESSAGES[:1]  # stale: broken
    assert not lock.exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    lock.write_text(dead + "\n")
    assert await contents(store, str(spool)) == MESSAGES[:1]
    assert not lock.exists()
    lock.write_text(f"{os.getppid()}\n")  # alive, fresh: respected
    assert await store.open(str(spool)) is Failure.IN_USE
    lock.unlink()


REVERSE_ORDER_WRITER = """
import fcntl, os, sys, time
spool = sys.argv[1]
f = open(spool, "ab")
fcntl.lockf(f, fcntl.LOCK_EX)  # fcntl first, as Debian's policy says, then the dotlock
print("held", flush=True)
sys.stdin.readline()
deadline = time.monotonic() + 20
while True:
    try:
        os.close(os.open(spool + ".lock", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        break
    except FileExistsError:
        if time.monotonic() > deadline:
            sys.exit(1)
        time.sleep(0.01)
f.write(sys.argv[2].encode() + b"Subject: reverse\\n\\nbody\\n\\n")
f.flush()
os.unlink(spool + ".lock")
"""


async def test_no_deadlock_with_a_writer_locking_in_the_other_order(spool: Path) -> None:
    """A writer that holds the fcntl lock and then waits for the dotlock (the order
    Debian's policy §11.6 prescribes) gets both while popbox waits: popbox gives its
    dotlock up whenever the fcntl lock is busy. Then popbox opens and sees the mail."""
    spool.write_bytes(LINE + MESSAGES[1] + b"\n")
    child = subprocess.Popen([sys.executable, "-c", REVERSE_ORDER_WRITER, str(spool),
                              LINE.decode()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        store = MboxStore(lock_timeout=30)
        opening = asyncio.ensure_future(store.open(str(spool)))
        await asyncio.sleep(0)  # popbox is at its locks first
        child.stdin.write("go\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
        drop = await opening
        assert child.wait(30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert not isinstance(drop, Failure), drop
    assert await read_all(drop) == [MESSAGES[1], b"Subject: reverse\n\nbody\n"]
    await drop.release()


QPOPPER = [
    b"From: q@example.org\nX-UIDL: 3f1a2b4c5d6e7f8091a2b3c4d5e6f708\nSubject: q1\n\nbody\n",
    b"From: q@example.org\nX-UIDL: 3f1a2b4c5d6e7f8091a2b3c4d5e6f708\nSubject: dup\n\nbody\n",
    b"From: q@example.org\nX-UIDL: has space\nSubject: bad\n\nbody\n",
    b"From: q@example.org\nSubject: none\n\nX-UIDL: in-the-body\n",
]


async def test_reuses_qpopper_x_uidl(spool: Path) -> None:
    """qpopper's X-UIDL header is the UIDL when it is valid and not taken: the client
    that fetched from qpopper sees the same UIDLs. A duplicate, an invalid one and one in
    the body are not used; those messages get UIDLs of their own, all distinct."""
    spool.write_bytes(b"".join(LINE + m + b"\n" for m in QPOPPER))
    drop = await open_drop(MboxStore(), str(spool))
    uidls = list(drop.messages.uidls)
    assert uidls[0] == "3f1a2b4c5d6e7f8091a2b3c4d5e6f708"
    assert len(set(uidls)) == 4
    assert "in-the-body" not in uidls and "has" not in uidls
    assert all(is_valid_uidl(u) for u in uidls)
    await drop.release()


async def test_uidls_survive_deletions_and_a_lost_index(spool: Path) -> None:
    """Deleting earlier messages never changes later UIDLs; nor does losing the index
    file; two identical messages keep distinct UIDLs, the second keeps its own when the
    first is deleted (the index remembers it)."""
    store = MboxStore()
    same = b"Subject: same\n\nidentical\n"
    for m in [MESSAGES[0], same, same, MESSAGES[1], MESSAGES[2]]:
        spool.open("ab").write(LINE + m + b"\n")
    drop = await open_drop(store, str(spool))
    uidls = list(drop.messages.uidls)
    assert len(set(uidls)) == 5
    assert await drop.commit({0, 1}, set()) == CommitReport(deleted=2, missing=0, flagged=0)
    drop = await open_drop(store, str(spool))
    assert list(drop.messages.uidls) == uidls[2:]
    await drop.release()
    for index in (spool.parent / ".popbox").glob("*.uidlist"):
        index.unlink()
    drop = await open_drop(store, str(spool))
    assert list(drop.messages.uidls)[1:] == uidls[3:]  # derived from content, not place
    await drop.release()


async def test_a_later_login_reads_only_the_new_tail(spool: Path) -> None:
    """Sizes come from the index, not from rereading the spool: a change deep in an
    indexed message's body (past the octets its key covers) is not seen at the next
    login, while mail appended since is indexed. Without the index the spool is read
    again and the change shows."""
    store = MboxStore()
    big = b"Subject: big\n\n" + b"x" * 5000 + b"\nlast\n"
    await store.deliver(str(spool), big)
    drop = await open_drop(store, str(spool))
    size = drop.messages.sizes[0]
    await drop.release()
    data = spool.read_bytes()
    at = data.index(b"\nlast\n")
    spool.write_bytes(data[:at] + b"y" + data[at + 1 :])  # one LF fewer, same length
    await store.deliver(str(spool), MESSAGES[1])
    drop = await open_drop(store, str(spool))
    assert list(drop.messages.sizes) == [size, wire_size(MESSAGES[1])]
    await drop.release()
    for index in (spool.parent / ".popbox").glob("*.uidlist"):
        index.write_bytes(b"garbage\n")  # a broken index is ignored
    drop = await open_drop(store, str(spool))
    assert list(drop.messages.sizes) == [size - 1, wire_size(MESSAGES[1])]
    await drop.release()


async def test_rewrite_keeps_inode_mode_and_appended_octets(spool: Path) -> None:
    """QUIT rewrites in place: same inode and mode (the MTA may hold the file open)."""
    store = MboxStore()
    for m in MESSAGES:
        await store.deliver(str(spool), m)
    os.chmod(spool, 0o660)
    before = os.stat(spool)
    drop = await open_drop(store, str(spool))
    await drop.commit({1}, set())
    after = os.stat(spool)
    assert (after.st_ino, after.st_mode, after.st_uid, after.st_gid) == (
        before.st_ino, before.st_mode, before.st_uid, before.st_gid)
    assert await contents(store, str(spool)) == [MESSAGES[0], MESSAGES[2]]
    assert not list((spool.parent / ".popbox").glob("*.rewrite*"))


async def test_mboxrd_delivery_round_trip(spool: Path) -> None:
    """Delivered in mboxrd, every ">*From " line comes back exactly."""
    store = MboxStore()
    tricky = b"Subject: t\n\nFrom a\n>From b\n>>From c\nFrom\n"
    await store.deliver(str(spool), tricky)
    raw = spool.read_bytes()
    assert b"\n>From a\n>>From b\n>>>From c\nFrom\n" in raw
    assert await contents(store, str(spool)) == [tricky]


# -- hostile spools -----------------------------------------------------------------


async def test_no_from_line_at_the_start(spool: Path) -> None:
    """Octets before the first From line are served as a message (nothing hidden), and
    stay byte for byte when another message is deleted; a blank prefix is no message."""
    orphan = b"Subject: orphan\n\nwritten without a From line\n\n"
    spool.write_bytes(orphan + LINE + MESSAGES[1] + b"\n")
    store = MboxStore()
    drop = await open_drop(store, str(spool))
    assert await read_all(drop) == [orphan[:-1], MESSAGES[1]]
    await drop.commit({1}, set())
    assert spool.read_bytes() == orphan
    spool.write_bytes(b"\n\n" + LINE + MESSAGES[1] + b"\n")
    assert await contents(store, str(spool)) == [MESSAGES[1]]


async def test_truncated_last_message_and_a_careless_from(spool: Path) -> None:
    """A spool cut off mid-line serves what is there; a delivery after it ends that
    line first, so both messages stay whole. A body line "From here" that no From line
    shape follows stays in its message."""
    careless = b"Subject: c\n\nFrom here on, no quoting\n"
    spool.write_bytes(LINE + careless + b"\n" + LINE + b"Subject: cut\n\npartial li")
    store = MboxStore()
    assert await contents(store, str(spool)) == [careless, b"Subject: cut\n\npartial li"]
    await store.deliver(str(spool), MESSAGES[1])
    assert await contents(store, str(spool)) == [careless, b"Subject: cut\n\npartial li\n",
                                                 MESSAGES[1]]


async def test_huge_line_nuls_and_crlf_stream_in_bounded_chunks(spool: Path) -> None:
    """A 6 MB line, NUL octets and CRLF line ends come back exactly, in chunks no larger
    than the chunk size plus the unquoter's bounded hold-back."""
    huge = b"Subject: huge\r\n\r\n" + b">" * 3 + b"A\0" * 3_000_000 + b"\r\nFrom x\r\n"
    store = MboxStore(chunk_size=65536)
    await store.deliver(str(spool), huge)
    drop = await open_drop(store, str(spool))
    assert list(drop.messages.sizes) == [wire_size(huge)]
    pieces = await chunks(drop, 0)
    assert not isinstance(pieces, Gone)
    assert max(map(len, pieces)) <= 65536 + HOLD_LIMIT
    assert b"".join(pieces) == huge
    await drop.release()


async def test_a_spool_written_with_crlf(spool: Path) -> None:
    """A spool some program wrote with CRLF line ends: its From lines still separate
    messages, and the CRLF empty line before each is not part of the message."""
    spool.write_bytes(LINE.replace(b"\n", b"\r\n") + b"Subject: a\r\n\r\none\r\n\r\n"
                      + LINE.replace(b"\n", b"\r\n") + b"Subject: b\r\n\r\ntwo\r\n\r\n")
    drop = await open_drop(MboxStore(), str(spool))
    assert await read_all(drop) == [b"Subject: a\r\n\r\none\r\n", b"Subject: b\r\n\r\ntwo\r\n"]
    assert list(drop.messages.sizes) == [len(b"Subject: a\r\n\r\none\r\n"),
                                         len(b"Subject: b\r\n\r\ntwo\r\n")]
    await drop.release()


async def test_unusable_spools(spool: Path, tmp_path: Path) -> None:
    """A directory or a symlink where the spool should be is a permanent failure; a
    missing spool is an empty maildrop."""
    store = MboxStore()
    drop = await open_drop(store, str(spool))
    assert len(drop.messages) == 0
    await drop.release()
    spool.mkdir()
    assert await store.open(str(spool)) is Failure.PERMANENT
    spool.rmdir()
    (tmp_path / "elsewhere").write_bytes(LINE + MESSAGES[0])
    spool.symlink_to(tmp_path / "elsewhere")
    assert await store.open(str(spool)) is Failure.PERMANENT
    assert await store.deliver(str(spool), MESSAGES[0]) is Failure.PERMANENT


async def test_rewritten_by_a_mail_reader_during_the_session(spool: Path) -> None:
    """If another program rewrites the spool during a session, a message is served only
    if its key is still at its offset (never another message's octets), and the commit
    finds the messages again by UIDL."""
    store = MboxStore()
    for m in MESSAGES:
        await store.deliver(str(spool), m)
    drop = await open_drop(store, str(spool))
    data = spool.read_bytes()
    second = data.index(b"\nFrom ") + 1
    spool.write_bytes(data[second:])  # message 1 removed behind our back
    assert (await read_all(drop))[0] is GONE
    assert await drop.commit({1}, {0}) == CommitReport(deleted=1, missing=1, flagged=0)
    assert await contents(store, str(spool)) == [MESSAGES[2]]


async def test_configured_index_folder(spool: Path, tmp_path: Path) -> None:
    """With `index_dir`, the index and lock files go there, named so that spools of
    different folders do not collide."""
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    store = MboxStore(index_dir=str(index_dir))
    other = tmp_path / "other" / "alice"
    other.parent.mkdir()
    await store.deliver(str(spool), MESSAGES[0])
    await store.deliver(str(other), MESSAGES[1])
    assert await contents(store, str(spool)) == [MESSAGES[0]]
    assert await contents(store, str(other)) == [MESSAGES[1]]
    assert len(list(index_dir.glob("alice-*.uidlist"))) == 2
    assert not (spool.parent / ".popbox").exists()


async def test_a_100_mb_message_streams_in_bounded_memory(spool: Path) -> None:
    """Indexing and reading a 100 MB message never holds more than a few chunks: the
    peak of Python allocations stays far below the message's size."""
    line = b"0123456789" * 10 + b"\n"
    block = line * 10_000
    blocks = 100 * 1024 * 1024 // len(block)
    head = b"Subject: big\n\n"
    with spool.open("wb") as f:
        f.write(LINE + head)
        for _ in range(blocks):
            f.write(block)
        f.write(b"\n")  # the empty line after the message
    length = len(head) + blocks * len(block)
    tracemalloc.start()
    try:
        drop = await open_drop(MboxStore(), str(spool))
        reader = await drop.open_message(Index(0))
        assert not isinstance(reader, Gone)
        total = len(await reader.next())
        while not reader.done:
            total += len(await reader.next())
        reader.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    await drop.release()
    assert total == length
    assert list(drop.messages.sizes) == [length + 2 + blocks * 10_000]  # CRLF octets
    assert peak < 16 * 1024 * 1024, peak


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a file owned by another user")
async def test_a_journal_of_another_user_is_never_replayed(spool: Path) -> None:
    """A rewrite journal planted in the shared index folder by another user would let
    them write into this spool: it is set aside, and the spool is served untouched."""
    original = LINE + MESSAGES[1] + b"\n"
    spool.write_bytes(original)
    store = MboxStore()
    assert await contents(store, str(spool)) == [MESSAGES[1]]  # makes the index folder
    evil = LINE + b"Subject: planted\n\nx\n\n"
    journal = spool.parent / ".popbox" / "alice.rewrite"
    journal.write_bytes(b"popbox-mbox-rewrite 1 %d 0 %d %d 0-x\n" % (
        spool.stat().st_ino, len(original), len(evil)) + evil)
    os.chown(journal, 65534, 65534)
    assert await contents(store, str(spool)) == [MESSAGES[1]]
    assert spool.read_bytes() == original
    assert not journal.exists()
    assert len(list(journal.parent.glob("alice.rewrite.orphaned-*"))) == 1
