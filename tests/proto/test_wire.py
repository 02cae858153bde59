"""The message on the wire: CRLF, byte-stuffing, terminator, sizes, TOP (RFC 1939 §3, §7).

Every test here runs twice, once with each kernel (the compiled `popbox.proto._speedups`
and the Python `popbox.proto._native`); tests/proto/test_wire_kernels.py checks that the two
give the same bytes for any input cut into any chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kernels import KERNELS, using
from popbox.client.crlf import LfConverter, to_lf
from popbox.proto.wire import (
    CrCarry,
    MessageEncoder,
    SizeCounter,
    TopFilter,
    to_wire,
    wire_size,
)


@pytest.fixture(scope="module", params=sorted(KERNELS), autouse=True)
def kernel(request: pytest.FixtureRequest) -> Iterator[str]:
    with using(KERNELS[request.param]):
        yield request.param


def encode(message: bytes, chunk: int | None = None, top: int | None = None) -> bytes:
    enc = MessageEncoder()
    flt = TopFilter(top) if top is not None else None
    step = chunk or max(len(message), 1)
    out = []
    for i in range(0, len(message), step):
        part = message[i : i + step]
        out.append(enc.feed(flt.feed(part) if flt else part))
    out.append(enc.finish())
    return b"".join(out)


def unstuff(wire: bytes) -> bytes:
    """What a client reconstructs: lines with the leading '.' removed, no terminator."""
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    body = wire[:-3]
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def test_lf_becomes_crlf_and_terminator_added() -> None:
    """RFC 1939 §3: lines end in CRLF; the response ends with CRLF.CRLF."""
    assert encode(b"a\nb\n") == b"a\r\nb\r\n.\r\n"


def test_dot_lines_are_stuffed() -> None:
    """RFC 1939 §3: a line starting with the termination octet gets one more."""
    assert encode(b".x\n..y\n.\nz\n") == b"..x\r\n...y\r\n..\r\nz\r\n.\r\n"


def test_message_without_final_newline_is_terminated() -> None:
    assert encode(b"a\nlast") == b"a\r\nlast\r\n.\r\n"
    assert wire_size(b"a\nlast") == len(b"a\r\nlast\r\n")


def test_crlf_input_is_kept() -> None:
    assert encode(b"a\r\nb\r\n") == b"a\r\nb\r\n.\r\n"
    assert wire_size(b"a\r\nb\r\n") == 6


def test_empty_message() -> None:
    assert encode(b"") == b".\r\n"
    assert wire_size(b"") == 0


def test_crlf_split_across_chunks() -> None:
    assert encode(b"ab\r\n.c\r\n", chunk=3) == b"ab\r\n..c\r\n.\r\n"


def test_nul_bytes_and_long_lines_pass_intact() -> None:
    message = b"X-Nul: a\0b\n\n" + b"x" * 1_000_000
    wire = encode(message, chunk=65536)
    assert unstuff(wire) == message.replace(b"\n", b"\r\n") + b"\r\n"
    assert len(unstuff(wire)) == wire_size(message)


def test_top_counts_body_lines_not_header_lines() -> None:
    """RFC 1939 §7 TOP: headers, the blank line, then n lines of the body."""
    message = b"H1: a\nH2: b\n\nline1\nline2\nline3\n"
    assert encode(message, top=0) == b"H1: a\r\nH2: b\r\n\r\n.\r\n"
    assert encode(message, top=2) == b"H1: a\r\nH2: b\r\n\r\nline1\r\nline2\r\n.\r\n"
    assert encode(message, top=99999999) == encode(message)


def test_top_byte_by_byte_matches_whole() -> None:
    message = b"H: a\r\n\r\n.one\r\ntwo\r\nthree"
    for k in range(5):
        assert encode(message, chunk=1, top=k) == encode(message, top=k)


def test_top_without_body_separator_sends_all_headers() -> None:
    assert encode(b"H: a\nH: b", top=0) == b"H: a\r\nH: b\r\n.\r\n"


messages = st.binary(max_size=400) | st.lists(
    st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"a", b"..", b"\n.", b"\0", b"\xff"]),
    max_size=60,
).map(b"".join)


@given(messages, st.integers(min_value=1, max_value=17))
def test_roundtrip_and_size_property(message: bytes, chunk: int) -> None:
    """Un-stuffing what we send gives the CRLF message, and its length is wire_size."""
    wire = encode(message, chunk=chunk)
    assert wire == encode(message)
    assert b"\r\n.\r\n" not in b"\r\n" + wire[:-3]  # the terminator only at the end
    body = unstuff(wire)
    assert len(body) == wire_size(message)
    counter = SizeCounter()
    for i in range(0, len(message), chunk):
        counter.feed(message[i : i + chunk])
    assert counter.finish() == wire_size(message)


@example(b"\r\r\n\x00", 0, 1)  # "\r\r" split across chunks is not an empty line
@given(messages, st.integers(min_value=0, max_value=5), st.integers(min_value=1, max_value=9))
def test_top_chunking_property(message: bytes, lines: int, chunk: int) -> None:
    assert encode(message, chunk=chunk, top=lines) == encode(message, top=lines)


def test_outlook_no_nuls_workaround_keeps_the_size() -> None:
    """Dovecot's outlook-no-nuls: NUL octets go out as 0x80; sizes are unchanged."""
    message = b"Subject: x\n\na\0b\n"
    enc = MessageEncoder(no_nuls=True)
    wire = enc.feed(message) + enc.finish()
    assert wire == b"Subject: x\r\n\r\na\x80b\r\n.\r\n"
    assert len(wire) - 3 == wire_size(message)


@given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=40), max_size=12))
@example(b"a\r\nb\r", [2])
@example(b"\r\r\n\r", [1, 1, 1])
@example(b"\r\r", [])
def test_cr_carry_never_splits_a_crlf(data: bytes, cuts: list[int]) -> None:
    """RFC 1939 §3 line ends are CRLF: a chunk boundary between CR and LF must not hide one.
    No piece `CrCarry` passes on ends in a CR that the input follows with LF (a CR before
    another CR is a lone CR, and may go), the last CR of a chunk is always held, and the
    pieces plus the held CR are the input unchanged."""
    carry = CrCarry()
    bounds = [0, *sorted(min(cut * 5, len(data)) for cut in cuts), len(data)]
    out = []
    passed = 0
    for start, end in pairwise(bounds):
        piece = carry.feed(data[start:end])
        passed += len(piece)
        assert not (piece.endswith(b"\r") and data[passed : passed + 1] == b"\n")
        assert carry.held == (data[start:end].endswith(b"\r") or (carry.held and start == end))
        out.append(piece)
    assert b"".join(out) + (b"\r" if carry.held else b"") == data


@given(st.binary(max_size=200), st.integers(min_value=1, max_value=17))
@example(b"a\r\nb\r", 4)
def test_lf_converter_in_pieces_equals_whole(data: bytes, step: int) -> None:
    """The fetcher's CRLF -> LF conversion gives the same bytes however the data is cut."""
    conv = LfConverter()
    pieces = [conv.feed(data[i : i + step]) for i in range(0, len(data), step)]
    assert b"".join(pieces) + conv.finish() == to_lf(data)


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
@example(b".a\n\r", 1)
def test_to_wire_is_what_retr_sends(data: bytes, cut: int) -> None:
    """RFC 1939 §3: the wire form is the encoder's output for any chunking, less the
    terminator; it is `wire_size` octets plus one per stuffed "."."""
    enc = MessageEncoder()
    sent = b"".join(enc.feed(data[i:i + cut]) for i in range(0, len(data), cut))
    sent += enc.finish()
    wire = to_wire(data)
    assert wire + b".\r\n" == sent
    assert len(wire) - wire_size(data) == (b"\r\n" + wire).count(b"\r\n.")
