"""A Maildir commit's batch of unlinks and renames (popbox.store.maildir_apply): the
compiled batch and its Python fallback give the same result for each operation, on real
files in real new/ and cur/ directories: done (0), gone (ENOENT), a taken target left
alone with both files intact (EEXIST: a rename never replaces a file), a name that
cannot be a file name (EINVAL)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popbox.store import _apply, maildir_apply
from popbox.store.maildir_apply import Op

APPLIERS = {"c": _apply.apply, "python": maildir_apply._python_apply}


@pytest.fixture(params=sorted(APPLIERS))
def run(request: pytest.FixtureRequest) -> Iterator[maildir_apply._Apply]:
    yield APPLIERS[request.param]


def _maildir(root: Path) -> Path:
    for sub in ("new", "cur"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def _do(run: maildir_apply._Apply, md: Path, ops: list[Op]) -> list[int]:
    new_fd = os.open(md / "new", os.O_RDONLY | os.O_DIRECTORY)
    cur_fd = os.open(md / "cur", os.O_RDONLY | os.O_DIRECTORY)
    try:
        return run(new_fd, cur_fd, ops)
    finally:
        os.close(new_fd)
        os.close(cur_fd)


def _tree(md: Path) -> dict[str, bytes]:
    return {f"{sub}/{p.name}": p.read_bytes() for sub in ("new", "cur")
            for p in sorted((md / sub).iterdir())}


def test_each_kind_of_operation(tmp_path: Path, run: maildir_apply._Apply) -> None:
    md = _maildir(tmp_path)
    for sub, name in [("new", "a"), ("new", "b"), ("cur", "c:2,"), ("cur", "d:2,"),
                      ("cur", "taken:2,S"), ("new", "taken")]:
        (md / sub / name).write_bytes(f"{sub}/{name}".encode())
    ops: list[Op] = [
        (False, "a", "a:2,S"),  # new/ -> cur/ with S
        (True, "c:2,", "c:2,S"),  # a flag added in cur/
        (False, "b", None),  # unlinked from new/
        (True, "d:2,", None),  # unlinked from cur/
        (False, "gone", "gone:2,S"),  # renamed or removed meanwhile
        (True, "gone:2,", None),
        (False, "taken", "taken:2,S"),  # the target exists: never replaced
        (False, "nul\0name", None),  # not a file name
        (False, "a", "x\0y"),
    ]
    assert _do(run, md, ops) == [0, 0, 0, 0, errno.ENOENT, errno.ENOENT, errno.EEXIST,
                                 errno.EINVAL, errno.EINVAL]
    assert _tree(md) == {"new/taken": b"new/taken", "cur/a:2,S": b"new/a",
                         "cur/c:2,S": b"cur/c:2,", "cur/taken:2,S": b"cur/taken:2,S"}


def test_a_name_that_cannot_be_encoded_is_einval(tmp_path: Path,
                                                 run: maildir_apply._Apply) -> None:
    md = _maildir(tmp_path)
    (md / "new" / "a").write_bytes(b"x")
    assert _do(run, md, [(False, "\ud800", None), (False, "a", "\ud800")]) == [
        errno.EINVAL, errno.EINVAL]
    assert _tree(md) == {"new/a": b"x"}


def test_nothing_to_do(tmp_path: Path) -> None:
    md = _maildir(tmp_path)
    assert maildir_apply.apply(-1, -1, []) == []  # no descriptor is even looked at
    assert _do(_apply.apply, md, []) == []


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture],
          deadline=None)
@given(plan=st.lists(st.tuples(st.booleans(), st.sampled_from("abcde"), st.booleans(),
                               st.sampled_from(["", "S", "keep"])), max_size=12),
       present=st.sets(st.tuples(st.sampled_from(["new", "cur"]), st.sampled_from("abcde"))))
def test_both_paths_agree(tmp_path: Path, plan: list[tuple[bool, str, bool, str]],
                          present: set[tuple[str, str]]) -> None:
    """Any mix of operations, on any files present, gives the same codes and the same
    directories from the compiled batch and the Python one (in order: one operation can
    make the next one's file gone or its target taken)."""
    ops: list[Op] = [(in_cur, name, None if unlink else (f"{name}:2,{flag}" if flag != "keep"
                                                         else name))
                     for in_cur, name, unlink, flag in plan]
    results = {}
    for label, run in APPLIERS.items():
        md = _maildir(tmp_path / label)
        for sub in ("new", "cur"):
            for p in (md / sub).iterdir():
                p.unlink()
        for sub, name in present:
            (md / sub / name).write_bytes(f"{sub}/{name}".encode())
        results[label] = (_do(run, md, ops), _tree(md))
    assert results["c"] == results["python"]
