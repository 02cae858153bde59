"""A small tmpfs for the full-disk tests (as root): mounted by the test, filled to the last
page on demand, unmounted after."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


class Disk:
    """A mounted tmpfs; `fill()` takes every free page, `free()` gives them back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ballast = path / "ballast"

    def fill(self) -> None:
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (65536, 4096, 1):
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * size)
        finally:
            os.close(fd)
        probe = self.path / "probe"
        with pytest.raises(OSError) as caught:  # the disk really is full
            probe.write_bytes(b"x" * 4096)
        assert caught.value.errno == errno.ENOSPC
        probe.unlink()

    def free(self) -> None:
        self.ballast.unlink()


@contextlib.contextmanager
def mounted(path: Path, size: str = "1m", uid: int = 0) -> Iterator[Disk]:
    """A tmpfs of `size` at `path` (made if missing), its root owned by `uid`, mode 0700."""
    path.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700,uid={uid}",
                    "tmpfs", str(path)], check=True, timeout=30)
    try:
        yield Disk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)
