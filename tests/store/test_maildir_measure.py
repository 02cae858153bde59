"""The Maildir size pass (popbox.store.maildir_measure): the compiled batch and its Python
fallback give, for any file content and any read size, the wire size RFC 1939 §11 asks for
(CRLF line ends: popbox.proto.wire.wire_size, the one definition), and refuse what is not
a regular file, on real files in a real directory; so does the whole read of one small
file (read_small), in C and in Python."""

from __future__ import annotations

import errno
import os
import random
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popbox.proto.wire import wire_size
from popbox.store import _measure, maildir_measure
from popbox.store.maildir_measure import Measured

PASSES = {"c": _measure.sizes, "python": maildir_measure._python_sizes}

# Line ends and their pieces are what the count depends on: draw mostly those.
_CONTENT = st.lists(
    st.sampled_from([b"\n", b"\r", b"\r\n", b"a", b".", b"\0", b"xyz", b"\n\n"]), max_size=40
).map(b"".join)


@pytest.fixture(params=sorted(PASSES))
def run(request: pytest.FixtureRequest) -> Iterator[maildir_measure._Pass]:
    yield PASSES[request.param]


def _batch(run: maildir_measure._Pass, directory: Path, names: list[str], chunk: int) -> Measured:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return run(fd, names, chunk)
    finally:
        os.close(fd)


@settings(max_examples=120, suppress_health_check=[HealthCheck.function_scoped_fixture],
          deadline=None)
@given(contents=st.lists(_CONTENT, min_size=1, max_size=6), chunk=st.integers(1, 9))
def test_sizes_are_wire_sizes(
    tmp_path: Path, run: maildir_measure._Pass, contents: list[bytes], chunk: int
) -> None:
    """Every read size (1 byte: a "\\r" and its "\\n" in two reads) gives wire_size."""
    names = [f"m{i}" for i in range(len(contents))]
    for name, data in zip(names, contents, strict=True):
        (tmp_path / name).write_bytes(data)
    got = _batch(run, tmp_path, names, chunk)
    assert got == [(len(data), wire_size(data)) for data in contents]


def test_known_sizes(tmp_path: Path, run: maildir_measure._Pass) -> None:
    cases = {
        "empty": (b"", 0),
        "lf": (b"a\nb\n", 6),
        "crlf": (b"a\r\nb\r\n", 6),
        "no-end": (b"a\nb", 6),  # a line end is added
        "lone-cr-end": (b"a\r", 4),  # the "\r" is kept, then CRLF
        "mixed": (b"a\r\nb\nc\rd\n", 11),
    }
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    got = _batch(run, tmp_path, list(cases), 2)
    assert got == [(len(data), wire) for data, wire in cases.values()]


def test_what_is_not_a_regular_file_is_none(tmp_path: Path, run: maildir_measure._Pass) -> None:
    """A symlink (even to a readable file), a FIFO (never waited on), a directory, a file
    that is gone and a name that no file system can hold are not measured."""
    (tmp_path / "ok").write_bytes(b"x\n")
    (tmp_path / "link").symlink_to(tmp_path / "ok")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    names = ["ok", "link", "fifo", "dir", "gone", "nul\0name", "\ud800", "ok"]
    assert _batch(run, tmp_path, names, 4096) == [(2, 3), None, None, None, None, None, None,
                                                  (2, 3)]


def test_unreadable_file_is_none(tmp_path: Path, run: maildir_measure._Pass) -> None:
    """A file of mode 000 cannot be measured. Root reads any file, so as root the pass runs
    in a child process that has become nobody (the folder opened before, as the store
    holds it)."""
    path = tmp_path / "secret"
    path.write_bytes(b"x\n")
    path.chmod(0)
    if os.geteuid() != 0:
        assert _batch(run, tmp_path, ["secret"], 4096) == [None]
        return
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        pid = os.fork()
        if pid == 0:  # the child: exit 0 exactly when the file is not measured
            try:
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                os._exit(0 if run(fd, ["secret"], 4096) == [None] else 1)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0


def test_large_batch_in_threads_keeps_the_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run: maildir_measure._Pass
) -> None:
    """A batch above PARALLEL_FROM is cut into parts (one thread each) and put back in the
    order of the names."""
    monkeypatch.setattr(maildir_measure, "_pass", run)
    monkeypatch.setattr(maildir_measure, "_cpus", lambda: 4)
    count = maildir_measure.PARALLEL_FROM * 2 + 7
    expected: Measured = []
    names = []
    for i in range(count):
        data = b"line\n" * (i % 13) + b"x" * (i % 3)
        name = f"{count - i:05d}"  # not in readdir or sorted order
        (tmp_path / name).write_bytes(data)
        names.append(name)
        expected.append((len(data), wire_size(data)))
    names[5] = "missing"
    expected[5] = None
    assert maildir_measure.sizes(str(tmp_path), names, 64) == expected


def test_a_directory_that_cannot_be_opened_measures_nothing(tmp_path: Path) -> None:
    assert maildir_measure.sizes(str(tmp_path / "nope"), ["a", "b"], 4096) == [None, None]
    assert maildir_measure.sizes(str(tmp_path), [], 4096) == []


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError):
        _measure.sizes(0, ("a",), 4096)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _measure.sizes(0, [b"a"], 4096)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="buffer_size"):
        _measure.sizes(0, ["a"], 0)
    with pytest.raises(ValueError, match="descriptor"):
        _measure.sizes(-1, ["a"], 4096)


def test_pure_python_is_chosen_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POPBOX_PURE_PYTHON", "1")
    assert maildir_measure._measurer() == (
        "python", maildir_measure._python_sizes, maildir_measure._python_read_small)
    monkeypatch.setenv("POPBOX_PURE_PYTHON", "0")
    assert maildir_measure._measurer() == ("c", _measure.sizes, _measure.read_small)


READERS = {"c": _measure.read_small, "python": maildir_measure._python_read_small}


@pytest.fixture(params=sorted(READERS))
def read_small(request: pytest.FixtureRequest) -> Callable[[str, int], bytes | int]:
    return READERS[request.param]


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 70_000])
def test_read_small_reads_the_file_whole(
    tmp_path: Path, read_small: Callable[[str, int], bytes | int], size: int
) -> None:
    """The whole file when it fits in `limit`, else exactly its first `limit` octets."""
    data = bytes(random.Random(size).randrange(256) for _ in range(size))
    path = tmp_path / "m"
    path.write_bytes(data)
    for limit in (size + 1, size + 100, max(size - 1, 0), 1):
        assert read_small(str(path), limit) == data[:limit]


def test_read_small_refuses_what_is_not_a_regular_file(
    tmp_path: Path, read_small: Callable[[str, int], bytes | int]
) -> None:
    """A FIFO (opened without waiting for a writer) and a directory give their st_mode; a
    symlink is not followed (ELOOP); a missing file is FileNotFoundError."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    (tmp_path / "real").write_bytes(b"x\n")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    fifo = read_small(str(tmp_path / "fifo"), 10)
    assert isinstance(fifo, int) and stat.S_ISFIFO(fifo)
    directory = read_small(str(tmp_path / "dir"), 10)
    assert isinstance(directory, int) and stat.S_ISDIR(directory)
    with pytest.raises(OSError) as loop:
        read_small(str(tmp_path / "link"), 10)
    assert loop.value.errno == errno.ELOOP
    with pytest.raises(FileNotFoundError):
        read_small(str(tmp_path / "gone"), 10)


def test_first_listing_measures_through_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run: maildir_measure._Pass
) -> None:
    """A first listing (no ,W=, no cache) measures in cur/ and new/; a FIFO among the
    messages is left out; the sizes are cached, so the next listing measures nothing."""
    from popbox.store import maildir_scan

    monkeypatch.setattr(maildir_measure, "_pass", run)
    root = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    (root / "new" / "1700000001.A.host").write_bytes(b"a\nb\n")
    (root / "cur" / "1700000002.B.host:2,S").write_bytes(b"ccc")
    os.mkfifo(root / "new" / "1700000003.C.host")
    listing = maildir_scan.take(str(root), None, 4096)
    assert listing.names == ["1700000001.A.host", "1700000002.B.host:2,S"]
    assert listing.sizes == [6, 5]
    assert stat.S_ISREG(os.stat(root / "popbox-sizes").st_mode)

    def no_measuring(*args: object) -> Measured:
        raise AssertionError("measured again")

    monkeypatch.setattr(maildir_measure, "_pass", no_measuring)
    (root / "popbox-listing").unlink()
    assert maildir_scan.take(str(root), None, 4096).sizes == [6, 5]
