"""Replacing files atomically and opening only regular files, on real files.

rename(2) replaces its target atomically; fsync(2) makes data and (on the directory) the
new name durable; open(2) with O_NOFOLLOW fails with ELOOP on a final symlink, and with
O_NONBLOCK does not wait for a FIFO's writer (fifo(7))."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from popbox.fsutil import NotRegularFile, open_regular, overwrite, read_regular, write_atomic


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name not in keep)


def test_write_atomic_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "state"
    write_atomic(target, b"one")
    assert target.read_bytes() == b"one"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    write_atomic(target, b"two" * 100_000, fsync=False, mode=0o640)
    assert target.read_bytes() == b"two" * 100_000
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert _leftovers(tmp_path, {"state"}) == []


def test_write_atomic_gives_the_file_to_its_owner(tmp_path: Path) -> None:
    """As root the new file gets the requested owner (the users file keeps its owner)."""
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    target = tmp_path / "users"
    write_atomic(target, b"x", owner=(65534, 65534))
    assert (target.stat().st_uid, target.stat().st_gid) == (65534, 65534)


def test_write_atomic_in_a_staging_directory(tmp_path: Path) -> None:
    """Maildir delivery: the file is written in tmp/ and appears in new/ whole."""
    for sub in ("tmp", "new"):
        (tmp_path / sub).mkdir()
    write_atomic(tmp_path / "new" / "m1", b"mail\n", staging=tmp_path / "tmp")
    assert (tmp_path / "new" / "m1").read_bytes() == b"mail\n"
    assert os.listdir(tmp_path / "tmp") == []


def test_write_atomic_replaces_a_planted_symlink_not_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "cache").symlink_to(victim)
    write_atomic(tmp_path / "cache", b"cache data", fsync=False)
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "cache").is_symlink()
    assert (tmp_path / "cache").read_bytes() == b"cache data"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    """A write that fails half-way (here: the file size limit, EFBIG, as a full disk
    would fail with ENOSPC) raises, keeps the old content and removes its temporary file.
    Run in a child so the limit binds only there."""
    target = tmp_path / "users"
    target.write_bytes(b"old content\n")
    script = textwrap.dedent(
        f"""
        import errno, resource, signal
        from popbox.fsutil import write_atomic
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            write_atomic({str(target)!r}, b"n" * 100_000)
        except OSError as exc:
            print(errno.errorcode[exc.errno])
        else:
            print("written")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "EFBIG"
    assert target.read_bytes() == b"old content\n"
    assert _leftovers(tmp_path, {"users"}) == []


def test_a_failed_rename_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    """rename(2) onto a non-empty directory fails (EISDIR/ENOTEMPTY): nothing is changed."""
    target = tmp_path / "state"
    target.mkdir()
    (target / "inside").write_bytes(b"kept")
    with pytest.raises(OSError) as raised:
        write_atomic(target, b"new")
    assert raised.value.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST)
    assert (target / "inside").read_bytes() == b"kept"
    assert _leftovers(tmp_path, {"state"}) == []


def test_read_regular_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    assert read_regular(path, 100) == b"0123456789"
    assert read_regular(path, 4) == b"0123"


def test_open_regular_refuses_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"secret")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(OSError) as raised:
        open_regular(tmp_path / "link")
    assert raised.value.errno == errno.ELOOP
    with pytest.raises(OSError):
        read_regular(tmp_path / "link", 100)


def test_open_regular_refuses_a_fifo_at_once(tmp_path: Path) -> None:
    """Without O_NONBLOCK the open would wait for a writer forever (fifo(7))."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFile, match="FIFO"):
        open_regular(fifo)


def test_open_regular_refuses_a_directory_socket_and_device(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(NotRegularFile, match="directory"):
        open_regular(tmp_path / "dir")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        with pytest.raises(OSError):  # open(2) of a socket fails (ENXIO) before fstat
            open_regular(tmp_path / "sock")
    with pytest.raises(NotRegularFile, match="character device"):
        open_regular("/dev/null")


def test_overwrite_writes_in_place(tmp_path: Path) -> None:
    """The same inode, the new content whole, longer or shorter than the old."""
    path = tmp_path / "cache"
    path.write_bytes(b"old content, long")
    inode = path.stat().st_ino
    assert overwrite(path, b"new")
    assert path.read_bytes() == b"new"
    assert overwrite(path, b"longer than before, by far")
    assert path.read_bytes() == b"longer than before, by far"
    assert path.stat().st_ino == inode
    assert _leftovers(tmp_path, {"cache"}) == []


def test_overwrite_leaves_what_is_not_its_own_file_alone(tmp_path: Path) -> None:
    """Missing, a symlink, a hard link (its other name must not change), a FIFO (no
    wait for a reader), a directory, a socket, another user's file: False, nothing
    written, nothing made."""
    assert not overwrite(tmp_path / "missing", b"x")
    assert not (tmp_path / "missing").exists()
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    (tmp_path / "link").symlink_to(target)
    assert not overwrite(tmp_path / "link", b"x")
    os.link(target, tmp_path / "hard")
    assert not overwrite(tmp_path / "hard", b"x")
    assert target.read_bytes() == b"keep"
    os.mkfifo(tmp_path / "fifo")
    assert not overwrite(tmp_path / "fifo", b"x")
    (tmp_path / "dir").mkdir()
    assert not overwrite(tmp_path / "dir", b"x")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        assert not overwrite(tmp_path / "sock", b"x")
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.write_bytes(b"theirs")
        os.chown(theirs, 65534, 65534)
        assert not overwrite(theirs, b"x")
        assert theirs.read_bytes() == b"theirs"
