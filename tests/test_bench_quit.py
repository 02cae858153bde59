"""bench.quit drives real sessions against a real `popbox serve` on 127.0.0.1: each RETRs
every message and then QUITs (RFC 1939 §6); the server is stopped afterwards."""

from __future__ import annotations

import re

import pytest
from bench.quit import main


@pytest.mark.parametrize("unseen", [False, True])
def test_quit_is_timed_over_real_sessions(capsys: pytest.CaptureFixture[str],
                                          unseen: bool) -> None:
    assert main(["--messages", "5", "--sessions", "2", *(["--unseen"] if unseen else [])]) == 0
    out = capsys.readouterr().out
    state = "unseen, in new/" if unseen else "seen, in cur/ with S"
    match = re.fullmatch(rf"QUIT after RETR of 5 messages \({re.escape(state)}\), 2 sessions: "
                         r"p50 (\S+) ms, min (\S+) ms, max (\S+) ms\n", out)
    assert match is not None, out
    p50, low, high = map(float, match.groups())
    assert 0 < low <= p50 <= high
