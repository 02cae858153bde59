"""User names that are safe in a path, and mail location templates."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popbox.auth.names import expand_location, normalize_username, valid_username


@pytest.mark.parametrize(
    "name",
    [
        "alice",
        "a",
        "john.doe",
        "a..b",
        "bob_2",
        "Bob@Example.COM",
        "x+tag@example.org",
        "élodie@exemple.fr",
        "a" * 255,
        "a-b@c-d",
    ],
)
def test_valid_names(name: str) -> None:
    assert valid_username(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        ".hidden",
        "-rf",
        "a/b",
        "../etc",
        "a\\b",
        "a\x00b",
        "a\nb",
        "a\tb",
        "a b",
        "a\u00a0b",
        "a\u200bb",
        "a\u202eb",
        "a\x7fb",
        "a" * 256,
        "é" * 128,
        "@example.org",
        "alice@",
        "a@b@c",
        "alice@.example",
        "alice@-x",
        "alice@..",
        "a@b/c",
    ],
)
def test_invalid_names(name: str) -> None:
    assert not valid_username(name)


def test_normalize_lowercases_the_domain_only() -> None:
    assert normalize_username("Bob@Example.COM") == "Bob@example.com"
    assert normalize_username("Bob") == "Bob"


@pytest.mark.parametrize(
    ("template", "user", "home", "expected"),
    [
        ("maildir:~/Maildir", "alice", "/home/alice", "maildir:/home/alice/Maildir"),
        ("~/Maildir", "alice", "/home/alice/", "/home/alice/Maildir"),
        ("~", "alice", "/home/alice", "/home/alice"),
        (
            "maildir:/var/mail/{domain}/{local}",
            "Bob@Example.COM",
            None,
            "maildir:/var/mail/example.com/Bob",
        ),
        ("/var/mail/{user}", "Bob@Example.COM", None, "/var/mail/Bob@example.com"),
        ("/var/mail/{user}", "bob", None, "/var/mail/bob"),
        ("{home}/mail", "bob", "/srv/bob", "/srv/bob/mail"),
        ("/plain/path", "bob", None, "/plain/path"),
        # A user name is put in once: what it contains is not expanded again.
        ("/m/{local}", "{domain}", None, "/m/{domain}"),
        ("/m/{local}", "~x", None, "/m/~x"),
    ],
)
def test_expand(template: str, user: str, home: str | None, expected: str) -> None:
    assert expand_location(template, user, home) == expected


@pytest.mark.parametrize(
    ("template", "user", "home"),
    [
        ("maildir:~/Maildir", "alice", None),
        ("~/Maildir", "alice", ""),
        ("/var/mail/{domain}/{local}", "alice", "/home/alice"),
        ("{home}/mail", "alice", None),
        ("/var/mail/{nosuchvariable}", "alice", None),
        ("/var/mail/{user}", "../etc", None),
        ("/var/mail/{user}", "", None),
    ],
)
def test_expand_needs_what_is_missing(template: str, user: str, home: str | None) -> None:
    assert expand_location(template, user, home) is None


NAMES = st.one_of(
    st.text(max_size=20), st.tuples(st.text(max_size=20), st.text(max_size=20)).map("@".join)
)


@given(NAMES)
def test_a_valid_name_stays_inside_its_directory(name: str) -> None:
    location = expand_location("/var/mail/{domain}/{local}/{user}", name, None)
    if location is None:
        return
    assert valid_username(name)
    assert posixpath.normpath(location).startswith("/var/mail/")
    assert posixpath.normpath(location).count("/") == 5
    assert "\x00" not in location
