"""The benchmark harness end to end, in its tiny `--quick --smoke` mode: popbox (Maildir),
popbox (PostgreSQL) and a private Dovecot (both modes) on 127.0.0.1, every figure
measured once on a few messages.

Nothing here asserts speed. What is asserted: the run succeeds, every reply the load
generator checked was right, and RESULTS.md has every figure row with a number for each
server that measures it ("—" for the others: popbox (PostgreSQL) runs the {PLAIN} logins
only and no idle TLS sessions, and only it has "PostgreSQL CPU" rows), and both ratio
columns. Dovecot and
PostgreSQL (bench.pg: $POPBOX_BENCH_PG_DSN, else 127.0.0.1:5432) are required peers: if
they cannot run, this test fails rather than skips. The bench database is dropped.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

REPO = Path(__file__).resolve().parents[2]
NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?$")
SERVERS = ["popbox", "popbox (PostgreSQL)", "Dovecot default", "Dovecot high-performance"]
RATIOS = ["popbox / best Dovecot", "popbox (PostgreSQL) / best Dovecot"]


# the PostgreSQL server the harness uses (bench/pg.py)
PG_DSN = os.environ.get("POPBOX_BENCH_PG_DSN") or "postgresql://postgres@127.0.0.1:5432/test"


async def _bench_databases() -> set[str]:
    conn = await asyncpg.connect(PG_DSN, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'popbox\\_bench\\_%'")
        return {r["datname"] for r in rows}
    finally:
        await conn.close()


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
    _interleaved(data["schedule"])
    quit_runs = [server for unit, _rep, server in data["schedule"] if unit == "quit.dele"]
    assert quit_runs == ["popbox", "dovecot-hp"]

    table = (out / "RESULTS.md").read_text()
    lines = [[c.strip() for c in line.strip().strip("|").split("|")]
             for line in table.splitlines() if line.startswith("|")]
    header = lines[0]
    assert header == ["Figure", "", *SERVERS, *RATIOS], header
    rows = {cells[0]: dict(zip(header[2:], cells[2:], strict=True))
            for cells in lines[2:] if cells[1] in ("↑", "↓")}
    labels = data["servers"]
    assert list(labels.values()) == SERVERS
    # 16 login, 12 RETR, 3 QUIT, 2 mixed, 4 UIDL, 2 UIDL from disk, 3 idle, 3 idle TLS,
    # 2 large message; and PostgreSQL's CPU: 3 login ({PLAIN}), 4 RETR, 1 mixed, 2 UIDL
    assert len(data["figures"]) == 47 + 10
    pg_rows = 0
    for figure in data["figures"]:
        title = f"{figure['title']} ({figure['unit']})"
        assert title in rows, f"no row for {title!r}"
        cells = rows[title]
        for name, label in labels.items():
            if name in figure["measured_by"]:
                assert NUMBER.match(cells[label]), f"{title}: {label}: {cells[label]!r}"
            else:
                assert cells[label] == "—", f"{title}: {label}: {cells[label]!r}"
        pg_rows += cells["popbox (PostgreSQL)"] != "—"
        for column in RATIOS:
            ratio = cells[column]
            assert ratio in ("n/a", "—") or NUMBER.match(ratio.removesuffix("x")), (
                title, column, ratio)
        if figure["key"].endswith(".db"):  # PostgreSQL's own CPU: only its column
            assert figure["measured_by"] == ["popbox-pg"], figure
    # every figure but the {SHA512-CRYPT} (6) and STLS (4) logins, the idle TLS
    # sessions (3), the QUIT figures that need the maildrop put back (2) and the first
    # login from disk (2)
    assert pg_rows == len(data["figures"]) - 17
    tls = [f for f in data["figures"] if f["key"].startswith("idle.tls.")]
    assert [f["measured_by"] for f in tls] == [["popbox", "dovecot", "dovecot-hp"]] * 3
    assert data["setup_seconds"]["popbox-pg"]["import"] > 0
    for fact in ("nproc:", "CPU:", "kernel:", "Python:", "Dovecot: 2.", "PostgreSQL: 1",
                 "python -m bench.run"):
        assert fact in table
    used = re.findall(r"popbox_bench_[0-9a-f]{12}", " ".join(data["notes"]))
    assert used
    assert not set(used) & asyncio.run(_bench_databases())  # its database is gone

    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _interleaved(schedule: list[list[object]]) -> None:
    """Each figure is measured for all its servers one right after the other: between
    two runs of one unit there is no run of another."""
    units = [str(unit) for unit, _rep, _server in schedule]
    seen: set[str] = set()
    for i, unit in enumerate(units):
        if unit in seen and units[i - 1] != unit:
            raise AssertionError(f"{unit} measured again after {units[i - 1]}")
        seen.add(unit)
