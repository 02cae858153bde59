"""The two wire kernels, compiled (`popbox.proto._speedups`) and Python
(`popbox.proto._native`): the extension was built, the environment switch works, and
both give the same bytes for any input cut into any chunks, on the server's side
(CRLF, byte-stuffing, sizes: RFC 1939 §3) and the client's (un-stuffing, CRLF to LF)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kernels import using
from popbox.client.crlf import LfConverter
from popbox.proto import _native, _speedups, wire
from popbox.proto.wire import MessageEncoder, SizeCounter


def unstuff(wire_bytes: bytes) -> bytes:
    """What a client reconstructs: lines with the leading '.' removed, no terminator."""
    assert wire_bytes.endswith(b"\r\n.\r\n") or wire_bytes == b".\r\n"
    lines = wire_bytes[:-3].split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def test_the_compiled_kernel_was_built_and_is_used() -> None:
    """The install built the C extension, and popbox uses it unless told not to."""
    assert _speedups.__file__ is not None
    assert _speedups.__file__.endswith(".so")
    expected = "python" if os.environ.get(wire.PURE_PYTHON_ENV, "") not in ("", "0") else "c"
    assert expected == wire.KERNEL_NAME


@pytest.mark.parametrize(("value", "name"), [("1", "python"), ("0", "c"), ("", "c")])
def test_environment_switch_forces_the_python_kernel(value: str, name: str) -> None:
    env = {**os.environ, wire.PURE_PYTHON_ENV: value}
    out = subprocess.run(
        [sys.executable, "-c", "from popbox.proto import wire; print(wire.KERNEL_NAME)"],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )
    assert out.stdout.strip() == name


# Pieces that meet the corner cases at chunk edges: "\r" at an end, "." at a start,
# NULs, empty chunks.
pieces = st.lists(
    st.binary(max_size=40)
    | st.lists(
        st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"a", b"..", b"\n.", b"\0", b"\xff", b""]),
        max_size=12,
    ).map(b"".join),
    max_size=12,
)


def run_encoder(kernel: wire.Kernel, chunks: list[bytes], no_nuls: bool) -> list[bytes]:
    with using(kernel):
        enc = MessageEncoder(no_nuls=no_nuls)
        return [enc.feed(c) for c in chunks] + [enc.finish()]


def run_counter(kernel: wire.Kernel, chunks: list[bytes]) -> int:
    with using(kernel):
        counter = SizeCounter()
        for c in chunks:
            counter.feed(c)
        return counter.finish()


@example([b"a\r", b"\n.", b".\r"], False)
@example([b"", b".", b"\0\r", b"", b"\n"], True)
@settings(max_examples=400)
@given(pieces, st.booleans())
def test_c_and_python_encoders_send_the_same_bytes(chunks: list[bytes], no_nuls: bool) -> None:
    """Chunk by chunk, both kernels give identical bytes and sizes, and they are the
    whole message's (RFC 1939 §3)."""
    c_out = run_encoder(_speedups, chunks, no_nuls)
    assert c_out == run_encoder(_native, chunks, no_nuls)
    whole = b"".join(chunks)
    assert b"".join(c_out) == b"".join(run_encoder(_native, [whole], no_nuls))
    size = run_counter(_speedups, chunks)
    assert size == run_counter(_native, chunks) == run_counter(_native, [whole])
    assert size == len(unstuff(b"".join(c_out)))


def run_lf(kernel: wire.Kernel, chunks: list[bytes]) -> list[bytes]:
    with using(kernel):
        lf = LfConverter()
        return [lf.feed(c) for c in chunks] + [lf.finish()]


@example([b"a\r", b"\n.", b"\r"], True)
@settings(max_examples=400)
@given(pieces, st.booleans())
def test_c_and_python_client_decoders_agree(chunks: list[bytes], at_start: bool) -> None:
    """The client's side: un-stuffing and CRLF to LF give the same bytes with both kernels,
    and undo what the encoder did."""
    assert run_lf(_speedups, chunks) == run_lf(_native, chunks)
    whole = b"".join(chunks)
    assert b"".join(run_lf(_speedups, chunks)) == _native.to_lf(whole)
    for chunk in chunks:
        assert _speedups.unstuff(chunk, at_start) == _native.unstuff(chunk, at_start)
    sent = b"".join(run_encoder(_speedups, [whole], False))[:-3]
    assert _speedups.unstuff(sent, True) == unstuff(sent + wire.TERMINATOR)


def test_buffers_other_than_bytes_are_read_in_place() -> None:
    """The compiled kernel takes any bytes-like chunk (a bytearray, a memoryview)."""
    data = b".a\nb\r\n.c"
    for kind in (bytearray, memoryview):
        assert _speedups.encode(kind(data), True, False) == _native.encode(data, True, False)
        assert _speedups.octets(kind(data)) == _native.octets(data)
        assert _speedups.to_lf(kind(data)) == _native.to_lf(data)
        assert _speedups.unstuff(kind(data), True) == _native.unstuff(data, True)
    with pytest.raises(TypeError):
        _speedups.encode("text", True, False)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _speedups.encode(data, True)  # type: ignore[call-arg]


@example(b"", False)
@example(b"a\r", False)
@example(b".\n\0", True)
@settings(max_examples=400)
@given(pieces.map(b"".join), st.booleans())
def test_whole_message_in_one_piece(data: bytes, no_nuls: bool) -> None:
    """`message` gives the status line, then exactly what the encoder sends for the data
    fed whole and its end, with both kernels; and None for any size but the data's wire
    size, so a message that is not the size promised is never sent."""
    head = b"+OK 5 octets\r\n"
    expected = head + b"".join(run_encoder(_native, [data], no_nuls))
    size = wire.wire_size(data)
    assert size == run_counter(_native, [data])
    for kernel in (_speedups, _native):
        assert kernel.message(head, data, size, no_nuls) == expected
        for wrong in (size - 1, size + 1, size + 2):
            assert kernel.message(head, data, wrong, no_nuls) is None
    assert _speedups.message(bytearray(head), memoryview(data), size, no_nuls) == expected
