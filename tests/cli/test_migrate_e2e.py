"""Switching from the private Dovecot 2.3 of dovecot_peer.py: `popbox migrate dovecot`
on the configuration it runs with, `popbox check-config` on the result, `popbox uidl
audit` against the running Dovecot, and popbox serving the same Maildirs side by side
with it: the same users log in (and a wrong password fails on both), and every user
sees the same UIDLs (RFC 1939 §7) from both servers, also for mail delivered after the
first listing."""

from __future__ import annotations

import os
import poplib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from dovecot_peer import Dovecot, running_dovecot, unavailable
from helpers import server_process

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))

MESSAGES = [b"Subject: one\n\nfirst\n", b"Subject: two\n\n.dotted\nsecond\n",
            b"Subject: three\n\n" + b"x" * 5000 + b"\n"]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def dovecot(ca: trustme.CA) -> Iterator[Dovecot]:
    with running_dovecot(ca) as server:
        yield server


def popbox(*argv: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if password is not None:
        env["POPBOX_FETCH_PASSWORD"] = password
    return subprocess.run([sys.executable, "-m", "popbox", *argv], capture_output=True,
                          text=True, timeout=60, env=env, check=False)


def uidls(port: int, user: str, password: str = "secret") -> list[bytes]:
    pop = poplib.POP3("127.0.0.1", port, timeout=20)
    try:
        pop.user(user)
        pop.pass_(password)
        return [line.split()[1] for line in pop.uidl()[1]]
    finally:
        pop.quit()


@pytest.fixture(scope="module")
def converted(dovecot: Dovecot, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("popbox") / "popbox.toml"
    result = popbox("migrate", "dovecot", str(dovecot.root), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    for line in result.stderr.splitlines():
        assert line.startswith(f"{dovecot.root}/dovecot.conf"), line
    return out


def test_generated_file_passes_check_config(converted: Path) -> None:
    result = popbox("check-config", "--config", str(converted))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{converted}: OK\n"


def test_uidl_audit_and_side_by_side(dovecot: Dovecot, converted: Path, ca: trustme.CA,
                                     tmp_path: Path) -> None:
    users = [dovecot.add_user(), dovecot.add_user()]
    for user in users:
        for message in MESSAGES:
            dovecot.put(user, message)
    for user in users:
        result = popbox("uidl", "audit", "--config", str(converted), "--compare",
                        f"127.0.0.1:{dovecot.port}", "--user", user, "--tls", "none",
                        password="secret")
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"same: {len(MESSAGES)}\nonly popbox: 0\nonly old: 0\n" in result.stdout
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    result = popbox("uidl", "audit", "--config", str(converted), "--compare",
                    f"127.0.0.1:{dovecot.tls_port}", "--user", users[0], "--tls", "implicit",
                    "--cafile", str(cafile), password="secret")
    assert result.returncode == 0, result.stdout + result.stderr
    # popbox on other ports of the same machine, on the same Maildirs
    text = converted.read_text()
    text = re.sub(r"(?m)^listen = .*$", 'listen = ["127.0.0.1:0"]', text)
    text = re.sub(r"(?m)^implicit = .*$", 'implicit = ["127.0.0.1:0"]', text)
    config = tmp_path / "side-by-side.toml"
    config.write_text(text)
    dovecot.put(users[0], b"Subject: later\n\ndelivered after the audit\n")
    with server_process(config) as server:
        for user in users:
            old = uidls(dovecot.port, user)  # Dovecot first: it numbers new mail
            assert len(old) == len(MESSAGES) + (user == users[0])
            assert uidls(server.port, user) == old
        for port in (dovecot.port, server.port):
            with pytest.raises(poplib.error_proto):
                uidls(port, users[1], "wrong")


def test_uidl_audit_tells_a_difference(dovecot: Dovecot, converted: Path,
                                       tmp_path: Path) -> None:
    """Without uidl_import popbox lists the Maildir names: every UIDL differs."""
    user = dovecot.add_user()
    for message in MESSAGES:
        dovecot.put(user, message)
    config = tmp_path / "no-import.toml"
    config.write_text(converted.read_text().replace('uidl_import = "dovecot"', ""))
    audit = ["uidl", "audit", "--config", str(config), "--compare",
             f"127.0.0.1:{dovecot.port}", "--user", user, "--tls", "none"]
    result = popbox(*audit, password="secret")
    assert result.returncode == 1, result.stdout + result.stderr
    count = len(MESSAGES)
    assert f"same: 0\nonly popbox: {count}\n" in result.stdout
    assert f"only old: {count}\n" in result.stdout
    names = sorted(p.name.partition(":")[0] for p in (dovecot.maildir(user) / "cur").iterdir())
    assert f"  only popbox: {names[0]}\n" in result.stdout
    result = popbox(*audit, password="wrong")
    assert result.returncode == 2
    assert "popbox: 127.0.0.1:" in result.stderr
    result = popbox(*audit)
    assert result.returncode == 2 and "no password" in result.stderr


def test_uidl_audit_checks_the_password_and_the_user(dovecot: Dovecot, converted: Path,
                                                     tmp_path: Path) -> None:
    user = dovecot.add_user()
    dovecot.put(user, MESSAGES[0])
    users = dovecot.root / "other-users"  # readable by server.user, as the audit reads it
    users.write_text(f"{user}:{{PLAIN}}not-the-same::::::\n")
    users.chmod(0o644)
    config = tmp_path / "other-passwords.toml"
    config.write_text(re.sub(r"(?m)^passwd_file = .*$", f'passwd_file = "{users}"',
                             converted.read_text()))
    audit = ["uidl", "audit", "--config", str(config), "--compare",
             f"127.0.0.1:{dovecot.port}", "--tls", "none"]
    result = popbox(*audit, "--user", user, password="secret")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "same: 1\n" in result.stdout
    assert f"popbox does not accept the password 127.0.0.1:{dovecot.port} accepted" in \
        result.stdout
    other = dovecot.add_user()  # known to Dovecot, not to this users file
    result = popbox(*audit, "--user", other, password="secret")
    assert result.returncode == 2
    assert f"popbox's user database does not know {other}" in result.stderr
