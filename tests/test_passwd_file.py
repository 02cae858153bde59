"""The passwd-file database and its editing functions, on real files in a temp directory."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from popbox.auth import schemes
from popbox.auth.base import Secret, UserInfo, Verdict
from popbox.auth.passwd_file import (
    Edit,
    PasswdFile,
    add_user,
    delete_user,
    list_users,
    set_password,
)

FAST = schemes.Cost(argon2_time=1, argon2_memory_kib=8, bcrypt_rounds=4, crypt_rounds=1000)
ALICE = schemes.make(b"alice-pw", "ARGON2ID", cost=FAST)
BOB = schemes.make(b"bob-pw", "BLF-CRYPT", cost=FAST)
CUSTOM = schemes.make(b"custom-pw", "SHA512-CRYPT", cost=FAST)
TEMPLATE = "maildir:/var/mail/{user}"
USERS = f"""# users of example.org
alice:{ALICE}:1000:1001:Alice A.:/home/alice::userdb_quota_rule=*:storage=1G

Bob@Example.ORG:{BOB}
plain:{{PLAIN}}plain-pw
open::::::: nopassword
locked:{{PLAIN}}locked-pw:::::: nologin
custom:{CUSTOM}::::/srv/custom::userdb_mail=maildir:~/Other userdb_home=/srv/home2
"""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(USERS)
    return path


@pytest.fixture
def db(users: Path) -> PasswdFile:
    return PasswdFile(users, TEMPLATE)


# --- PassDB ------------------------------------------------------------------------------


async def test_right_and_wrong_password(db: PasswdFile) -> None:
    assert await db.verify("alice", Secret(b"alice-pw")) is Verdict.OK
    assert await db.verify("alice", Secret(b"alice-PW")) is Verdict.REJECTED
    assert await db.verify("alice", Secret(b"")) is Verdict.REJECTED
    assert await db.verify("custom", Secret(b"custom-pw")) is Verdict.OK


async def test_unknown_user_is_rejected_like_a_wrong_password(db: PasswdFile) -> None:
    wrong = await db.verify("alice", Secret(b"nope"))
    unknown = await db.verify("nobody", Secret(b"nope"))
    assert wrong is unknown is Verdict.REJECTED


@pytest.mark.parametrize("name", ["../alice", "alice/..", "", "alice\x00", ".alice", "a b"])
async def test_unsafe_names_are_rejected(db: PasswdFile, name: str) -> None:
    assert await db.verify(name, Secret(b"alice-pw")) is Verdict.REJECTED
    assert await db.plaintext(name) is None
    assert await db.lookup(name) is None


async def test_domain_is_case_insensitive_local_part_is_not(db: PasswdFile) -> None:
    for name in ("Bob@example.org", "Bob@EXAMPLE.ORG", "Bob@Example.ORG"):
        assert await db.verify(name, Secret(b"bob-pw")) is Verdict.OK
    assert await db.verify("bob@example.org", Secret(b"bob-pw")) is Verdict.REJECTED
    assert await db.verify("ALICE", Secret(b"alice-pw")) is Verdict.REJECTED


async def test_nopassword_and_nologin(db: PasswdFile) -> None:
    assert await db.verify("open", Secret(b"anything")) is Verdict.OK
    assert await db.verify("locked", Secret(b"locked-pw")) is Verdict.REJECTED
    assert await db.plaintext("locked") is None


async def test_plaintext_only_for_plaintext_schemes(db: PasswdFile) -> None:
    assert await db.plaintext("plain") == Secret(b"plain-pw")
    assert await db.plaintext("alice") is None
    assert await db.plaintext("nobody") is None


async def test_default_scheme_for_values_without_prefix(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("old:$1$J50xyhOF$NSVGpZDkuqNnmVL3FVlar1\n")
    assert await PasswdFile(path, TEMPLATE).verify("old", Secret(b"secret")) is Verdict.OK
    path.write_text("old:secret\n")
    plain_db = PasswdFile(path, TEMPLATE, default_scheme="PLAIN")
    assert await plain_db.verify("old", Secret(b"secret")) is Verdict.OK
    assert await plain_db.plaintext("old") == Secret(b"secret")


# --- UserDB ------------------------------------------------------------------------------


async def test_lookup(db: PasswdFile) -> None:
    alice = await db.lookup("alice")
    assert alice == UserInfo(
        "alice",
        "maildir:/var/mail/alice",
        1000,
        1001,
        {"quota_rule": "*:storage=1G", "home": "/home/alice"},
    )
    bob = await db.lookup("Bob@EXAMPLE.org")
    assert isinstance(bob, UserInfo)
    assert (bob.name, bob.mail_location, bob.uid, bob.gid) == (
        "Bob@example.org",
        "maildir:/var/mail/Bob@example.org",
        None,
        None,
    )
    assert await db.lookup("nobody") is None


async def test_lookup_userdb_fields_override(db: PasswdFile) -> None:
    custom = await db.lookup("custom")
    assert isinstance(custom, UserInfo)
    assert custom.mail_location == "maildir:/srv/home2/Other"
    assert custom.extra["home"] == "/srv/home2"


async def test_lookup_template_with_home_and_domain(users: Path) -> None:
    by_home = PasswdFile(users, "maildir:~/Maildir")
    found = await by_home.lookup("alice")
    assert isinstance(found, UserInfo)
    assert found.mail_location == "maildir:/home/alice/Maildir"
    assert await by_home.lookup("plain") is None  # no home directory
    by_domain = PasswdFile(users, "/var/vmail/{domain}/{local}")
    found = await by_domain.lookup("Bob@example.ORG")
    assert isinstance(found, UserInfo)
    assert found.mail_location == "/var/vmail/example.org/Bob"
    assert await by_domain.lookup("alice") is None  # no domain


# --- malformed lines, missing files ------------------------------------------------------

BROKEN = """# a comment
good:{PLAIN}good-pw
no-password-field
../evil:{PLAIN}x
baduid:{PLAIN}x:abc
good:{PLAIN}second
relative:{PLAIN}x::::home/relative
   # an indented comment
strange:{NOPE}x
"""


async def test_malformed_lines_are_skipped_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(BROKEN)
    db = PasswdFile(path, "/var/vmail/{domain}/{local}")
    assert await db.verify("good", Secret(b"good-pw")) is Verdict.OK
    assert await db.verify("good", Secret(b"second")) is Verdict.REJECTED  # first line wins
    assert await db.lookup("baduid") is None
    assert await db.verify("relative", Secret(b"x")) is Verdict.REJECTED
    lines = sorted(int(problem.split(":")[1]) for problem in db.problems)
    assert lines == [3, 4, 5, 6, 7]
    assert all(problem.startswith(f"{path}:") for problem in db.problems)
    assert not any("good-pw" in problem or "second" in problem for problem in db.problems)

    report = db.check()
    assert set(db.problems) <= set(report)
    assert any(p.startswith(f"{path}:9:") and "scheme" in p for p in report)
    assert any(p.startswith(f"{path}:2:") and "mail location" in p for p in report)


async def test_missing_or_unreadable_file_is_temporary(tmp_path: Path) -> None:
    for path in (tmp_path / "missing", tmp_path):  # the second is a directory
        db = PasswdFile(path, TEMPLATE)
        assert await db.verify("alice", Secret(b"alice-pw")) is Verdict.TEMPORARY
        assert await db.plaintext("alice") is Verdict.TEMPORARY
        assert await db.lookup("alice") is Verdict.TEMPORARY
        [problem] = db.check()
        assert "cannot read" in problem


async def test_changes_are_picked_up(users: Path) -> None:
    clock = Clock()
    db = PasswdFile(users, TEMPLATE, stat_interval=1.0, clock=clock)
    assert await db.verify("plain", Secret(b"plain-pw")) is Verdict.OK

    assert set_password(users, "plain", "{PLAIN}changed") is Edit.DONE
    clock.now += 0.5  # within the interval: the file is not looked at
    assert await db.verify("plain", Secret(b"plain-pw")) is Verdict.OK
    clock.now += 0.5
    assert await db.verify("plain", Secret(b"changed")) is Verdict.OK
    assert await db.verify("plain", Secret(b"plain-pw")) is Verdict.REJECTED

    # Rewritten in place, same inode: the size changes.
    users.write_text(users.read_text() + "late:{PLAIN}late-pw\n")
    clock.now += 1
    assert await db.verify("late", Secret(b"late-pw")) is Verdict.OK

    users.unlink()
    clock.now += 1
    assert await db.verify("late", Secret(b"late-pw")) is Verdict.TEMPORARY
    users.write_text("late:{PLAIN}back\n")
    assert await db.verify("late", Secret(b"back")) is Verdict.OK  # failures are not cached


async def test_same_size_rewrite_is_seen_by_mtime(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("a:{PLAIN}one\n")
    db = PasswdFile(path, TEMPLATE, stat_interval=0)
    assert await db.verify("a", Secret(b"one")) is Verdict.OK
    before = path.stat().st_mtime_ns
    path.write_text("a:{PLAIN}two\n")
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))
    assert await db.verify("a", Secret(b"two")) is Verdict.OK


# --- editing -----------------------------------------------------------------------------

KEPT = "# header comment\r\n\n  # indented\nzed:{PLAIN}z:5:5::/home/zed::userdb_x=1\n"


def test_add_creates_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "new-users"
    old_umask = os.umask(0)
    try:
        assert add_user(path, "alice", "{PLAIN}a") is Edit.DONE
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "alice:{PLAIN}a\n"
    assert add_user(path, "alice", "{PLAIN}b") is Edit.EXISTS
    assert path.read_text() == "alice:{PLAIN}a\n"


def test_add_with_fields(tmp_path: Path) -> None:
    path = tmp_path / "users"
    extra = ["userdb_mail=maildir:/srv/mail/x", "nologin"]
    assert add_user(path, "X@Example.COM", "{PLAIN}x", uid=7, home="/home/x", extra=extra)
    assert path.read_text() == (
        "X@example.com:{PLAIN}x:7:::/home/x::userdb_mail=maildir:/srv/mail/x nologin\n"
    )
    assert add_user(path, "x@example.com", "{PLAIN}y") is Edit.DONE  # another local part
    assert add_user(path, "X@EXAMPLE.com", "{PLAIN}y") is Edit.EXISTS


def test_edits_keep_other_lines_and_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_bytes(KEPT.encode() + b"bob:{PLAIN}b\n# trailing, no newline")
    path.chmod(0o640)
    assert add_user(path, "carol", "{PLAIN}c") is Edit.DONE
    assert set_password(path, "zed", "{PLAIN}new") is Edit.DONE
    assert set_password(path, "bob", "{PLAIN}bb") is Edit.DONE
    assert delete_user(path, "carol") is Edit.DONE
    assert path.read_bytes() == (
        b"# header comment\r\n\n  # indented\n"
        b"zed:{PLAIN}new:5:5::/home/zed::userdb_x=1\n"
        b"bob:{PLAIN}bb\n# trailing, no newline\n"
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_unknown_users_and_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "users"
    assert set_password(path, "ghost", "{PLAIN}x") is Edit.NO_SUCH_USER
    assert delete_user(path, "ghost") is Edit.NO_SUCH_USER
    path.write_text("a:{PLAIN}a\n")
    assert delete_user(path, "ghost") is Edit.NO_SUCH_USER
    for name in ("../etc/passwd", "a:b", "", "a b", ".x"):
        with pytest.raises(ValueError, match="name"):
            add_user(path, name, "{PLAIN}x")
    for hashed in ("{PLAIN}a:b", "{PLAIN}a\nroot:{PLAIN}x", "{PLAIN}a\r"):
        with pytest.raises(ValueError, match="hash"):
            add_user(path, "new", hashed)
        with pytest.raises(ValueError, match="hash"):
            set_password(path, "a", hashed)
    with pytest.raises(ValueError, match="extra"):
        add_user(path, "new", "{PLAIN}x", extra=["a=b c=d"])
    assert path.read_text() == "a:{PLAIN}a\n"


def test_delete_removes_duplicates_too(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("a:{PLAIN}1\nb:{PLAIN}2\na:{PLAIN}3\n")
    assert delete_user(path, "a") is Edit.DONE
    assert path.read_text() == "b:{PLAIN}2\n"


def test_list_users(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(BROKEN + "Zed@Example.org:{PLAIN}z\n")
    assert list_users(path) == ["good", "strange", "Zed@example.org"]
    with pytest.raises(FileNotFoundError):
        list_users(tmp_path / "missing")


async def test_the_database_sees_edits(users: Path) -> None:
    db = PasswdFile(users, TEMPLATE, stat_interval=0)
    assert await db.verify("dave", Secret(b"dave-pw")) is Verdict.REJECTED
    add_user(users, "dave", schemes.make(b"dave-pw", "SSHA512"))
    assert await db.verify("dave", Secret(b"dave-pw")) is Verdict.OK
    delete_user(users, "dave")
    assert await db.verify("dave", Secret(b"dave-pw")) is Verdict.REJECTED


ADDER = """
import sys
from popbox.auth.passwd_file import add_user
for i in range(int(sys.argv[3])):
    add_user(sys.argv[1], f"w{sys.argv[2]}-{i}", "{PLAIN}x")
"""


def test_concurrent_edits_are_serialized(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("# shared\n")
    workers, each = 8, 25
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    procs = [
        subprocess.Popen([sys.executable, "-c", ADDER, str(path), str(n), str(each)], env=env)
        for n in range(workers)
    ]
    assert all(proc.wait(timeout=60) == 0 for proc in procs)
    names = list_users(path)
    assert len(names) == workers * each
    assert set(names) == {f"w{n}-{i}" for n in range(workers) for i in range(each)}
    assert path.read_text().startswith("# shared\n")


async def test_a_users_file_that_is_a_symlink_is_refused(users: Path, tmp_path: Path) -> None:
    """open(2) with O_NOFOLLOW: a users file replaced by a link (here to a copy of the
    real one) is neither read nor edited through; every login fails as temporary."""
    link = tmp_path / "linked-users"
    link.symlink_to(users)
    db = PasswdFile(link, TEMPLATE)
    assert await db.verify("plain", Secret(b"plain-pw")) is Verdict.TEMPORARY
    assert any("cannot read" in problem for problem in db.check())
    before = users.read_bytes()
    with pytest.raises(OSError):
        set_password(link, "plain", "{PLAIN}new")
    assert users.read_bytes() == before
    with pytest.raises(OSError):
        list_users(link)
