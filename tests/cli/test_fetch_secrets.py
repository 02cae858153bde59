"""Secrets in `popbox fetch`: the password from the keyring (`popbox fetch password set`,
through a backend `keyring` loads from $PYTHON_KEYRING_BACKEND in a temporary home), never
in any process's command line or environment nor in the output; an access token from
`--token-command` (argv, no shell); redacting reprs."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import keyring_file_backend
from fetch_helpers import FETCH_TIMEOUT, fetch_argv, maildir_files, relay
from helpers import MailEnv, running_server
from popbox.client.fetcher import Source
from popbox.client.oauth import OAuthTokens
from popbox.client.secret_store import SecretStore
from popbox.client.tokens import TokenCommand

TESTS = Path(__file__).parent.parent  # tests/, where the shared helpers are
PASSWORD = "kw-7f3e9a1c-unique"


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """The environment of a user whose keyring is a file in a temporary home; no
    POPBOX_FETCH_PASSWORD."""
    env = {k: v for k, v in os.environ.items() if k != "POPBOX_FETCH_PASSWORD"}
    env.update(HOME=str(tmp_path / "home"), XDG_STATE_HOME=str(tmp_path / "state"),
               PYTHON_KEYRING_BACKEND=keyring_file_backend.NAME,
               POPBOX_TEST_KEYRING=str(tmp_path / "keyring.json"),
               PYTHONPATH=os.pathsep.join([str(TESTS), *sys.path]))
    return env


async def run(argv: list[str], env: dict[str, str], stdin: bytes = b""
              ) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(stdin), FETCH_TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def family(pid: int) -> list[int]:
    """`pid` and every process descended from it."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found, todo = [pid], [pid]
    while todo:
        parent = todo.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found += children
        todo += children
    return found


async def test_password_from_the_keyring_is_never_shown(env: MailEnv, home: dict[str, str],
                                                        tmp_path: Path) -> None:
    env.add_user("bob", PASSWORD)
    env.put("bob", b"Subject: one\r\n\r\nbody\r\n")
    status, out, err = await run([sys.executable, "-m", "popbox", "fetch", "password", "set",
                                  "work"], home, stdin=PASSWORD.encode() + b"\n")
    assert status == 0, err
    assert PASSWORD not in out + err
    stored = json.loads(Path(home["POPBOX_TEST_KEYRING"]).read_text())
    assert stored == {"popbox/password:work": PASSWORD}
    maildir = tmp_path / "Mail"
    async with running_server(env.config()) as (port, _), \
            relay(port, trigger_retr=1) as (frozen, relay_port):
        argv = fetch_argv(relay_port, "--tls", "none", "--password-keyring", "work",
                          "--maildir", str(maildir), "-v", state=tmp_path / "fetch.json",
                          user="bob")
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=home)
        ended = asyncio.ensure_future(proc.wait())
        triggered = asyncio.ensure_future(frozen.triggered.wait())
        await asyncio.wait([ended, triggered], timeout=FETCH_TIMEOUT,
                           return_when=asyncio.FIRST_COMPLETED)
        ended.cancel()
        assert triggered.done(), (await proc.communicate())
        # Logged in (it asked for a message), so the password is in memory now.
        seen = 0
        for pid in family(proc.pid):
            for name in ("cmdline", "environ"):
                try:
                    data = Path(f"/proc/{pid}/{name}").read_bytes()
                except OSError:
                    continue
                seen += 1
                assert PASSWORD.encode() not in data, (pid, name)
        assert seen >= 2
        frozen.disarm()
        out_b, err_b = await asyncio.wait_for(proc.communicate(), FETCH_TIMEOUT)
        status, out, err = await run(argv, home)
    assert status == 0, err
    assert len(maildir_files(maildir)) == 1
    for text in (out_b.decode(), err_b.decode(), out, err):
        assert PASSWORD not in text
    status, _, err = await run(fetch_argv(port, "--tls", "none", "--password-keyring", "other",
                                          "--maildir", str(maildir),
                                          state=tmp_path / "f.json"), home)
    assert status == 64 and "popbox fetch password set other" in err


async def test_token_command(env: MailEnv, home: dict[str, str], tmp_path: Path) -> None:
    """`--token-command 'cat FILE'`: split as a shell would, run without one; a failing
    command is exit 77 and no login is tried."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "idp.pem"
    pem.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    env.settings["oauth"] = {"validator": "jwt", "issuer": "i", "audience": "pop",
                             "public_key_file": str(pem)}
    env.put("alice", b"Subject: one\r\n\r\nbody\r\n")
    token = jwt.encode({"iss": "i", "aud": "pop", "email": "alice", "exp": time.time() + 300},
                       key, "ES256")
    (tmp_path / "my token").write_text(token + "\n")
    maildir = tmp_path / "Mail"
    async with running_server(env.config()) as (port, _):
        status, out, err = await run(fetch_argv(
            port, "--tls", "none", "--token-command", f"cat '{tmp_path / 'my token'}'", "--maildir",
            str(maildir), "-v", state=tmp_path / "fetch.json"), home)
        assert status == 0, err
        assert len(maildir_files(maildir)) == 1
        assert token not in out + err
        for command, why in (("false; echo oops", "token_command false;: No such file"),
                             ("sh -c 'exit 3'", "token_command sh exited with status 3")):
            status, out, err = await run(fetch_argv(
                port, "--tls", "none", "--token-command", command, "--maildir", str(maildir),
                state=tmp_path / "fetch.json"), home)
            assert (status, why in err) == (77, True), err
        status, out, err = await run(fetch_argv(
            port, "--tls", "none", "--auth", "xoauth2", "--maildir", str(maildir),
            state=tmp_path / "fetch.json"), {**home, "POPBOX_FETCH_PASSWORD": "secret"})
        assert (status, "needs an access token" in err) == (64, True), err


def test_reprs_redact_secrets(tmp_path: Path) -> None:
    source = Source(server="s", port=110, user="alice", password=PASSWORD,
                    token=TokenCommand(["pass", "show", "token"]))
    assert PASSWORD not in repr(source)
    assert "TokenCommand(['pass', 'show', 'token'])" in repr(source)
    assert repr(OAuthTokens("work", SecretStore(tmp_path))) == "OAuthTokens('work')"
