"""contrib/systemd/popbox-fetch.service is a unit systemd accepts without a warning
(`systemd-analyze verify`, pointed at this installation's popbox), that runs the daemon,
reloads with SIGHUP and gives it more than its 10 s to stop."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[2] / "contrib" / "systemd" / "popbox-fetch.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_user_unit_verifies(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert "ExecStart=%h/.local/bin/popbox fetch --daemon\n" in text
    assert "ExecReload=kill -HUP $MAINPID\n" in text and "TimeoutStopSec=15\n" in text
    popbox = Path(sys.executable).with_name("popbox")
    assert popbox.exists()
    unit = tmp_path / "popbox-fetch.service"
    unit.write_text(text.replace("%h/.local/bin/popbox", str(popbox)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    broken = tmp_path / "broken.service"
    broken.write_text(text.replace("%h/.local/bin/popbox", str(tmp_path / "none")))
    result = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode != 0 and "is not executable" in result.stderr
