"""Properties of the mbox reader and writer over generated input rich in the octets that
matter (">", "From ", line ends): the streaming unquoter equals the whole-message one
however the stream is cut, and any list of messages delivered into a spool reads back
as delivered (RFC 4155 §2; mboxrd is reversible; a message gains only a final LF if it
had none) with sizes equal to the octets read (RFC 1939 §11)."""

from __future__ import annotations

import asyncio
import re
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from mbox_support import contents, open_drop

from popbox.proto.wire import wire_size
from popbox.store.mbox import MboxStore
from popbox.store.mbox_format import Unquoter, quote

PIECES = [b">", b"From ", b"From", b"\n", b"\r\n", b"x", b" ", b"\0",
          b"From a Mon Jan  1 00:00:00 2024\n"]
data = st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join)
FORMATS = st.sampled_from(["mboxrd", "mboxo"])
WHOLE = {"mboxrd": re.compile(rb"(?m)^>(>*From )"), "mboxo": re.compile(rb"(?m)^>(From )")}


@settings(max_examples=300, deadline=None)
@given(data, FORMATS, st.lists(st.integers(min_value=1, max_value=9), min_size=1))
def test_streaming_unquote_equals_whole(stored: bytes, fmt: str, cuts: list[int]) -> None:
    u = Unquoter(fmt)  # type: ignore[arg-type]
    out, pos, i = [], 0, 0
    while pos < len(stored):
        step = cuts[i % len(cuts)]
        out.append(u.feed(stored[pos : pos + step]))
        pos += step
        i += 1
    out.append(u.finish())
    assert b"".join(out) == WHOLE[fmt].sub(rb"\1", stored)


@settings(max_examples=300, deadline=None)
@given(data)
def test_mboxrd_quoting_is_reversible(message: bytes) -> None:
    u = Unquoter("mboxrd")
    assert u.feed(quote(message, "mboxrd")) + u.finish() == message


def _lf_terminated(message: bytes) -> bytes:
    return message if message.endswith(b"\n") else message + b"\n"


@settings(max_examples=60, deadline=None)
@given(st.lists(data.filter(lambda m: not m.endswith(b"\r")), max_size=5))
def test_delivered_messages_read_back(messages: list[bytes]) -> None:
    async def run(spool: str) -> None:
        store = MboxStore()
        for message in messages:
            assert await store.deliver(spool, message) is None
        got = await contents(store, spool)
        assert got == [_lf_terminated(m) for m in messages]
        drop = await open_drop(store, spool)
        assert list(drop.messages.sizes) == [wire_size(m) for m in got]
        await drop.release()

    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(run(str(Path(folder) / "alice")))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(data.filter(lambda m: not m.endswith(b"\r")), st.booleans(),
                          st.booleans()), min_size=1, max_size=6))
def test_incremental_index_deletes_and_full_rescan_agree(plan: list[tuple[bytes, bool, bool]]
                                                         ) -> None:
    """Messages delivered one by one with a login after each (so the index grows by
    tail scans), some deleted at a QUIT: the spool then holds exactly the others, and
    the listing from the index equals the one a full rescan (index removed) makes."""

    async def run(folder: Path) -> None:
        spool = str(folder / "alice")
        store = MboxStore()
        for message, login, _ in plan:
            assert await store.deliver(spool, message) is None
            if login:
                await (await open_drop(store, spool)).release()
        drop = await open_drop(store, spool)
        doomed = {i for i, (_, _, delete) in enumerate(plan) if delete}
        kept_uidls = [u for i, u in enumerate(drop.messages.uidls) if i not in doomed]
        await drop.commit(doomed, set())
        kept = [_lf_terminated(m) for i, (m, _, _) in enumerate(plan) if i not in doomed]
        assert await contents(store, spool) == kept
        indexed = await open_drop(store, spool)
        listing = list(indexed.messages)
        await indexed.release()
        assert [m.uidl for m in listing] == kept_uidls
        for index in (folder / ".popbox").glob("*.uidlist"):
            index.unlink()
        rescanned = await open_drop(store, spool)
        assert [m.size for m in rescanned.messages] == [m.size for m in listing]
        await rescanned.release()

    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(run(Path(folder)))
