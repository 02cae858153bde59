"""The verified-login cache and the choice of where a password is checked (auth.verifier).

The cache is Dovecot's auth cache idea: a successful verification of a slow hash is
remembered for a while, so a client that logs in every minute does not cost a crypt
each time. The tests count the verifications that reach the hashing pool: the real
`schemes.verify_async` runs, wrapped by a counter.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from popbox.auth import schemes, verifier
from popbox.auth.base import Secret, Verdict
from popbox.auth.passwd_file import PasswdFile
from popbox.auth.verifier import Verifier

FAST_CRYPT = schemes.Cost(crypt_rounds=1000)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The stored hashes that went to the hashing pool, in order."""
    seen: list[str] = []
    real = schemes.verify_async

    async def counting(stored: str, password: bytes, *, default_scheme: str = "CRYPT") -> bool:
        seen.append(stored)
        return await real(stored, password, default_scheme=default_scheme)

    monkeypatch.setattr(schemes, "verify_async", counting)
    yield seen


def sha512(password: bytes) -> str:
    return schemes.make(password, "SHA512-CRYPT", cost=FAST_CRYPT)


async def test_a_verified_password_is_not_hashed_again_within_the_ttl(hashed: list[str]) -> None:
    clock = Clock()
    check = Verifier(cache_ttl=60, clock=clock).check
    stored = sha512(b"right")
    assert await check(stored, Secret(b"right")) is True
    assert await check(stored, Secret(b"right")) is True
    assert len(hashed) == 1
    clock.now += 59
    assert await check(stored, Secret(b"right")) is True
    assert len(hashed) == 1
    clock.now += 2  # past the ttl: hashed again, and remembered again
    assert await check(stored, Secret(b"right")) is True
    assert await check(stored, Secret(b"right")) is True
    assert len(hashed) == 2


async def test_wrong_passwords_always_cost_the_full_verification(hashed: list[str]) -> None:
    check = Verifier(cache_ttl=60, clock=Clock()).check
    stored = sha512(b"right")
    assert await check(stored, Secret(b"right")) is True
    for _ in range(3):
        assert await check(stored, Secret(b"wrong")) is False
    assert hashed == [stored] * 4
    assert await check(stored, Secret(b"right")) is True  # the right one is still cached
    assert len(hashed) == 4


async def test_a_changed_password_is_a_new_hash_that_old_entries_do_not_match(
    hashed: list[str],
) -> None:
    check = Verifier(cache_ttl=60, clock=Clock()).check
    old, new = sha512(b"old"), sha512(b"new")
    assert await check(old, Secret(b"old")) is True
    assert await check(new, Secret(b"old")) is False
    assert await check(new, Secret(b"new")) is True
    assert hashed == [old, new, new]


async def test_the_least_recently_used_entry_goes_first(hashed: list[str]) -> None:
    check = Verifier(cache_ttl=60, size=2, clock=Clock()).check
    a, b, c = sha512(b"a"), sha512(b"b"), sha512(b"c")
    for stored, password in ((a, b"a"), (b, b"b"), (a, b"a"), (c, b"c")):
        assert await check(stored, Secret(password)) is True
    assert hashed == [a, b, c]  # a was used again, so b went when c came
    assert await check(a, Secret(b"a")) is True
    assert await check(b, Secret(b"b")) is True
    assert hashed == [a, b, c, b]


async def test_ttl_zero_turns_the_cache_off(hashed: list[str]) -> None:
    check = Verifier(cache_ttl=0).check
    stored = sha512(b"right")
    for _ in range(3):
        assert await check(stored, Secret(b"right")) is True
    assert len(hashed) == 3


async def test_fast_schemes_are_checked_without_the_pool(hashed: list[str]) -> None:
    check = Verifier(cache_ttl=60).check
    for stored in ("{PLAIN}pw", "{SSHA256}" + schemes.make(b"pw", "SSHA256").split("}", 1)[1],
                   schemes.make(b"pw", "CRAM-MD5")):
        assert await check(stored, Secret(b"pw")) is True, stored
        assert await check(stored, Secret(b"px")) is False, stored
    assert hashed == []


async def test_a_user_without_a_hash_costs_one_dummy_verification(hashed: list[str]) -> None:
    check = Verifier(cache_ttl=60).check
    assert await check(None, Secret(b"anything")) is False
    assert await check("", Secret(b"anything")) is False
    assert hashed == [verifier.DUMMY_HASH] * 2


async def test_passwd_file_refuses_the_old_password_at_once_after_a_change(
    tmp_path: Path, hashed: list[str]
) -> None:
    """The cache never outlives a password change: the passdb is read at every login and
    its new hash matches no remembered entry."""
    users = tmp_path / "users"
    users.write_text(f"alice:{sha512(b'old')}::::::\n")
    db = PasswdFile(users, "/var/mail/{user}", stat_interval=0, cache_ttl=300)
    assert await db.verify("alice", Secret(b"old")) is Verdict.OK
    assert await db.verify("alice", Secret(b"old")) is Verdict.OK
    assert len(hashed) == 1
    users.write_text(f"alice:{sha512(b'new')}::::::\n")
    assert await db.verify("alice", Secret(b"old")) is Verdict.REJECTED
    assert await db.verify("alice", Secret(b"new")) is Verdict.OK
    users.write_text(f"alice:{sha512(b'new')}::::::nologin\n")
    assert await db.verify("alice", Secret(b"new")) is Verdict.REJECTED
