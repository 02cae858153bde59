"""bench.instructions drives real sessions: every command of its script is answered +OK,
and QUIT commits (RFC 1939 §6), so every retrieved message is marked seen in cur/.
The callgrind count itself is not run here (it takes minutes under valgrind)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.instructions import MESSAGES, maildir, sessions


async def test_sessions_retrieve_every_message(tmp_path: Path) -> None:
    maildir(tmp_path)
    md = tmp_path / "bench" / "Maildir"
    assert len(list((md / "new").iterdir())) == MESSAGES
    await sessions(tmp_path, 1)
    assert not list((md / "new").iterdir())
    seen = [p.name for p in (md / "cur").iterdir()]
    assert len(seen) == MESSAGES and all(name.endswith(":2,S") for name in seen)


async def test_a_failing_reply_stops_the_run(tmp_path: Path) -> None:
    maildir(tmp_path)
    (tmp_path / "users").write_text("bench:{PLAIN}other::::::\n")  # PASS is refused
    with pytest.raises(RuntimeError, match="session ended after 2 commands"):
        await sessions(tmp_path, 1)


async def test_message_count_and_size_are_options(tmp_path: Path) -> None:
    maildir(tmp_path, messages=2, kib=1024)
    md = tmp_path / "bench" / "Maildir"
    sizes = [p.stat().st_size for p in (md / "new").iterdir()]
    assert len(sizes) == 2 and all(900 * 1024 < size < 1200 * 1024 for size in sizes)
    await sessions(tmp_path, 1, messages=2)
    assert len(list((md / "cur").iterdir())) == 2
