"""`popbox fetch import-state` (popbox.client.import_state) with the UIDL files the real
fetchmail, getmail6 and mpop write when they fetch with `keep` from popbox's server: after
the import, `popbox fetch --keep` against the same server fetches none of the old mail
(RFC 1939 §7: a message keeps its UIDL) and the new mail as usual. Also: hostile and
foreign files are refused with a clear error and leave the state file as it was."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fetch_helpers import fetch_argv, fetch_env, maildir_files
from helpers import MailEnv, ServerProcess, server_process
from popbox.cli.fetch_import import main
from popbox.client import import_state

OLD = [b"Subject: old %d\n\nfetched by the other program\n" % i for i in range(3)]
NEW = b"Subject: new\n\narrived after the switch\n"
TOOL_TIMEOUT = 60


def require(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} is not installed: run scripts/install-peers"
    return path


@pytest.fixture
def server(env: MailEnv) -> Iterator[ServerProcess]:
    for message in OLD:
        env.put("alice", message)
    with server_process(env.config_file()) as proc:
        yield proc


def clean_env(home: Path) -> dict[str, str]:
    return {"HOME": str(home), "PATH": os.environ["PATH"]}


def run_fetchmail(home: Path, port: int) -> Path:
    """fetchmail with `keep` and `uidl`: it writes ~/.fetchids."""
    rc = home / "fetchmailrc"
    rc.write_text(f"set invisible\npoll 127.0.0.1 service {port} protocol pop3 uidl\n"
                  "  user \"alice\" password \"secret\" sslproto '' no rewrite\n"
                  "  mda \"cat >/dev/null\" keep\n")
    rc.chmod(0o600)
    result = subprocess.run([require("fetchmail"), "-f", str(rc), "--nodetach", "--nosyslog"],
                            capture_output=True, text=True, timeout=TOOL_TIMEOUT,
                            env=clean_env(home), check=False)
    assert result.returncode == 0, result.stderr
    return home / ".fetchids"


def run_mpop(home: Path, port: int) -> Path:
    """mpop with `keep on`: it writes its uidls file."""
    rc = home / "mpoprc"
    rc.write_text(f"account default\nhost 127.0.0.1\nport {port}\ntls off\nauth user\n"
                  f"user alice\npassword secret\nkeep on\ndelivery mbox {home}/mbox\n"
                  f"uidls_file {home}/mpop_uidls\n")
    rc.chmod(0o600)
    result = subprocess.run([require("mpop"), "-C", str(rc), "-q"], capture_output=True,
                            text=True, timeout=TOOL_TIMEOUT, env=clean_env(home), check=False)
    assert result.returncode == 0, result.stderr
    return home / "mpop_uidls"


def run_getmail(home: Path, port: int) -> Path:
    """getmail6 with `delete = false`: it writes oldmail-127.0.0.1-PORT-alice. As root it
    must deliver as another user (nobody) into a folder that user can reach."""
    base = Path(tempfile.mkdtemp(prefix="popbox-getmail-"))
    try:
        dest = base / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (dest / sub).mkdir(parents=True)
        deliver_as = ""
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            for path in (base, dest, *(dest / sub for sub in ("cur", "new", "tmp"))):
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
            deliver_as = "user = nobody\n"
        getmaildir = home / "getmail"
        getmaildir.mkdir()
        rc = getmaildir / "getmailrc"
        rc.write_text(f"[retriever]\ntype = SimplePOP3Retriever\nserver = 127.0.0.1\n"
                      f"port = {port}\nusername = alice\npassword = secret\n\n"
                      f"[destination]\ntype = Maildir\npath = {dest}/\n{deliver_as}\n"
                      "[options]\ndelete = false\nread_all = false\n")
        result = subprocess.run([require("getmail"), "--getmaildir", str(getmaildir),
                                 "--rcfile", str(rc)], capture_output=True, text=True,
                                timeout=TOOL_TIMEOUT, check=False)
        assert result.returncode == 0, result.stderr
        assert len(list((dest / "new").iterdir())) == len(OLD)
    finally:
        shutil.rmtree(base)
    return getmaildir / f"oldmail-127.0.0.1-{port}-alice"


RUNNERS = {"fetchmail": run_fetchmail, "mpop": run_mpop, "getmail": run_getmail}


@pytest.mark.parametrize("tool", sorted(RUNNERS))
def test_switching_fetches_nothing_old(tool: str, env: MailEnv, server: ServerProcess,
                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    """The real tool fetches the old mail (keeping it on the server); its UIDL file is
    imported; a message arrives; popbox fetch --keep delivers that one alone, and a run
    after it nothing. Importing twice records nothing new."""
    home = tmp_path / "home"
    home.mkdir()
    uidl_file = RUNNERS[tool](home, server.port)
    state = tmp_path / "state.json"
    argv = ["--from", tool, str(uidl_file), "--server", "127.0.0.1", "--port",
            str(server.port), "--user", "alice", "--state", str(state)]
    first = subprocess.run([sys.executable, "-m", "popbox", "fetch", "import-state", *argv],
                           capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)
    assert first.returncode == 0, first.stderr
    assert f"{len(OLD)} UIDLs recorded" in first.stdout
    [account] = json.loads(state.read_text())["accounts"]
    assert (account["server"], account["port"], account["user"]) == ("127.0.0.1",
                                                                      server.port, "alice")
    assert len(account["delivered"]) == len(OLD) == len(account["delivered_at"])
    assert main(argv) == 0
    assert "0 UIDLs recorded" in capsys.readouterr().out

    env.put("alice", NEW)
    maildir = tmp_path / "fetched"
    for expected in ([NEW], [NEW]):
        result = subprocess.run(fetch_argv(server.port, "--keep", "--maildir", str(maildir),
                                           "--tls", "none", state=state),
                                capture_output=True, text=True, env=fetch_env(),
                                timeout=TOOL_TIMEOUT, check=False)
        assert result.returncode == 0, result.stderr
        assert sorted(maildir_files(maildir).values()) == expected
    assert len(env.messages("alice")) == len(OLD) + 1


def test_parsers_take_only_the_account_asked_for() -> None:
    """Other accounts' lines are left out; a line that is not a UIDL is skipped, not
    guessed at; getmail's times are kept."""
    found = import_state.fetchmail(
        "alice@pop.example.org u1\nbob@pop.example.org u2\nalice@other.example u3\n"
        "alice@x@pop.example.org u4\nnonsense\nalice@pop.example.org \x01bad\n",
        "pop.example.org", "alice")
    assert found.uidls == {"u1": None}
    assert found.skipped == 2
    assert import_state.fetchmail("alice@x@pop.example.org u4\n", "pop.example.org",
                                  "alice@x").uidls == {"u4": None}
    found = import_state.mpop("# c\n 2 pop.example.org alice\nu1\nu2\n 1 other bob\nu3\n",
                              "pop.example.org", "alice")
    assert found.uidls == {"u1": None, "u2": None}
    assert found.accounts == {"alice@pop.example.org", "bob@other"}
    assert import_state.getmail("u1\x001700000000\nu2\x00soon\n").uidls == {"u1": 1.7e9}


def test_getmail_file_name_for_an_ipv6_server(tmp_path: Path) -> None:
    """getmail6 writes ":" in a server's name as "-": that file is the account's."""
    path = tmp_path / "oldmail---1-110-alice"
    path.write_bytes(b"u1\x001700000000\n")
    assert import_state.read("getmail", path, "::1", 110, "alice").uidls == {"u1": 1.7e9}


def test_bad_files_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file with no UIDL for the account, a torn mpop file, another account's getmail
    file, binary garbage, a missing file: exit 65 or 64 with a reason, and no state file
    written."""
    state = tmp_path / "state.json"
    cases = {
        "fetchids": ("fetchmail", b"bob@127.0.0.1 u1\n", "accounts in it: bob@127.0.0.1"),
        "mpop_uidls": ("mpop", b" 5 127.0.0.1 alice\nu1\n", "should list 5 UIDLs"),
        "oldmail-127.0.0.1-1-bob": ("getmail", b"u1\x001\n", "another account"),
        "garbage": ("fetchmail", b"\x00\xff" * 100, "NUL"),
    }
    for name, (tool, data, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        assert main(["--from", tool, str(path), "--server", "127.0.0.1", "--port", "110",
                     "--user", "alice", "--state", str(state)]) == 65
        assert reason in capsys.readouterr().err
    assert main(["--from", "mpop", str(tmp_path / "missing"), "--server", "127.0.0.1",
                 "--port", "110", "--user", "alice", "--state", str(state)]) == 65
    assert "cannot read" in capsys.readouterr().err
    assert main(["--from", "mpop", str(tmp_path / "x"), "--server", "h", "--user", "a"]) == 64
    assert "--port" in capsys.readouterr().err
    assert not state.exists()


def test_account_lookup(tmp_path: Path) -> None:
    """With an account finder, --account NAME stands for server, port, user and state."""
    path = tmp_path / ".fetchids"
    path.write_text("alice@pop.example.org u1\n")
    state = tmp_path / "s.json"
    accounts = {"work": ("pop.example.org", 995, "alice", state)}

    def find(name: str, config: Path | None) -> tuple[str, int, str, Path]:
        assert config is None
        return accounts[name]

    assert main(["--from", "fetchmail", str(path), "--account", "work"], find) == 0
    assert json.loads(state.read_text())["accounts"][0]["delivered"] == ["u1"]
    assert main(["--from", "fetchmail", str(path), "--account", "home"], find) == 64


def test_account_of_the_accounts_file(tmp_path: Path) -> None:
    """`popbox fetch import-state --account NAME --config FILE` takes the server, port,
    user and state file from that account of the accounts file."""
    fetchids = tmp_path / ".fetchids"
    fetchids.write_text("alice@pop.example.org u1\nalice@pop.example.org u2\n")
    config = tmp_path / "fetch.toml"
    config.write_text('[accounts.work]\nserver = "POP.example.org"\nport = 995\n'
                      'user = "alice"\npassword_file = "pw"\nmaildir = "Maildir"\n'
                      'state = "work.json"\n')
    config.chmod(0o600)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "popbox", "fetch", "import-state", "--from", "fetchmail",
             str(fetchids), "--config", str(config), *args],
            capture_output=True, text=True, timeout=60, check=False)

    done = run("--account", "work")
    assert done.returncode == 0, done.stderr
    [account] = json.loads((tmp_path / "work.json").read_text())["accounts"]
    assert (account["server"], account["port"], account["user"]) == ("pop.example.org", 995,
                                                                     "alice")
    assert sorted(account["delivered"]) == ["u1", "u2"]
    missing = run("--account", "home")
    assert missing.returncode == 64 and "no account named 'home'" in missing.stderr
