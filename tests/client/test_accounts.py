"""The accounts file of `popbox fetch` (TOML, RFC-less: the keys are popbox's own): every
class of bad key gives one line naming it, defaults merge into accounts, relative paths are
the file's, a password in a file others may read is refused, and `password_command` runs a
real program without a shell."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from popbox.cli import fetch
from popbox.client import accounts as ac
from popbox.client.destinations import LmtpTarget, MaildirTarget, MboxTarget, MdaTarget

GOOD = """
[defaults]
server = "pop.example.org"
tls = "starttls"
password_file = "secret"

[accounts.work]
user = "alice"
maildir = "Maildir"

[accounts.home]
server = "pop.example.net"
port = 995
tls = "implicit"
user = "bob"
mbox = "/var/mail/bob"
keep = true
interval = 0.5
"""


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "fetch.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_defaults_merge_and_paths_are_the_files(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    loaded = ac.load(write(tmp_path, GOOD))
    work, home = loaded.accounts["work"], loaded.accounts["home"]
    assert loaded.max_parallel == 4
    assert work.config.server == "pop.example.org" and work.server == "pop.example.org:110"
    assert work.tls == "starttls" and work.config.password_file == tmp_path / "secret"
    assert work.target == MaildirTarget(tmp_path / "Maildir")
    assert work.state == tmp_path / "xdg-state" / "popbox" / "fetch" / "work.json"
    assert work.config.interval == 300
    assert home.server == "pop.example.net:995" and home.tls == "implicit"
    assert home.target == MboxTarget(Path("/var/mail/bob"))
    assert home.config.keep and home.config.interval == 0.5
    assert ac.options(home).keep and not ac.options(work).keep


def test_other_destinations_and_state(tmp_path: Path) -> None:
    loaded = ac.load(write(tmp_path, """
max_parallel = 2
[accounts.a]
server = "h"
user = "u"
password = "hunter2"
mda = ["procmail", "-d", "%u"]
state = "st/a.json"
[accounts.b]
server = "h"
user = "u"
password_command = ["pass", "mail"]
lmtp = "127.0.0.1:24"
recipient = "alice@example.org"
keep_days = 7
max_size = 1000000
oversize = "headers"
"""))
    a, b = loaded.accounts["a"], loaded.accounts["b"]
    assert loaded.max_parallel == 2
    assert a.target == MdaTarget(("procmail", "-d", "%u")) and a.state == tmp_path / "st/a.json"
    assert b.target == LmtpTarget("127.0.0.1:24", "alice@example.org")
    assert (b.config.keep_days, b.config.max_size, b.config.oversize) == (7, 1000000,
                                                                           "headers")
    assert a.config.password == "hunter2" and "hunter2" not in repr(a.config)


@pytest.mark.parametrize(("text", "line"), [
    ('[accounts.work]\nserver = "h"\nuser = "u"\nmaildir = "M"\nprot = 110\n',
     "fetch.toml: accounts.work.prot: Extra inputs are not permitted"),
    ('[defaults]\nsevrer = "h"\n', "fetch.toml: defaults.sevrer: Extra inputs are not"),
    ('[acounts.work]\nserver = "h"\n', "fetch.toml: acounts: Extra inputs are not permitted"),
    ('[accounts.work]\nuser = "u"\nmaildir = "M"\n', "fetch.toml: accounts.work.server: "
     "Field required"),
    ('[accounts.work]\nserver = "h"\nuser = "u"\nmaildir = "M"\nmbox = "m"\n',
     "fetch.toml: accounts.work: exactly one destination (maildir, mbox, mda, lmtp, smtp) "
     "is needed, found maildir and mbox"),
    ('[accounts.work]\nserver = "h"\nuser = "u"\n', "found none"),
    ('[accounts.work]\nserver = "h"\nuser = "u"\nmaildir = "M"\nport = "110"\n',
     "fetch.toml: accounts.work.port: Input should be a valid integer"),
    ('[accounts.work]\nserver = "h"\nuser = "u"\nmaildir = "M"\nport = 70000\n',
     "fetch.toml: accounts.work.port: Input should be less than 65536"),
    ('[accounts.work]\nserver = "h"\nuser = "u"\nmaildir = "M"\nkeep = "yes"\n',
     "fetch.toml: accounts.work.keep: Input should be a valid boolean"),
    ('[accounts.work]\nserver = "h"\nuser = "u"\nmaildir = "M"\ntls = "ssl"\n',
     "fetch.toml: accounts.work.tls: Input should be 'implicit', 'starttls' or 'none'"),
    ('[accounts.work]\nserver = "h"\nuser = "u"\nmaildir = "M"\ninterval = 0\n',
     "fetch.toml: accounts.work.interval: Input should be greater than 0"),
    ('[accounts.work]\nserver = "h"\nuser = "u"\nmaildir = "M"\npassword_command = "pass x"\n',
     "fetch.toml: accounts.work.password_command: Input should be a valid list"),
    ('[accounts.work]\nserver = "h"\nuser = "u"\nmaildir = "M"\npassword_file = "f"\n'
     'password_command = ["x"]\n', "password_file and password_command: at most one"),
    ('[accounts.work]\nserver = "h"\nuser = "u"\nmaildir = "M"\nrecipient = "a@b"\n',
     "recipient needs lmtp or smtp"),
    ('[accounts.work]\nserver = "h"\nuser = "u"\nmaildir = "M"\nkeep = true\nkeep_days = 1\n',
     "keep and keep_days exclude each other"),
    ('[accounts.work]\nserver = "h"\nuser = "u"\nmaildir = "M"\noversize = "skip"\n',
     "oversize needs max_size"),
    ('[accounts.work]\nserver = "h"\nuser = "u"\nmaildir = "M"\nmax_parallel = 2\n',
     "accounts.work.max_parallel: Extra inputs"),
    ("max_parallel = 0\n", "fetch.toml: max_parallel: Input should be greater than or equal"),
    ('[accounts.work\nserver = "h"\n', "fetch.toml: not valid TOML"),
])
def test_each_bad_key_is_one_line_and_64(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         text: str, line: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ac.AccountsError, match=None) as caught:
        ac.load(path)
    assert str(caught.value).count("\n") == 0 and line in str(caught.value), caught.value
    assert fetch.main(["--config", str(path)]) == 64
    out, err = capsys.readouterr()
    assert out == "" and err == f"popbox fetch: {caught.value}\n"


def test_every_bad_account_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, '[defaults]\nuser = "u"\nmaildir = "M"\n'
                           '[accounts.a]\nport = 0\n[accounts.b]\nserver = 1\n')
    with pytest.raises(ac.AccountsError) as caught:
        ac.load(path)
    assert str(caught.value).splitlines() == [
        "fetch.toml: accounts.a.server: Field required",
        "fetch.toml: accounts.a.port: Input should be greater than 0",
        "fetch.toml: accounts.b.server: Input should be a valid string",
    ]


def test_a_password_others_may_read_is_refused(tmp_path: Path) -> None:
    """A literal password in a file with group or other bits: refused; a password_file or
    a password_command in such a file is no secret and is accepted."""
    account = '[accounts.a]\nserver = "h"\nuser = "u"\nmaildir = "M"\n'
    for mode in (0o640, 0o604):
        with pytest.raises(ac.AccountsError, match=r"holds a password but others may read"):
            ac.load(write(tmp_path, account + 'password = "p"\n', mode))
    with pytest.raises(ac.AccountsError, match=r"holds a password"):
        ac.load(write(tmp_path, '[defaults]\npassword = "p"\n' + account, 0o644))
    assert ac.load(write(tmp_path, account + 'password = "p"\n', 0o600)).accounts
    assert ac.load(write(tmp_path, account + 'password_file = "f"\n', 0o644)).accounts


def test_unknown_account_name_and_missing_file(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD)
    assert fetch.main(["--config", str(path), "work", "nope"]) == 64
    assert capsys.readouterr().err == "popbox fetch: no such account: nope\n"
    assert fetch.main(["--config", str(tmp_path / "none.toml")]) == 64
    assert "none.toml: cannot read: No such file or directory" in capsys.readouterr().err
    assert fetch.main(["--config", str(path), "work", "--server", "h"]) == 64
    assert "exclude each other" in capsys.readouterr().err


def test_one_off_flags_are_checked_like_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert fetch.main(["--server", "h", "--user", "u"]) == 64
    assert "exactly one destination" in capsys.readouterr().err
    assert fetch.main(["--server", "h", "--maildir", "M"]) == 64
    assert capsys.readouterr().err == "popbox fetch: --user: Field required\n"
    assert fetch.main(["--server", "h", "--user", "u", "--mbox", "m", "--port", "0"]) == 64
    assert "--port: Input should be greater than 0" in capsys.readouterr().err
    assert fetch.main(["--server", "h", "--user", "u", "--mbox", "m",
                       "--oversize", "skip"]) == 64
    assert "oversize needs max_size" in capsys.readouterr().err
    account = ac.one_off({"server": "h", "user": "u", "mda": ["/bin/x", "-d", "%u"],
                          "keep_days": 2.5}, Path("/s.json"))
    assert account.target == MdaTarget(("/bin/x", "-d", "%u")) and account.name is None
    assert account.state == Path("/s.json") and account.label == "u@h:995"


def account_with(tmp_path: Path, command: list[str], timeout: float = 10) -> ac.Account:
    return ac.one_off({"server": "h", "user": "u", "maildir": tmp_path,
                       "password_command": command, "timeout": timeout}, tmp_path / "s")


async def test_password_command_first_line_no_shell(tmp_path: Path) -> None:
    """argv is run as is: `$(...)` and `;` reach the program untouched."""
    script = "import sys; print(sys.argv[1]); print('second line')"
    account = account_with(tmp_path, [sys.executable, "-c", script, "p$(id);x"])
    assert await ac.password(account) == "p$(id);x"


async def test_password_command_failures(tmp_path: Path) -> None:
    fails = [sys.executable, "-c", "import sys; sys.stderr.write('locked\\n'); sys.exit(3)"]
    with pytest.raises(ac.PasswordCommandFailed, match=r"exited with status 3: locked$"):
        await ac.password(account_with(tmp_path, fails))
    hangs = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(ac.PasswordCommandFailed, match=r"no password within 0.3 s"):
        await ac.password(account_with(tmp_path, hangs, timeout=0.3))
    silent = [sys.executable, "-c", "pass"]
    with pytest.raises(ac.PasswordError, match=r"printed no password"):
        await ac.password(account_with(tmp_path, silent))
    with pytest.raises(ac.PasswordError, match=r"password_command /no/such: No such file"):
        await ac.password(account_with(tmp_path, ["/no/such"]))
