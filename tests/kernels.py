"""The wire kernels by name, and a way to run a block with one of them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from popbox.proto import _native, _speedups, wire

KERNELS: dict[str, wire.Kernel] = {"c": _speedups, "python": _native}


@contextmanager
def using(kernel: wire.Kernel) -> Iterator[None]:
    """Runs the block with `kernel` as the one popbox.proto.wire uses."""
    saved, wire.kernel = wire.kernel, kernel
    try:
        yield
    finally:
        wire.kernel = saved
