"""`popbox user …` and `popbox pw`, through a parser built the way `popbox` builds its own."""

from __future__ import annotations

import argparse
import getpass
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from popbox.auth import schemes
from popbox.auth.passwd_file import list_users
from popbox.cli.user import add_commands

PASSWORD = "S3cret-Pässword"


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="popbox")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


@pytest.fixture
def stdin(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    feed = io.StringIO()
    monkeypatch.setattr(sys, "stdin", feed)
    yield feed


def give(feed: io.StringIO, text: str) -> None:
    feed.seek(0)
    feed.truncate()
    feed.write(text)
    feed.seek(0)


def stored(path: Path, name: str) -> str:
    for line in path.read_text().splitlines():
        if line.split(":")[0] == name:
            return line.split(":")[1]
    raise AssertionError(f"{name} not in {path}")


def test_add_passwd_list_del(
    tmp_path: Path, stdin: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "users")
    give(stdin, PASSWORD + "\n")
    assert (
        run("user", "add", "alice", "--file", path, "--password-stdin", "--scheme", "ssha512") == 0
    )
    assert stored(Path(path), "alice").startswith("{SSHA512}")
    assert schemes.verify(stored(Path(path), "alice"), PASSWORD.encode())

    give(stdin, "again\n")
    assert run("user", "add", "alice", "--file", path, "--password-stdin") == 1

    give(stdin, "other password\r\n")
    assert run("user", "passwd", "alice", "--file", path, "--password-stdin") == 0
    hashed = stored(Path(path), "alice")
    assert hashed.startswith("{ARGON2ID}$argon2id$")
    assert schemes.verify(hashed, b"other password")

    give(stdin, PASSWORD + "\n")
    assert (
        run(
            "user",
            "add",
            "Bob@Example.ORG",
            "--file",
            path,
            "--password-stdin",
            "--scheme",
            "PLAIN",
            "--mail",
            "maildir:/srv/bob",
            "--home",
            "/home/bob",
        )
        == 0
    )
    assert Path(path).read_text().splitlines()[1] == (
        f"Bob@example.org:{{PLAIN}}{PASSWORD}::::/home/bob::userdb_mail=maildir:/srv/bob"
    )

    capsys.readouterr()
    assert run("user", "list", "--file", path) == 0
    assert capsys.readouterr().out == "alice\nBob@example.org\n"

    assert run("user", "del", "alice", "--file", path) == 0
    assert run("user", "del", "alice", "--file", path) == 1
    assert list_users(path) == ["Bob@example.org"]
    out, err = capsys.readouterr()
    assert PASSWORD not in out + err


def test_passwd_for_an_unknown_user(tmp_path: Path, stdin: io.StringIO) -> None:
    path = str(tmp_path / "users")
    give(stdin, PASSWORD + "\n")
    assert run("user", "passwd", "ghost", "--file", path, "--password-stdin") == 1
    Path(path).write_text("alice:{PLAIN}x\n")
    assert run("user", "passwd", "ghost", "--file", path, "--password-stdin") == 1
    assert Path(path).read_text() == "alice:{PLAIN}x\n"


def test_prompts_twice_without_echo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "users")
    answers = iter([PASSWORD, PASSWORD, PASSWORD, "typo"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(answers))
    assert run("user", "add", "alice", "--file", path, "--scheme", "SHA512-CRYPT") == 0
    assert schemes.verify(stored(Path(path), "alice"), PASSWORD.encode())
    assert run("user", "add", "carol", "--file", path) == 1
    assert list_users(path) == ["alice"]
    out, err = capsys.readouterr()
    assert "do not match" in err
    assert PASSWORD not in out + err


@pytest.mark.parametrize("given", ["", "\n", "\r\n"])
def test_no_or_empty_password_is_refused(tmp_path: Path, stdin: io.StringIO, given: str) -> None:
    path = tmp_path / "users"
    give(stdin, given)
    assert run("user", "add", "alice", "--file", str(path), "--password-stdin") == 1
    assert not path.exists()


@pytest.mark.parametrize("name", ["../etc/passwd", "a:b", ".x", "a b", "a@b@c"])
def test_bad_names_are_usage_errors(tmp_path: Path, stdin: io.StringIO, name: str) -> None:
    path = tmp_path / "users"
    give(stdin, PASSWORD + "\n")
    assert run("user", "add", name, "--file", str(path), "--password-stdin") == 2
    assert run("user", "del", name, "--file", str(path)) == 2
    assert not path.exists()


def test_unknown_scheme_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run("user", "add", "alice", "--file", str(tmp_path / "u"), "--scheme", "ROT13")
    assert exit_info.value.code == 2


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("user", "list", "--file", str(tmp_path / "missing")) == 1
    assert run("user", "del", "alice", "--file", str(tmp_path / "missing")) == 1
    assert "cannot read" in capsys.readouterr().err


def test_pw(stdin: io.StringIO, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("pw", "-s", "sha512", "-p", PASSWORD) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("{SHA512}")
    assert schemes.verify(line, PASSWORD.encode())

    give(stdin, PASSWORD + "\n")  # not a terminal: one line is read
    assert run("pw", "--scheme", "CRAM-MD5") == 0
    line = capsys.readouterr().out.strip()
    assert schemes.verify(line, PASSWORD.encode())

    give(stdin, PASSWORD + "\n")
    assert run("pw", "--password-stdin") == 0
    assert capsys.readouterr().out.startswith("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$")

    assert run("pw", "-s", "BLF-CRYPT", "-p", "x" * 73) == 1
    assert "72" in capsys.readouterr().err
