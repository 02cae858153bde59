"""The load generator's reply check (bench.load.unstuffed_size), on its own.

RFC 1939 §3: a line of a multi-line response that starts with "." is sent with one more
"."; the size a client counts is the data with that octet removed. The benchmark's figures
are only worth something if this check fails whenever a server gets it wrong.
"""

from __future__ import annotations

import pytest
from bench.load import CheckError, unstuffed_size


def _size(data: bytes) -> int:
    """As `message_size` calls it: the buffer holds the data and the terminator."""
    buffer = bytearray(data + b".\r\n")
    return unstuffed_size(buffer, len(buffer) - 3)


@pytest.mark.parametrize(
    ("sent", "size"),
    [
        (b"", 0),
        (b"a\r\n", 3),
        (b"..x\r\n", 4),  # first line ".x"
        (b"a\r\n..\r\n", 6),  # a line holding only "."
        (b"a\r\n...b\r\n", 8),  # "..b": stuffed once, one octet removed
        (b"x.y\r\n.. z\r\n", 5 + 5),  # a "." inside a line is not stuffing
    ],
)
def test_stuffed_data_gives_the_unstuffed_size(sent: bytes, size: int) -> None:
    assert _size(sent) == size


@pytest.mark.parametrize(
    "sent",
    [
        b".x\r\n",  # the first line, not stuffed
        b"a\r\n.x\r\n",  # a later line, not stuffed
        b"a\r\n.\r\nb\r\n",  # a lone "." inside: the reply would end there
    ],
)
def test_unstuffed_dot_line_is_an_error(sent: bytes) -> None:
    with pytest.raises(CheckError, match="not byte-stuffed"):
        _size(sent)


def test_data_without_final_line_end_is_an_error() -> None:
    with pytest.raises(CheckError, match="does not end with CRLF"):
        _size(b"abc")
