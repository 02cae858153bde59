"""Fixtures for every test, and the rule that a skipped test is a failure: scripts/test
(and so CI) installs every peer the tests need and runs as root, so a skip there would
hide a test that proves nothing. POPBOX_TEST_ALLOW_SKIPS=1 lets a test skip where a
peer is missing (a developer's machine without Dovecot, say)."""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

from helpers import MailEnv

ALLOW_SKIPS = os.environ.get("POPBOX_TEST_ALLOW_SKIPS") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not ALLOW_SKIPS and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (f"skipped, and skips are failures here (POPBOX_TEST_ALLOW_SKIPS=1 "
                           f"allows them): {report.longrepr}")


@pytest.fixture
def env(tmp_path: Path) -> MailEnv:
    mail = MailEnv(tmp_path)
    mail.add_user("alice")
    return mail
