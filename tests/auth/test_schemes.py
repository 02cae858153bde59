"""Password schemes: Dovecot's own hashes verify, ours round-trip (and verify in Dovecot when
doveadm is installed), wrong passwords and garbage are False, never an exception."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popbox.auth import schemes
from popbox.auth.base import Secret

# Made with `doveadm pw -s SCHEME -p PASSWORD` (Dovecot 2.3).
SECRET = b"secret"
UNICODE = "Pässwörd ☃ 42".encode()
LONG = b"x" * 100
DOVECOT_VECTORS = [
    (
        SECRET,
        "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$Fz18XWWSDgrGQ7HXPjc1Fg"
        "$vBfndEF1kNq9J521sIPfQizxeX2q0uHdnZikHE3+K+s",
    ),
    (
        SECRET,
        "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$D5Pe8l5Iw1ubQw5/HVSYQQ"
        "$bv4VFA7VVt9O5VsSi9+QrJvMHG3JRLvkeiyra0RWqFQ",
    ),
    (SECRET, "{BLF-CRYPT}$2y$05$UeHyFXXTpo9stmmOEKOxreYFveyCXzNsgy1e3Nb4eMy1sPQWWKHmu"),
    (SECRET, "{BLF-CRYPT}$2y$04$O9t8Dgx/wAZQ7k4Iym4x5e9bwUdI/0IQAed3kUcWzKVb0amLGuNUm"),
    (SECRET, "{CRYPT}$2y$05$64F0gQq8iPMibJcdLCrnY.vaVeMAWWqbeUZKkBUffc9aOVcdRj8fG"),
    (
        SECRET,
        "{SHA512-CRYPT}$6$wICqVrgULs3vbPuq$XLal3njbIGoBEwEMwalFcqZrleWxz0h0Ebjn74tMC"
        "BbFmu7RDG9oGIrb9cts6IsgNPa0zk/jz.XBpU9WutRAA/",
    ),
    (
        SECRET,
        "{SHA512-CRYPT}$6$rounds=1000$VG2BNZ4/aIvX64hy$5HfwsC/heWDAhvLmW0tjehaQwOaHLGni"
        "S27SFDgyIespTy.vtXYmgMxf5uDkVYB1vLVWuSwHO8Ut1osMMB3090",
    ),
    (SECRET, "{SHA256-CRYPT}$5$b5sWfO.BfeeNx4Kf$7cvPnzP6K2TVdcz2OHKoZZcDCrfSZIQllwWW9Ehby5/"),
    (SECRET, "{MD5-CRYPT}$1$J50xyhOF$NSVGpZDkuqNnmVL3FVlar1"),
    (SECRET, "{DES-CRYPT}oEq7zK6nwNkT2"),
    (
        SECRET,
        "{SSHA512}QlNvJN9m2659H7HaujxjQZZNUsU2+GT1osRuRR6M4FqkYPmtzpcefZuVKjM4K+ZgV99GGF"
        "R3qbApF5NsCaxdWzJ4/Ks=",
    ),
    (SECRET, "{SSHA256}0x3Dhcs8S5aU3qS879Vy+C4Tb3yywyniw/EbfWbm0rkeG7Jr"),
    (
        SECRET,
        "{SHA512}vSsar3708Jvp9Szi2NWZZ02Bqp1qRCFpbcTZPdBhnWgs5WtNZKnvCXdhztmeD2cmW192CF5b"
        "DufKRpayrW/isg==",
    ),
    (SECRET, "{SHA256}K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols="),
    (SECRET, "{SSHA}7r4yaFFKQ6oTtqvvjU4BmcTkit34i7gq"),
    (SECRET, "{SHA1}5en6G6MezRroT3XKqkdPOmY/BfQ="),
    (SECRET, "{PLAIN}secret"),
    (SECRET, "{CLEAR}secret"),
    (SECRET, "{CRAM-MD5}cd3ba7deaad6e5ca23448ba42e379747a9e0f7f1fbc00c8a81bbaac395731b56"),
    (
        SECRET,
        "{SCRAM-SHA-256}4096,YbFKgZEidZZBfoE4X+9TXA==,w4tzOU0LtorBoHiX4ZEJ2jkjX7JlKt9Evq"
        "yewvu/rSw=,iDjQUROWrP5FVBJejxpwJWh5skV2waqUZS9C9u3PSn4=",
    ),
    (
        SECRET,
        "{SCRAM-SHA-1}4096,gcsrTo2uV8EPYBbAWH5ePg==,WQTSzJJUSaFL8Qf4wGqOeZCB4TI=,"
        "J0OBxk10omqN7+2dP3Rm87WCjzY=",
    ),
    (
        UNICODE,
        "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$q//lkOV2uA9JnBz8dF0CiQ"
        "$1rIzQyK50trUMzuhNMpDCpIblRT3t1vHrVtV14Z9W68",
    ),
    (UNICODE, "{BLF-CRYPT}$2y$05$j9y6sTI7J4mLhP/ODlTs8ew5LOMnlBvsZtZSlSRPSnGNUJSH7WXqO"),
    (UNICODE, "{SHA256-CRYPT}$5$EYrcuV77MJc06RMp$gULyz0uNipIxWe9bjkFkcVvkl1udw2Gc3TG1tR3oPA/"),
    (UNICODE, "{MD5-CRYPT}$1$hC355U5j$C8Ms.VtLX8WFqGdRJNqjm0"),
    (UNICODE, "{SSHA256}XdCfca282494gZAAFPtC55hKUAU/71wa8zVEKaKh4Z8zp8yl"),
    (
        UNICODE,
        "{SHA512.HEX}3a1a399e16e15a984b8741af8a39beb3e0e0503d7864a6d97e20bfd0a7c8701ef2b9"
        "ea27f7d9da4bbb3c3212c5ccbde6f35b8bedd74b0d9e714e3a4ce2001d16",
    ),
    (
        UNICODE,
        "{SSHA512.HEX}771fe1381f97b705b16cd763d81a35d482d9f3210483f3067e2b0e4a0b2a7286ab6"
        "6f3d64d129ffe4f27dbd83d0633dcfe2ac64acfdc710249a2cbca8dc8ade7c265a7d9",
    ),
    (UNICODE, "{PLAIN-MD5}f2fee6071bdab5c1f8232fc4bd61f856"),
    (UNICODE, "{LDAP-MD5}8v7mBxvatcH4Iy/EvWH4Vg=="),
    (UNICODE, "{SMD5}LFI1SSjxBxEsaAS5MTHQz3ItE/g="),
    (UNICODE, "{SSHA}puxs0VsQ8P3iFHt+x7y1lqw8Z3u8ISYd"),
    (UNICODE, "{SHA1}i56+QJULql0zGshC+rudhqTWHJw="),
    (UNICODE, "{CRAM-MD5}6e4cfa8a709f0d73e8bf5745f5217332591e284a557860a9416388e28a2d774a"),
    (
        UNICODE,
        "{SCRAM-SHA-256}4096,bwRtSze0clbGKp2+ExtwRg==,WN2Q94FdBUi7NHR+SggUPSfs90SJswQHc"
        "skH+wLciJo=,9hGzl974my4ERn+jQe4RM57z8EgaUmU9r6JJYLlCrFo=",
    ),
    (
        UNICODE,
        "{SCRAM-SHA-1}4096,d5D8rqfyE7JDxVEUgF0IjQ==,2Sd14fUYByiln0UI4W6GmPPn/z8=,"
        "haOiZyIms3dlqdpEt18ZCDCDkJ4=",
    ),
    (UNICODE, "{PLAIN.B64}UMOkc3N3w7ZyZCDimIMgNDI="),
    (LONG, "{CRAM-MD5}52197db948d0932512a61b183e7d05b04e94d60a3bb0d00f92d3df52a5d275ca"),
    (LONG, "{BLF-CRYPT}$2y$05$arlwbZAUK1MA71Onxh15TO598a9zHdZVuM/M5ZGjblElaxDOPiRte"),
    (
        LONG,
        "{SHA512-CRYPT}$6$i1WN7MVzJ636zNl5$yZK89aDAcm5Wr6naL8FuRaL6bklb3/bXhnCh2/1FFmRNC04"
        "InrBgVB6YPkiJcWNUZ3AWrDkTIzxh4AbhARm4f.",
    ),
]
FAST = schemes.Cost(argon2_time=1, argon2_memory_kib=8, bcrypt_rounds=4, crypt_rounds=1000)


VECTOR_IDS = [stored.split("}")[0][1:] for _, stored in DOVECOT_VECTORS]


@pytest.mark.parametrize(("password", "stored"), DOVECOT_VECTORS, ids=VECTOR_IDS)
def test_dovecot_hashes_verify(password: bytes, stored: str) -> None:
    assert schemes.verify(stored, password)
    assert not schemes.verify(stored, b"!" + password)
    assert not schemes.verify(stored, b"")


@pytest.mark.parametrize("scheme", schemes.SCHEMES)
def test_make_then_verify(scheme: str) -> None:
    stored = schemes.make(UNICODE, scheme, cost=FAST)
    assert stored.startswith("{" + scheme + "}")
    assert schemes.verify(stored, UNICODE)
    assert not schemes.verify(stored, UNICODE[:-1])
    assert schemes.scheme_of(stored) == scheme


@pytest.mark.parametrize("scheme", schemes.SCHEMES)
def test_dovecot_verifies_our_hashes(scheme: str) -> None:
    assert shutil.which("doveadm"), "Dovecot's doveadm is missing: scripts/install-peers"
    stored = schemes.make(UNICODE, scheme, cost=FAST)
    check = ["doveadm", "pw", "-t", stored, "-p", UNICODE.decode()]
    assert subprocess.run(check, capture_output=True, check=False).returncode == 0
    wrong = ["doveadm", "pw", "-t", stored, "-p", "wrong"]
    assert subprocess.run(wrong, capture_output=True, check=False).returncode != 0


def test_default_is_argon2id_with_dovecot_cost() -> None:
    stored = schemes.make(SECRET)
    assert stored.startswith("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$")
    assert schemes.verify(stored, SECRET)


def test_salted_hashes_differ_each_time() -> None:
    for scheme in ("ARGON2ID", "BLF-CRYPT", "SSHA512", "SCRAM-SHA-256"):
        assert schemes.make(SECRET, scheme, cost=FAST) != schemes.make(SECRET, scheme, cost=FAST)


@pytest.mark.parametrize(
    "stored",
    [
        "$argon2id$v=19$m=65536,t=3,p=1$Fz18XWWSDgrGQ7HXPjc1Fg$vBfndEF1kNq9J521sIPfQizxeX2q0uHdnZikHE3+K+s",
        "$2y$05$UeHyFXXTpo9stmmOEKOxreYFveyCXzNsgy1e3Nb4eMy1sPQWWKHmu",
        "$6$wICqVrgULs3vbPuq$XLal3njbIGoBEwEMwalFcqZrleWxz0h0Ebjn74tMCBbFmu7RDG9oGIrb9cts6IsgNPa0zk/"
        "jz.XBpU9WutRAA/",
        "$5$b5sWfO.BfeeNx4Kf$7cvPnzP6K2TVdcz2OHKoZZcDCrfSZIQllwWW9Ehby5/",
        "$1$J50xyhOF$NSVGpZDkuqNnmVL3FVlar1",
        "oEq7zK6nwNkT2",
    ],
    ids=["argon2id", "bcrypt", "sha512", "sha256", "md5", "des"],
)
def test_no_prefix_is_detected_like_crypt(stored: str) -> None:
    assert schemes.verify(stored, SECRET)
    assert not schemes.verify(stored, b"wrong")


def test_no_prefix_uses_the_configured_default() -> None:
    assert schemes.verify("secret", SECRET, default_scheme="PLAIN")
    assert not schemes.verify("secret", SECRET)  # CRYPT: not a hash
    sha = hashlib.sha512(SECRET).digest().hex()
    assert schemes.verify(sha, SECRET, default_scheme="SHA512")


def test_scheme_names_are_case_insensitive_and_hex_is_accepted() -> None:
    assert schemes.verify("{plain}secret", SECRET)
    assert schemes.verify("{SHA512}" + hashlib.sha512(SECRET).hexdigest(), SECRET)
    assert schemes.verify("{sha256.hex}" + hashlib.sha256(SECRET).hexdigest(), SECRET)


def test_bcrypt_reads_72_bytes_like_dovecot() -> None:
    stored = schemes.make(b"y" * 72, "BLF-CRYPT", cost=FAST)
    assert schemes.verify(stored, b"y" * 72 + b"ignored")
    with pytest.raises(ValueError, match="72"):
        schemes.make(b"y" * 73, "BLF-CRYPT", cost=FAST)


@pytest.mark.parametrize(
    "scheme", ["NOPE", "DES-CRYPT", "PLAIN}x", "", "ARGON2ID.HEX", "SHA1.ROT13"]
)
def test_make_refuses_unknown_schemes(scheme: str) -> None:
    with pytest.raises(ValueError, match="scheme"):
        schemes.make(SECRET, scheme)


GARBAGE = [
    "",
    "{",
    "}",
    "{}",
    "{NOPE}secret",
    "{PLAIN.ROT13}secret",
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$!!!$???",
    "{ARGON2ID}",
    "{BLF-CRYPT}$2y$99$xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "{BLF-CRYPT}$2y$",
    "{SHA512-CRYPT}$6$",
    "{SHA512-CRYPT}$6$rounds=abc$salt$hash",
    "{SHA512}not base64!",
    "{SHA512}c2VjcmV0",
    "{SSHA512}c2VjcmV0",
    "{SHA512.HEX}zz",
    "{CRAM-MD5}xyz",
    "{CRAM-MD5}" + "g" * 64,
    "{SCRAM-SHA-256}",
    "{SCRAM-SHA-256}a,b,c,d",
    "{SCRAM-SHA-256}0,YbFKgZEidZZBfoE4X+9TXA==,AAAA,AAAA",
    "{SCRAM-SHA-256}999999999999,YbFKgZEidZZBfoE4X+9TXA==,AAAA,AAAA",
    "{SCRAM-SHA-256}4096,!!,AAAA,AAAA",
    "$argon2id$garbage",
    "$2b$",
    "$6$",
    "$9$unknown",
    "\x00\xff",
]


@pytest.mark.parametrize("stored", GARBAGE)
def test_garbage_is_false(stored: str) -> None:
    assert schemes.verify(stored, SECRET) is False
    assert schemes.verify(stored, b"\x00") is False
    assert schemes.plaintext(stored) is None


def test_passwords_the_algorithm_refuses_are_false() -> None:
    for scheme in ("BLF-CRYPT", "SHA512-CRYPT"):
        assert schemes.verify(schemes.make(SECRET, scheme, cost=FAST), b"sec\x00ret") is False


@given(st.text(max_size=80), st.binary(max_size=40))
def test_verify_never_raises(stored: str, password: bytes) -> None:
    assert isinstance(schemes.verify(stored, password), bool)
    assert isinstance(schemes.verify("{SCRAM-SHA-1}" + stored, password), bool)
    assert isinstance(schemes.verify("{SSHA}" + stored, password), bool)


def test_plaintext_only_where_the_scheme_keeps_it() -> None:
    for stored in ("{PLAIN}secret", "{CLEAR}secret", "{CLEARTEXT}secret", "{PLAIN.B64}c2VjcmV0"):
        found = schemes.plaintext(stored)
        assert found == Secret(SECRET)
        assert "secret" not in repr(found)
    assert schemes.plaintext("secret", default_scheme="PLAIN") == Secret(SECRET)
    assert schemes.plaintext("secret") is None
    assert schemes.plaintext(schemes.make(SECRET, "SSHA512")) is None
    assert schemes.plaintext(schemes.make(SECRET, "CRAM-MD5")) is None


def test_scheme_of() -> None:
    assert schemes.scheme_of("{ssha512}xx") == "SSHA512"
    assert schemes.scheme_of("$6$x$y") == "CRYPT"
    assert schemes.scheme_of("{DES-CRYPT}oEq7zK6nwNkT2") == "DES-CRYPT"
    assert schemes.scheme_of("{NOPE}x") is None
    assert schemes.scheme_of("{PLAIN.ROT13}x") is None


async def test_verify_async() -> None:
    stored = schemes.make(SECRET, "ARGON2ID", cost=FAST)
    assert await schemes.verify_async(stored, SECRET)
    assert not await schemes.verify_async(stored, b"wrong")
    assert not await schemes.verify_async("{NOPE}x", SECRET)
