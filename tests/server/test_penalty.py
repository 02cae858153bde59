"""The failed-login penalty policy, with the clock passed in."""

from __future__ import annotations

from popbox.server.penalty import PenaltyBook


def test_delay_doubles_to_a_cap_and_success_resets() -> None:
    book = PenaltyBook(initial=2, cap=15)
    keys = book.keys("203.0.113.9", "alice")
    assert book.delay(keys, 0) == 0
    delays = []
    for i in range(6):
        book.failed(keys, i)
        delays.append(book.delay(keys, i))
    assert delays == [2, 4, 8, 15, 15, 15]
    book.succeeded(keys)
    assert book.delay(keys, 10) == 0


def test_user_and_address_count_separately() -> None:
    """Guessing one user from many addresses is slowed down, and so is guessing many
    users from one address."""
    book = PenaltyBook()
    for i in range(3):
        book.failed(book.keys(f"198.51.100.{i}", "alice"), 0)
    assert book.delay(book.keys("192.0.2.1", "alice"), 1) == 8
    assert book.delay(book.keys("192.0.2.1", "bob"), 1) == 0
    for user in ("u1", "u2", "u3"):
        book.failed(book.keys("192.0.2.77", user), 0)
    assert book.delay(book.keys("192.0.2.77", "new-user"), 1) == 8


def test_ipv6_addresses_are_grouped_by_prefix() -> None:
    book = PenaltyBook(v6_prefix=64)
    book.failed(book.keys("2001:db8:1:2::1", None), 0)
    assert book.delay(book.keys("2001:db8:1:2:ffff::9", None), 1) == 2
    assert book.delay(book.keys("2001:db8:1:3::1", None), 1) == 0


def test_counts_expire_and_the_table_is_bounded() -> None:
    book = PenaltyBook(window=60, max_entries=100)
    book.failed(book.keys("192.0.2.1", None), 0)
    assert book.delay(book.keys("192.0.2.1", None), 59) == 2
    assert book.delay(book.keys("192.0.2.1", None), 61) == 0
    for i in range(1000):
        book.failed(book.keys(f"10.0.{i // 256}.{i % 256}", None), 100)
    assert len(book) == 100


def test_disabled() -> None:
    book = PenaltyBook(initial=0)
    book.failed(book.keys("192.0.2.1", "a"), 0)
    assert book.delay(book.keys("192.0.2.1", "a"), 0) == 0
