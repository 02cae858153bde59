"""POP URLs (RFC 2384 §§3-4, §7's examples, §8's grammar), parsed from text alone, and
what they mean as account settings."""

from __future__ import annotations

import pytest

from popbox.client.fetcher import AUTH_METHODS
from popbox.client.popurl import PopUrl, PopUrlError, account_keys, parse


def keys(url: str) -> dict[str, object]:
    return account_keys(parse(url), AUTH_METHODS)


def test_rfc2384_examples() -> None:
    """RFC 2384 §7."""
    assert parse("pop://rg@mailsrv.qualcomm.com") == PopUrl(
        "pop", "mailsrv.qualcomm.com", 110, "rg", None, False)
    assert parse("pop://rg;AUTH=+APOP@mail.eudora.com:8110") == PopUrl(
        "pop", "mail.eudora.com", 8110, "rg", "+APOP", True)
    assert parse("pop://baz;AUTH=SCRAM-MD5@foo.bar").auth == "SCRAM-MD5"
    assert keys("pop://rg;AUTH=+APOP@mail.eudora.com:8110") == {
        "server": "mail.eudora.com", "port": 8110, "user": "rg", "auth": "apop"}


def test_mechanisms_map_to_auth() -> None:
    """§4: a SASL name, `*` (any: auto), `+APOP`; a user without ;AUTH= leaves auth alone."""
    assert keys("pop://alice;AUTH=SCRAM-SHA-256@pop.example.org:995") == {
        "server": "pop.example.org", "port": 995, "user": "alice", "auth": "scram-sha-256"}
    assert keys("pop://alice;auth=*@Pop.Example.ORG")["auth"] == "auto"
    assert keys("POP://alice;AUTH=xoauth2@h")["auth"] == "xoauth2"
    assert keys("pop://alice;AUTH=%2BAPOP@h")["auth"] == "apop"
    assert keys("pop://alice@h") == {"server": "h", "user": "alice"}
    assert keys("pop://h") == {"server": "h"}
    for bad in ("pop://a;AUTH=+KERBEROS@h", "pop://a;AUTH=GSSAPI@h", "pop://a;AUTH=user@h",
                "pop://a;AUTH=auto@h"):
        with pytest.raises(PopUrlError, match="AUTH="):
            keys(bad)


def test_percent_decoding_and_the_at_sign() -> None:
    assert parse("pop://alice%40example.org;AUTH=PLAIN@h").user == "alice@example.org"
    assert parse("pop://alice@example.org@h").user == "alice@example.org"
    assert parse("pop://j%C3%B6rg@h").user == "jörg"
    assert parse("pop://a%20b%3Bc@h").user == "a b;c"
    assert parse("pop://%41LICE@h/").user == "ALICE"


def test_pops_is_implicit_tls() -> None:
    assert keys("pops://alice@pop.example.org") == {
        "server": "pop.example.org", "port": 995, "tls": "implicit", "user": "alice"}
    assert keys("pops://pop.example.org:1995")["port"] == 1995


def test_hosts_and_ports() -> None:
    assert parse("pop://[2001:db8::1]:1110").host == "2001:db8::1"
    assert parse("pop://[::1]").port == 110
    assert parse("pop://192.0.2.7:110").host == "192.0.2.7"
    assert parse("pop://pop.example.org.").host == "pop.example.org"


@pytest.mark.parametrize(("url", "why"), [
    ("imap://alice@h", "not a pop"),
    ("pop:/h", "not a pop"),
    ("pop://", "needs a host"),
    ("pop://alice@", "needs a host"),
    ("pop://alice:secret@h", "password"),
    ("pop://h:0", "port"),
    ("pop://h:65536", "port"),
    ("pop://h:\uff11\uff11\uff10", "port"),  # full-width digits
    ("pop://h:", "port"),
    ("pop://h/INBOX", "no path"),
    ("pop://h?x=1", "no path"),
    ("pop://a;X=1@h", "only parameter"),
    ("pop://a;AUTH=@h", "only parameter"),
    ("pop://a b@h", "%-encoded"),
    ("pop://a%0D%0AQUIT@h", "control"),
    ("pop://a%ff@h", "UTF-8"),
    ("pop://a%2@h", "%-encoded"),
    ("pop://-bad-.example", "host"),
    ("pop://ex_ample.org", "host"),
    ("pop://[zz::1]", "IPv6"),
    ("pop://" + "a." * 130 + "org", "host"),
])
def test_bad_urls(url: str, why: str) -> None:
    with pytest.raises(PopUrlError, match=why):
        parse(url)
