"""The page cache, for the figure of a first open from disk.

`drop_page_cache` makes the kernel forget a mail tree's pages before a measurement: as
root, where the kernel lets it, the whole machine's clean page cache, dentries and
inodes (``sync``, then ``3`` into ``/proc/sys/vm/drop_caches``), which is what a first
open after a reboot meets; otherwise ``posix_fadvise(POSIX_FADV_DONTNEED)`` on every
file of the tree (its data pages only: the directory entries and inodes stay cached).
It says which it did.
"""

from __future__ import annotations

import os
from pathlib import Path

DROP_CACHES = Path("/proc/sys/vm/drop_caches")
DROPPED_ALL = "drop_caches"  # sync; echo 3 > /proc/sys/vm/drop_caches
DROPPED_FILES = "fadvise"  # POSIX_FADV_DONTNEED on each file of the tree


def drop_page_cache(tree: Path) -> str:
    """Drop the page cache for `tree`; returns DROPPED_ALL or DROPPED_FILES."""
    os.sync()  # dirty pages cannot be dropped
    try:
        with DROP_CACHES.open("w") as f:
            f.write("3\n")
        return DROPPED_ALL
    except OSError:
        pass
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            try:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return DROPPED_FILES


def warm_page_cache(tree: Path) -> int:
    """Read every file of `tree` once (into the page cache); returns the bytes read."""
    total = 0
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                while chunk := f.read(1 << 20):
                    total += len(chunk)
    return total
