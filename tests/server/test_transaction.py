"""The TRANSACTION policy on its own, over the reference store: no socket, no session."""

from __future__ import annotations

from pathlib import Path

from popbox.proto import events as ev
from popbox.proto.types import MsgNo
from popbox.proto.wire import wire_size
from popbox.server import replies
from popbox.server.transaction import WHOLE_MAX, Body, Transaction, Whole
from popbox.store.base import Failure
from popbox.store.maildir import MaildirStore
from popbox.store.memory import MemoryStore

MESSAGES = [b"Subject: one\n\nfirst\n", b"Subject: two\n\n.dot\nsecond\nthird\n"]


async def transaction() -> tuple[MemoryStore, Transaction]:
    store = MemoryStore()
    for message in MESSAGES:
        store.add("box", message)
    maildrop = await store.open("box")
    assert not isinstance(maildrop, Failure)
    return store, Transaction(maildrop)


def stored(store: MemoryStore) -> list[bytes]:
    return [data for _, data in store.contents("box")]


async def body_bytes(txn: Transaction, body: Body) -> bytes:
    data = body.first
    while not body.reader.done:
        data += await body.reader.next()
    body.reader.close()
    txn.sent(body.index, retr=body.limit is None)
    return data


async def test_listings_and_numbers() -> None:
    """RFC 1939 §5: STAT, LIST and UIDL, with and without an argument; numbers that are
    not in the snapshot get -ERR."""
    _, txn = await transaction()
    sizes = [wire_size(m) for m in MESSAGES]
    assert await txn.handle(ev.Stat()) == ev.Ok(f"2 {sum(sizes)}")
    listing = await txn.handle(ev.List(None))
    assert isinstance(listing, replies.Listing)
    assert listing.lines == (f"1 {sizes[0]}", f"2 {sizes[1]}")
    assert await txn.handle(ev.List(MsgNo(2))) == ev.Ok(f"2 {sizes[1]}")
    uidls = await txn.handle(ev.Uidl(None))
    assert isinstance(uidls, replies.Listing) and len(uidls.lines) == 2
    assert await txn.handle(ev.List(MsgNo(3))) == replies.NO_SUCH_MESSAGE
    assert await txn.handle(ev.Retr(MsgNo(0))) == replies.NO_SUCH_MESSAGE


async def test_dele_marks_rset_unmarks_and_quit_commits() -> None:
    """RFC 1939 §§5-6: DELE hides a message for the session only, RSET brings it back,
    and only QUIT removes what is marked then."""
    store, txn = await transaction()
    assert await txn.handle(ev.Dele(MsgNo(1))) == ev.Ok("Message 1 deleted.")
    assert await txn.handle(ev.Dele(MsgNo(1))) == replies.ALREADY_DELETED
    assert await txn.handle(ev.Retr(MsgNo(1))) == replies.ALREADY_DELETED
    assert await txn.handle(ev.Stat()) == ev.Ok(f"1 {wire_size(MESSAGES[1])}")
    assert await txn.handle(ev.Rset()) == ev.Ok(
        f"Maildrop has 2 messages ({sum(map(wire_size, MESSAGES))} octets).")
    assert stored(store) == MESSAGES  # nothing has reached the store
    await txn.handle(ev.Dele(MsgNo(2)))
    assert await txn.handle(ev.Noop()) == ev.Ok()
    assert await txn.quit() == ev.Ok("Logging out, 1 messages deleted.")
    assert stored(store) == MESSAGES[:1]
    assert store.seen("box") == frozenset()


async def test_retr_and_top_bodies() -> None:
    """RFC 1939 §§5, 7: RETR gives the stored message and marks it seen at commit; TOP
    gives the headers, the blank line and n body lines, and marks nothing."""
    _, txn = await transaction()
    top = await txn.handle(ev.Top(MsgNo(2), 1))
    assert isinstance(top, Body) and top.ok == ev.Ok("Top of message follows")
    assert top.limit is not None
    assert top.limit.feed(await body_bytes(txn, top)) == b"Subject: two\n\n.dot\n"
    assert txn.retrieved == set()
    retr = await txn.handle(ev.Retr(MsgNo(2)))
    assert isinstance(retr, Body) and retr.ok == ev.Ok(f"{wire_size(MESSAGES[1])} octets")
    assert await body_bytes(txn, retr) == MESSAGES[1] and txn.retrieved == {1}


async def test_a_vanished_message_is_one_error() -> None:
    """A message another agent removed after the snapshot: -ERR [SYS/PERM] for it, the
    session goes on."""
    store, txn = await transaction()
    store.remove("box", txn.uidl(0))
    assert await txn.handle(ev.Retr(MsgNo(1))) == replies.MESSAGE_GONE
    assert isinstance(await txn.handle(ev.Retr(MsgNo(2))), Body)


async def test_a_small_maildir_message_is_read_whole(tmp_path: Path) -> None:
    """RETR of a small message on a store that reads whole (the Maildir store) is answered
    at once: the stored bytes and the +OK text with the snapshot's size; a deleted or
    missing number gets its -ERR; a larger message, and a store that streams only (the
    reference store), are left to `handle`."""
    store = MaildirStore()
    big = b"Subject: big\n\n" + b"x" * 70 + b"\n" * 1000
    for message in (*MESSAGES, big):
        assert await store.deliver(str(tmp_path), message) is None
    maildrop = await store.open(str(tmp_path))
    assert not isinstance(maildrop, Failure)
    txn = Transaction(maildrop)
    sizes = maildrop.messages.sizes
    whole = txn.retr_whole(MsgNo(1))
    assert isinstance(whole, Whole)
    assert whole.text == f"{sizes[0]} octets" and wire_size(whole.data) == sizes[0]
    assert whole.data in MESSAGES
    assert txn.retr_whole(MsgNo(4)) == replies.NO_SUCH_MESSAGE
    await txn.handle(ev.Dele(MsgNo(2)))
    assert txn.retr_whole(MsgNo(2)) == replies.ALREADY_DELETED
    third = txn.retr_whole(MsgNo(3))  # 1 KB of line ends: read whole as well
    assert isinstance(third, Whole) and third.data == big
    await maildrop.release()
    _, reference = await transaction()
    assert reference.retr_whole(MsgNo(1)) is None
    assert isinstance(await reference.handle(ev.Retr(MsgNo(1))), Body)


async def test_a_message_above_the_whole_read_size_is_streamed(tmp_path: Path) -> None:
    store = MaildirStore()
    message = b"Subject: long\n\n" + b"line\n" * (WHOLE_MAX // 5)
    assert await store.deliver(str(tmp_path), message) is None
    maildrop = await store.open(str(tmp_path))
    assert not isinstance(maildrop, Failure)
    txn = Transaction(maildrop)
    assert maildrop.messages.sizes[0] > WHOLE_MAX
    assert txn.retr_whole(MsgNo(1)) is None
    body = await txn.handle(ev.Retr(MsgNo(1)))
    assert isinstance(body, Body)
    assert await body_bytes(txn, body) == message
    await maildrop.release()
