"""Bodies derived from the wire form (popbox.store.pg_body): a body is left out only when
the derivation gives it back byte for byte, whole or cut into any chunks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popbox.proto.wire import to_wire
from popbox.store import pg_body

KEPT = [
    b"Subject: no final newline\n\nlast line",
    b"Subject: mixed\r\n\r\nlf\ncrlf\r\n",
    b"Subject: mixed, ending in LF\r\n\r\nbody\n",
    b"",
    b"Subject: lone cr at the end\n\na\r",
]
DERIVED = [
    (b"Subject: dots\n\n.leading dot\n..two\n.\nend\n", pg_body.LF),
    (b".Subject: first line\n\nbody\n", pg_body.LF),
    (b"Subject: crlf\r\n\r\nbody\r\n.x\r\n", pg_body.CRLF),
    (b"Subject: lone cr\n\na\rb\n", pg_body.LF),
    (b"Subject: lone cr, crlf\r\n\r\na\rb\r\n\r\r\n", pg_body.CRLF),
    (b"Subject: nul\n\na\0b\n", pg_body.LF),
    (b"\n", pg_body.LF),
    (b"\r\n", pg_body.CRLF),
    (b"Subject: big\n\n" + b"".join(b".line %d\n" % i for i in range(70_000)), pg_body.LF),
]


@pytest.mark.parametrize("message", KEPT)
def test_what_the_wire_form_cannot_give_back_is_kept(message: bytes) -> None:
    assert pg_body.form(message, to_wire(message)) is None


@pytest.mark.parametrize(("message", "form"), DERIVED)
def test_derived_whole_and_in_chunks(message: bytes, form: int) -> None:
    wire = to_wire(message)
    assert pg_body.form(message, wire) == form
    assert pg_body.derive(wire, form) == message
    for size in (1, 2, 3, 7, 256 * 1024):
        decoder = pg_body.Decoder(form)
        pieces = [decoder.feed(wire[i:i + size]) for i in range(0, len(wire), size)]
        assert b"".join(pieces) + decoder.finish() == message, size


def test_an_unknown_form_is_refused() -> None:
    with pytest.raises(ValueError):
        pg_body.Decoder(3)


@given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"..", b"\n."]),
                max_size=40),
       st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_any_message_any_cuts(parts: list[bytes], cuts: list[int]) -> None:
    """Any message: either kept, or derived exactly however the wire form is cut."""
    message = b"".join(parts)
    wire = to_wire(message)
    form = pg_body.form(message, wire)
    if form is None:
        assert not message.endswith(b"\n") or b"\r" in message  # only what may be unclear
        return
    decoder = pg_body.Decoder(form)
    out = []
    start = 0
    for cut in [*sorted({min(c, len(wire)) for c in cuts}), len(wire)]:
        out.append(decoder.feed(wire[start:cut]))
        start = cut
    assert b"".join(out) + decoder.finish() == message
