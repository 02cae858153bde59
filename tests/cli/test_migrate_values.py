"""Dovecot value syntaxes as popbox's: mail location %variables (2.3 one-letter and long
forms, 2.4 filters) as popbox.auth.names templates, and Dovecot's libpq ``connect=``
strings as PostgreSQL URIs (libpq "Connection Strings"), checked by parsing them back."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from popbox.auth.names import expand_location
from popbox.migrate.dovecot_sql import pgsql_dsn, sql_copy
from popbox.migrate.dovecot_values import address, location_template, seconds


@pytest.mark.parametrize(("dovecot", "template"), [
    ("~/Maildir", "~/Maildir"),
    ("/var/vmail/%d/%n", "/var/vmail/{domain}/{local}"),
    ("/var/vmail/%d/%n/Maildir", "/var/vmail/{domain}/{local}/Maildir"),
    ("/srv/%u", "/srv/{user}"),
    ("%h/Maildir", "{home}/Maildir"),
    ("/var/vmail/%{domain}/%{username}", "/var/vmail/{domain}/{local}"),
    ("/var/vmail/%{user | domain}/%{user|username}", "/var/vmail/{domain}/{local}"),
    ("/mail/100%%/%u", "/mail/100%/{user}"),
])
def test_location_templates(dovecot: str, template: str) -> None:
    assert location_template(dovecot) == (template, [])


def test_location_templates_that_change_or_fail() -> None:
    assert location_template("/var/vmail/%Ld/%Ln") == (
        "/var/vmail/{domain}/{local}",
        ["Dovecot lower-cased the name in the path; popbox lower-cases only the domain"])
    template, remarks = location_template("/var/vmail/%r/%u")
    assert template is None and "%r" in remarks[0]
    template, remarks = location_template("/var/vmail/%{user | md5}")
    assert template is None


def test_a_converted_template_expands_as_dovecot_would() -> None:
    template, _ = location_template("/var/vmail/%d/%n/Maildir")
    assert template is not None
    assert expand_location(template, "alice@Example.ORG", None) == \
        "/var/vmail/example.org/alice/Maildir"


def test_addresses_and_times() -> None:
    assert [address(a) for a in ("*", "::", "[::]", "192.0.2.1", "2001:db8::1", "mail")] == \
        ["0.0.0.0", "[::]", "[::]", "192.0.2.1", "[2001:db8::1]", None]
    assert [seconds(t) for t in ("0", "2 secs", "500 ms", "1 min", "soon")] == \
        [0, 2, 0.5, 60, None]


def test_dsn_from_connect_string() -> None:
    dsn, remarks = pgsql_dsn("host=db1.example.org host=db2.example.org port=5433 "
                             "dbname=mail user=dovecot password='p@ss w#rd' sslmode=require")
    parts = urlsplit(dsn)
    assert parts.scheme == "postgresql" and parts.hostname == "db1.example.org"
    assert parts.port == 5433 and parts.path == "/mail"
    assert parts.username == "dovecot" and unquote(parts.password or "") == "p@ss w#rd"
    assert parse_qs(parts.query) == {"sslmode": ["require"]}
    assert remarks == ["several hosts: popbox uses the first, db1.example.org"]
    dsn, _ = pgsql_dsn({"host": "/var/run/postgresql", "dbname": "mail", "user": "dovecot"})
    assert dsn == "postgresql://dovecot@/mail?host=%2Fvar%2Frun%2Fpostgresql"


def test_sql_copy_shapes() -> None:
    select, columns = sql_copy(["SELECT email AS user, pw AS password, maildir AS "
                                "userdb_mail FROM accounts WHERE email = '%u' AND active"])
    assert select == ("SELECT email AS name, pw AS password, maildir AS mail "
                      "FROM accounts")
    assert columns == "name, password, mail"
    assert sql_copy(["SELECT password FROM a", "SELECT home FROM b"])[0] is None
    assert sql_copy(["SELECT password FROM a WHERE u = '%u'"])[0] is None  # no user column
    assert sql_copy(["CALL auth('%u')"])[0] is None
