"""The mbox formats (RFC 4155 §2, mboxrd as in qmail's mbox(5)): quoting written by
`quote`, undone by `Unquoter` on a stream, whole, byte by byte and in odd chunks; and the
From lines that start messages (`find_starts`)."""

from __future__ import annotations

import pytest

from popbox.store.mbox_format import HOLD_LIMIT, Unquoter, find_starts, quote

BODIES = [
    b"",
    b"From me\n",
    b"plain\nFrom the start\n>From quoted\n>>From twice\n>not from\n>Fro\nFrom",
    b">>>>From deep\nx\r\nFrom crlf\r\n>From crlf\r\n",
    b"no newline at all, From in the middle",
    b">" * 10 + b"From many\n" + b">" * 10 + b"\n",
    b"\n\nFrom \nFrom\n>From",
]


def unquote(data: bytes, fmt: str, step: int) -> bytes:
    u = Unquoter(fmt)  # type: ignore[arg-type]
    out = [u.feed(data[i : i + step]) for i in range(0, len(data), step)]
    return b"".join(out) + u.finish()


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("step", [1, 2, 3, 5, 64, 10_000])
def test_mboxrd_round_trip(body: bytes, step: int) -> None:
    """mboxrd is reversible: reading back what `quote` wrote gives the message, however
    the stream is cut."""
    assert unquote(quote(body, "mboxrd"), "mboxrd", step) == body


@pytest.mark.parametrize("step", [1, 4, 1000])
def test_mboxo_removes_one_level_only(step: int) -> None:
    """mboxo (Postfix local, procmail) quotes only "From "; reading takes ">" off
    ">From " lines and leaves ">>From " alone."""
    stored = b"a\n>From x\n>>From y\nFrom z\n"
    assert unquote(stored, "mboxo", step) == b"a\nFrom x\n>>From y\nFrom z\n"
    assert quote(b"From x\n>From y\n", "mboxo") == b">From x\n>From y\n"
    assert quote(b"From x\n>From y\n", "mboxrd") == b">From x\n>>From y\n"


def test_quote_only_at_line_starts() -> None:
    assert quote(b"say From here\n From there\n", "mboxrd") == b"say From here\n From there\n"


def test_unquoter_holds_back_little() -> None:
    """A run of ">" longer than the hold limit is passed on, so memory stays bounded."""
    u = Unquoter("mboxrd")
    out = u.feed(b">" * (HOLD_LIMIT + 10))
    assert len(out) == HOLD_LIMIT + 10
    assert u.feed(b"x\n") == b"x\n"


LINE = b"From alice@example.org  Wed Dec  2 02:02:40 2026\n"


@pytest.mark.parametrize("step", [7, 50, 4096])
def test_find_starts_across_chunks(step: int) -> None:
    """Only lines of a From line's shape start messages; a From line cut by a chunk's
    end is decided with the next chunk."""
    spool = LINE + b"a\n\n" + LINE + b"From here on\n\n" + b"From x Mon Jan  1 00:00 2024\n"
    expected = [0, len(LINE) + 3, 2 * len(LINE) + 3 + 14]
    found: list[int] = []
    pos = 0
    carry = b""
    while True:
        data = carry + spool[pos : pos + step]
        base = pos - len(carry)
        pos += step
        final = pos >= len(spool)
        starts, settled = find_starts(data, base, final=final)
        found.extend(starts)
        if final:
            break
        carry = data[settled:]
    assert [0, *found] == expected
