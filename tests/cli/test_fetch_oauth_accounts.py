"""`popbox fetch` with an accounts file (child processes, real servers on 127.0.0.1) using
the login settings beyond a password: `popbox fetch oauth login NAME --config FILE` taking
the account's OAuth2 settings from the file (RFC 8628 device grant against a test
authorization server, then RFC 6749 §6 refresh) and the run logging in with OAUTHBEARER
(RFC 7628) to popbox's JWT validator; `token_command`; `password_keyring` after `popbox
fetch password set` (the `keyring` library with a file backend in a temporary home);
`tls_fingerprint` and `tls_min_version` against popbox's implicit TLS and STLS listeners
(RFC 8314 §3, RFC 2595 §4); `url` keys and a POP URL as the argument (RFC 2384 §3,
§4 for ;AUTH=); and the exit status of each failure (77 no access token, 78 a wrong pin,
74 an unusable keyring, 64 no password stored or a URL with a password)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

import keyring_file_backend
from agent_helpers import agent_env, popbox_account, start_agent, write_accounts
from fetch_helpers import FETCH_TIMEOUT, Result, maildir_files
from helpers import MailEnv, running_server, running_tls_server
from oauth_helpers import AuthServer, access_token, trust_jwts
from popbox.client.tls import fingerprint_of

TESTS = Path(__file__).parent.parent
MESSAGE = b"Subject: one\r\n\r\nbody\r\n"
OTHER_PIN = "sha256:" + ":".join(["AB"] * 32)


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """A user's environment whose keyring is a JSON file; no POPBOX_FETCH_PASSWORD."""
    env = {k: v for k, v in agent_env(tmp_path).items() if k != "POPBOX_FETCH_PASSWORD"}
    env.update(HOME=str(tmp_path / "home"), PYTHON_KEYRING_BACKEND=keyring_file_backend.NAME,
               POPBOX_TEST_KEYRING=str(tmp_path / "keyring.json"),
               PYTHONPATH=os.pathsep.join([str(TESTS), *sys.path]))
    return env


async def popbox(env: dict[str, str], *argv: str, stdin: bytes = b"") -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "popbox", "fetch", *argv, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(stdin), FETCH_TIMEOUT)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def runs(result: Result) -> dict[str, dict[str, Any]]:
    """The --json objects of a run, by account."""
    found = [json.loads(line) for line in result.out.splitlines()]
    return {run["account"]: run for run in found}


def status_of(run: dict[str, Any]) -> int:
    return 0 if run["error"] is None else int(run["error"]["status"])


@pytest.fixture
async def idp() -> AsyncIterator[AuthServer]:
    found = AuthServer()
    server = await asyncio.start_server(found.handle, "127.0.0.1", 0)
    found.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield found


async def test_oauth_login_from_the_accounts_file_then_fetch(
        env: MailEnv, idp: AuthServer, home: dict[str, str], tmp_path: Path) -> None:
    """`oauth login work --config FILE` runs the device grant with the file's client_id,
    endpoints and scope; `popbox fetch --config FILE` then refreshes with them and logs
    in with the access token (none on any output); a name the file lacks is 64."""
    key = trust_jwts(env, tmp_path)
    idp.issue = lambda: access_token(key, "alice")
    env.put("alice", MESSAGE)
    async with running_server(env.config()) as (port, _):
        config = write_accounts(tmp_path / "fetch.toml", {"work": {
            "server": "127.0.0.1", "port": port, "tls": "none", "user": "alice",
            "client_id": "popbox-test", "token_url": f"{idp.url}/token",
            "device_url": f"{idp.url}/device", "scope": "mail offline_access",
            "maildir": "Mail"}})
        login = await popbox(home, "oauth", "login", "work", "--config", str(config))
        assert login.status == 0, login.err
        assert "enter the code WDJB-MJHT" in login.err
        assert idp.requests[0] == ("/device", {"client_id": "popbox-test",
                                               "scope": "mail offline_access"})
        run = await popbox(home, "--config", str(config), "--json")
        missing = await popbox(home, "oauth", "login", "home", "--config", str(config))
    assert run.status == 0, run.out + run.err
    assert runs(run)["work"]["delivered"] == 1
    assert list(maildir_files(tmp_path / "Mail").values()) == [b"Subject: one\n\nbody\n"]
    assert [form["grant_type"] for _, form in idp.requests[1:]] == \
        [*["urn:ietf:params:oauth:grant-type:device_code"] * 2, "refresh_token"]
    assert idp.requests[-1][1]["refresh_token"] == "rt-1"
    for token in idp.tokens:
        assert token not in run.out + run.err + login.out + login.err
    assert (missing.status, f"{config}: no account home" in missing.err) == (64, True), \
        missing.err


async def test_token_command_and_keyring_accounts_and_their_failures(
        env: MailEnv, home: dict[str, str], tmp_path: Path) -> None:
    """One run of five accounts: `token_command` (argv, no shell) and `password_keyring`
    after `password set` fetch (`true`: the account's name; a string: that name); a
    failing token command is 77; a keyring holding nothing for the account is 64; the
    overall status is 64."""
    key = trust_jwts(env, tmp_path)
    env.add_user("bob", "kw-7f3e9a1c")
    env.put("alice", MESSAGE)
    env.put("bob", MESSAGE)
    (tmp_path / "token").write_text(access_token(key, "alice") + "\n")
    stored = await popbox(home, "password", "set", "bob", stdin=b"kw-7f3e9a1c\n")
    assert stored.status == 0, stored.err
    async with running_server(env.config()) as (port, _):
        def account(user: str, maildir: str, **keys: Any) -> dict[str, Any]:
            found = popbox_account(port, user, maildir=maildir, **keys)
            del found["password"]
            return found

        config = write_accounts(tmp_path / "fetch.toml", {
            "tok": account("alice", "A", token_command=["cat", str(tmp_path / "token")],
                           auth="oauthbearer"),
            "bob": account("bob", "B", password_keyring=True),
            "broken": account("alice", "C", token_command=["sh", "-c", "exit 3"],
                              state=str(tmp_path / "c.json")),
            "nothing": account("bob", "D", password_keyring=True,
                               state=str(tmp_path / "d.json")),
            "school": account("bob", "E", password_keyring="bob",
                              state=str(tmp_path / "e.json"), limit=0),
        }, max_parallel=1)  # bob's two accounts one after the other
        result = await popbox(home, "--config", str(config), "--json")
    found = runs(result)
    assert {name: status_of(run) for name, run in found.items()} == {
        "tok": 0, "bob": 0, "broken": 77, "nothing": 64, "school": 0}, result.out
    assert result.status == 64
    assert (found["tok"]["delivered"], found["bob"]["delivered"]) == (1, 1)
    assert found["broken"]["error"]["message"] == "token_command sh exited with status 3"
    assert "popbox fetch password set nothing" in found["nothing"]["error"]["message"]
    assert "kw-7f3e9a1c" not in result.out + result.err


async def test_an_unusable_keyring_is_74(env: MailEnv, home: dict[str, str],
                                         tmp_path: Path) -> None:
    """Without a keyring the password is in a 0600 file; one others may read is refused."""
    home = {**home, "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    stored = await popbox(home, "password", "set", "work", stdin=b"secret\n")
    assert stored.status == 0, stored.err
    secrets = Path(home["XDG_STATE_HOME"]) / "popbox" / "secrets.json"
    env.put("alice", MESSAGE)
    async with running_server(env.config()) as (port, _):
        keys = {**popbox_account(port, "alice", maildir="M", password_keyring=True)}
        del keys["password"]
        config = write_accounts(tmp_path / "fetch.toml", {"work": keys})
        good = await popbox(home, "--config", str(config), "--json")
        env.put("alice", MESSAGE)
        secrets.chmod(0o644)
        bad = await popbox(home, "--config", str(config), "--json")
    assert (good.status, runs(good)["work"]["delivered"]) == (0, 1), good.out
    assert bad.status == 74
    assert runs(bad)["work"]["error"]["message"] == \
        f"{secrets} may be read by others: chmod 600 it"


@pytest.fixture(scope="module")
def cert() -> trustme.LeafCert:
    return trustme.CA().issue_cert("127.0.0.1")


@pytest.fixture
def tls_env(env: MailEnv, cert: trustme.LeafCert, tmp_path: Path) -> Iterator[MailEnv]:
    chain, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    env.settings["tls"] = {"cert": str(chain), "key": str(key), "implicit": ["127.0.0.1:0"]}
    yield env


async def test_pins_urls_and_tls_min_version_from_the_file(
        tls_env: MailEnv, cert: trustme.LeafCert, home: dict[str, str],
        tmp_path: Path) -> None:
    """`url = "pops://..."` (implicit TLS) and `url = "pop://...;AUTH=PLAIN"` with `tls =
    "starttls"`, each with the certificate's pin (no CA trusts it) and tls_min_version:
    fetched; the wrong pin is 78 before any login; a URL with a password is 64."""
    pin = fingerprint_of(ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode()))
    tls_env.add_user("bob")
    tls_env.put("alice", MESSAGE)
    tls_env.put("bob", MESSAGE)
    async with running_tls_server(tls_env.config()) as (port, tls_port):
        config = write_accounts(tmp_path / "fetch.toml", {
            "implicit": {"url": f"pops://alice@127.0.0.1:{tls_port}", "password": "secret",
                         "tls_fingerprint": pin, "tls_min_version": "1.3", "maildir": "A"},
            "stls": {"url": f"pop://bob;AUTH=PLAIN@127.0.0.1:{port}", "tls": "starttls",
                     "password": "secret", "tls_fingerprint": pin, "tls_min_version": "1.2",
                     "maildir": "B"},
            "wrong": {"url": f"pops://alice@127.0.0.1:{tls_port}", "password": "secret",
                      "tls_fingerprint": OTHER_PIN, "maildir": "C", "keep": True,
                      "state": str(tmp_path / "c.json")},
        })
        result = await popbox(home, "--config", str(config), "--json")
        (tmp_path / "bad.toml").write_text(
            '[accounts.x]\nurl = "pop://alice:pw@127.0.0.1"\npassword_file = "p"\n'
            'maildir = "M"\n')
        bad = await popbox(home, "--config", str(tmp_path / "bad.toml"))
    found = runs(result)
    assert {name: status_of(run) for name, run in found.items()} == {
        "implicit": 0, "stls": 0, "wrong": 78}, result.out
    assert result.status == 78
    assert found["implicit"]["server"] == f"127.0.0.1:{tls_port}"
    assert found["stls"]["user"] == "bob" and found["stls"]["delivered"] == 1
    assert found["implicit"]["delivered"] == 1
    assert f"not the pinned one: it is {pin}" in found["wrong"]["error"]["message"]
    assert bad.status == 64
    assert bad.err.strip() == ("popbox fetch: bad.toml: accounts.x.url: a POP URL may not "
                               "hold a password (RFC 2384 §3)")


async def test_a_pop_url_argument_is_a_one_off_account(env: MailEnv, home: dict[str, str],
                                                       tmp_path: Path) -> None:
    """`popbox fetch 'pop://alice;AUTH=PLAIN@127.0.0.1:PORT' --tls none --maildir M`: the
    URL and the flags make one account (its password from the environment, then from
    `--password-command`, split as a shell would and run without one); with an account
    name too it is 64; a mechanism popbox does not know is 64."""
    env.put("alice", MESSAGE)
    password = {**home, "POPBOX_FETCH_PASSWORD": "secret"}
    async with running_server(env.config()) as (port, _):
        url = f"pop://alice;AUTH=PLAIN@127.0.0.1:{port}"
        one = await popbox(password, url, "--tls", "none", "--maildir", str(tmp_path / "M"),
                           "--state", str(tmp_path / "s.json"), "--json")
        env.put("alice", MESSAGE)
        (tmp_path / "pw").write_text("secret\n")
        command = await popbox(home, url, "--tls", "none", "--maildir", str(tmp_path / "M"),
                               "--state", str(tmp_path / "s.json"), "--password-command",
                               f"cat '{tmp_path / 'pw'}'")
        both = await popbox(password, url, "work", "--maildir", str(tmp_path / "M"))
        auth = await popbox(password, f"pop://alice;AUTH=GSSAPI@127.0.0.1:{port}", "--tls",
                            "none", "--maildir", str(tmp_path / "M"))
    assert one.status == 0, one.err
    assert runs(one)[f"alice@127.0.0.1:{port}"]["delivered"] == 1
    assert command.status == 0, command.err
    assert "1 new message(s)" in command.out
    assert list(maildir_files(tmp_path / "M").values()) == [b"Subject: one\n\nbody\n"] * 2
    assert (both.status, "a POP URL is one account" in both.err) == (64, True), both.err
    assert (auth.status, ";AUTH=GSSAPI: not a SASL mechanism" in auth.err) == (64, True), \
        auth.err


async def test_the_daemon_keeps_an_access_token_from_poll_to_poll(
        env: MailEnv, idp: AuthServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An access token that has not neared its expiry (RFC 6749 §5.1 expires_in) serves
    every poll: three polls, one refresh. Without a keyring the grant is in the 0600 file
    under the state folder."""
    key = trust_jwts(env, tmp_path)
    idp.issue = lambda: access_token(key, "alice")
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    secrets = tmp_path / "xdg-state" / "popbox" / "secrets.json"
    secrets.parent.mkdir(parents=True)
    settings = {"client_id": "popbox-test", "token_url": f"{idp.url}/token", "scope": "mail"}
    secrets.write_text(json.dumps({"oauth:work": json.dumps({**settings,
                                                            "refresh_token": "rt-1"})}))
    secrets.chmod(0o600)
    env.put("alice", MESSAGE)
    async with running_server(env.config()) as (port, _):
        keys = popbox_account(port, "alice", maildir="M", interval=0.2, oauth=True)
        del keys["password"]
        config = write_accounts(tmp_path / "fetch.toml", {"work": keys})
        proc = await start_agent(tmp_path, config, "--daemon", "--json")
        try:
            assert proc.stdout is not None
            polls = [json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
                     for _ in range(3)]
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert [(p["error"], p["delivered"]) for p in polls] == [(None, 1), (None, 0), (None, 0)]
    assert [form["grant_type"] for _, form in idp.requests] == ["refresh_token"]
