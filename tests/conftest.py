from __future__ import annotations

from pathlib import Path

import pytest

from helpers import MailEnv


@pytest.fixture
def env(tmp_path: Path) -> MailEnv:
    mail = MailEnv(tmp_path)
    mail.add_user("alice")
    return mail
