"""bench.load's "mixed" and "quit" jobs against a real `popbox serve` on 127.0.0.1, run as
the harness runs them (bench.run.run_load: a bench.load process, events answered on its
stdin). RFC 1939 §6: what a session DELEs is gone only after its QUIT; §8: UIDL.

And bench.cache: dropping a maildrop's pages from the page cache (checked with
util-linux's fincore, which reads the kernel's residency of each page).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bench.quit import _maildir, _start, _stop
from bench.run import run_load

from bench import cache


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    md = _maildir(tmp_path, 12)
    proc, port = _start(tmp_path)
    try:
        yield md, port
    finally:
        _stop(proc)


def _files(md: Path) -> list[Path]:
    return [p for sub in ("new", "cur") for p in (md / sub).iterdir()]


def _wire_size(data: bytes) -> int:
    """The size STAT and LIST give for a stored (LF) message: with CRLF line ends, before
    byte-stuffing (RFC 1939 §5, as bench.load checks it)."""
    return len(data) + data.count(b"\n")


def _row(md: Path) -> list[Any]:
    files = _files(md)
    return ["quit", "quit", len(files), sum(_wire_size(p.read_bytes()) for p in files)]


def test_mixed_sessions_delete_down_to_the_kept_few(served: tuple[Path, int],
                                                    tmp_path: Path) -> None:
    md, port = served
    row = _row(md)
    out = run_load({"kind": "mixed", "port": port, "users": [row], "concurrency": 1,
                    "max_ops": 10, "seconds": 60}, 60, tmp_path / "load.log")
    assert out["errors"] == 0, out["samples"]
    assert out["ok"] == 10
    # 12 messages: sessions 1-7 each delete one (more than 5 left), the last three none
    msgs, octets = out["state"]["quit"]
    assert msgs == 5 == len(_files(md))
    assert octets < row[3]
    assert out["messages"] == 10 * 3  # the newest three, every session
    # the state carried over is what the next job checks STAT against
    again = run_load({"kind": "mixed", "port": port, "users": [["quit", "quit", msgs, octets]],
                      "concurrency": 1, "max_ops": 1, "seconds": 60}, 60, tmp_path / "load.log")
    assert again["errors"] == 0 and again["state"]["quit"] == [msgs, octets]


def test_mixed_session_with_a_wrong_expectation_is_an_error(served: tuple[Path, int],
                                                            tmp_path: Path) -> None:
    md, port = served
    row = _row(md)
    out = run_load({"kind": "mixed", "port": port, "users": [[*row[:2], row[2] + 1, row[3]]],
                    "concurrency": 1, "max_ops": 3, "seconds": 60}, 60, tmp_path / "load.log")
    assert out["errors"] == 1 and "STAT" in out["samples"][0]
    assert out["state"] == {}  # not used again: its state is unknown
    assert len(_files(md)) == 12  # nothing deleted


@pytest.mark.parametrize("dele", [False, True])
def test_quit_job_times_each_session_after_a_reset(served: tuple[Path, int], tmp_path: Path,
                                                   dele: bool) -> None:
    md, port = served
    row = _row(md)
    names = sorted(p.name for p in (md / "new").iterdir())
    resets: list[int] = []
    keep = tmp_path / "keep"  # a deleted message cannot be put back: a link to each
    keep.mkdir()
    for name in names:
        os.link(md / "new" / name, keep / name)

    def on_event(event: dict[str, Any]) -> None:
        assert event["event"] == "reset"
        resets.append(event["session"])
        for p in _files(md):  # every message back in new/, without flags
            p.rename(md / "new" / p.name.partition(":")[0])
        for name in names:
            if not (md / "new" / name).exists():
                os.link(keep / name, md / "new" / name)

    out = run_load({"kind": "quit", "port": port, "users": [row], "sessions": 3, "dele": dele},
                   120, tmp_path / "load.log", on_event)
    assert out["errors"] == 0 and out["ok"] == 3
    assert resets == [0, 1, 2]
    assert len(out["latencies"]) == 3 and all(ms > 0 for ms in out["latencies"])
    if dele:
        assert _files(md) == []
    else:
        assert all(p.name.endswith(":2,S") for p in (md / "cur").iterdir())
        assert not list((md / "new").iterdir())


def _resident_pages(path: Path) -> int:
    out = subprocess.run(["fincore", "--noheadings", "--raw", "--output", "PAGES", str(path)],
                         capture_output=True, text=True, check=True, timeout=30)
    return int(out.stdout.split()[0])


def test_fadvise_drops_every_file_of_the_tree(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    files = [tree / "a", tree / "sub" / "b"]
    for f in files:
        f.write_bytes(os.urandom(256 * 1024))
    os.sync()
    assert cache.warm_page_cache(tree) == 2 * 256 * 1024
    assert all(_resident_pages(f) > 0 for f in files)
    # as where /proc/sys/vm/drop_caches cannot be written
    monkeypatch.setattr(cache, "DROP_CACHES", tmp_path / "no-such-dir" / "drop_caches")
    assert cache.drop_page_cache(tree) == cache.DROPPED_FILES
    assert [_resident_pages(f) for f in files] == [0, 0]
    assert [f.stat().st_size for f in files] == [256 * 1024] * 2
