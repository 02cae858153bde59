"""The benchmark harness end to end, in its tiny `--quick --smoke` mode: popbox and a
private Dovecot (both modes) on 127.0.0.1, every figure measured once on a few messages.

Nothing here asserts speed. What is asserted: the run succeeds, every reply the load
generator checked was right, and RESULTS.md has every figure row with a number for each
server. Dovecot is a required peer (scripts/install-peers installs it): if it cannot
run, this test fails rather than skips.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?$")


@pytest.mark.timeout(600)
def test_bench_smoke_run_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--smoke", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    data = json.loads((out / "results.json").read_text())
    assert data["preset"] == "smoke"
    assert data["errors"] == {}, data["errors"]

    table = (out / "RESULTS.md").read_text()
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[1] in ("↑", "↓"):
            rows[cells[0]] = cells[2:]
    assert len(data["figures"]) >= 37  # 16 login, 12 RETR, 4 UIDL, 3 idle, 2 large message
    for figure in data["figures"]:
        title = f"{figure['title']} ({figure['unit']})"
        assert title in rows, f"no row for {title!r}"
        *servers, ratio = rows[title]
        for value in servers:
            assert NUMBER.match(value), f"{title}: {value!r} is not a number"
        assert ratio == "n/a" or NUMBER.match(ratio.removesuffix("x")), (title, ratio)
    for header in ("popbox", "Dovecot default", "Dovecot high-performance"):
        assert header in table
    for fact in ("nproc:", "CPU:", "kernel:", "Python:", "Dovecot: 2.", "python -m bench.run"):
        assert fact in table

    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
