"""`popbox migrate dovecot`: Dovecot 2.3 and 2.4 configurations in, a popbox.toml that
popbox's own loader accepts out, and one line on standard error, with file and line, for
every setting that did not carry over. Inputs: Debian's own /etc/dovecot (copied), 2.4
configurations written from Dovecot 2.4's documentation ("Upgrading Dovecot CE from 2.3
to 2.4", "Dovecot Config File Syntax"), and SQL passdbs (dovecot-sql.conf.ext) checked
against a real PostgreSQL. UIDL formats as RFC 1939 §7 and Dovecot's pop3_uidl_format."""

from __future__ import annotations

import asyncio
import re
import shutil
import stat
import tomllib
from pathlib import Path

import asyncpg
import pytest

from dovecot_peer import Dovecot
from pg import fresh_database, migrate, run
from popbox.auth.base import Secret, Verdict
from popbox.auth.postgres import PostgresUsers
from popbox.cli.main import main
from popbox.config import from_dict
from popbox.pg.pool import Database

pytest_plugins = ["pg"]
# file:line: text, or file: text for a setting that is not set (Dovecot's default)
NOTE = re.compile(r"^(/[^:]+)(?::(\d+))?: \S")


def convert(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, object],
                                                                       list[str]]:
    status = main(["migrate", "dovecot", str(path)])
    out, err = capsys.readouterr()
    assert status == 0, err
    data = tomllib.loads(out)
    from_dict(data)  # popbox's own checks
    notes = err.splitlines()
    for line in notes:
        match = NOTE.match(line)
        assert match, f"not file:line: {line!r}"
        assert Path(match.group(1)).exists()
    return data, notes


def line_of(path: Path, text: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip() == text:
            return number
    raise AssertionError(f"{text!r} not in {path}")


DEBIAN = Path("/etc/dovecot")


@pytest.mark.skipif(not (DEBIAN / "dovecot.conf").exists(), reason="no /etc/dovecot")
def test_debian_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "dovecot"
    shutil.copytree(DEBIAN, root)
    data, notes = convert(root, capsys)
    assert data["server"] == {"listen": ["0.0.0.0:110", "[::]:110"]}
    assert data["tls"] == {"cert": "/etc/dovecot/private/dovecot.pem",
                           "key": "/etc/dovecot/private/dovecot.key",
                           "implicit": ["0.0.0.0:995", "[::]:995"]}
    auth = data["auth"]
    assert isinstance(auth, dict)
    assert auth["mechanisms"] == ["PLAIN"] and auth["cleartext"] == "local"
    system = root / "conf.d" / "auth-system.conf.ext"
    pam = f"{system}:{line_of(system, 'passdb {')}: passdb pam"
    assert any(n.startswith(pam) for n in notes), notes
    users = f"{system}:{line_of(system, 'userdb {')}: userdb passwd"
    assert any(n.startswith(users) for n in notes), notes
    mail = root / "conf.d" / "10-mail.conf"
    where = f"{mail}:{line_of(mail, 'mail_location = mbox:~/mail:INBOX=/var/mail/%u')}:"
    assert not any(n.startswith(where) for n in notes), notes
    assert auth["mail_location"] == "mbox:/var/mail/{user}"
    ssl = root / "conf.d" / "10-ssl.conf"
    dh = f"{ssl}:{line_of(ssl, 'ssl_dh = </usr/share/dovecot/dh.pem')}: ssl_dh"
    assert any(n.startswith(dh) for n in notes), notes
    assert any("namespace inbox" in n and "not used by POP3" in n for n in notes)


V24 = """\
dovecot_config_version = 2.4.0
dovecot_storage_version = 2.4.0
protocols = pop3 imap
listen = 192.0.2.10, 2001:db8::10
hostname = mail.example.org
login_greeting = Example mail ready.
login_trusted_networks = 10.0.0.0/8
haproxy_trusted_networks = 10.1.0.0/24
ssl = yes
ssl_server_cert_file = /etc/ssl/mail.pem
ssl_server_key_file = /etc/ssl/mail.key
ssl_min_protocol = TLSv1.3
auth_allow_cleartext = yes
auth_mechanisms = plain login scram-sha-256 gssapi
mail_driver = maildir
mail_home = /srv/vmail/%{user | domain}/%{user | username}
mail_path = ~/Maildir
mail_max_userip_connections = 4
passdb passwd-file {
  passwd_file_path = /etc/dovecot/users
}
userdb passwd-file {
  passwd_file_path = /etc/dovecot/users
}
local_name other.example.org {
  ssl_server_cert_file = /etc/ssl/other.pem
  ssl_server_key_file = /etc/ssl/other.key
}
protocol pop3 {
  pop3_uidl_format = %{uid | hex(8)}%{uidvalidity | hex(8)}
  pop3_client_workarounds = outlook-no-nuls oe-ns-eoh
  pop3_logout_format = top=%{top_count}, retr=%{retr_count}
}
protocol imap {
  imap_idle_notify_interval = 2 mins
}
service pop3-login {
  inet_listener pop3 {
    port = 110
  }
  inet_listener pop3s {
    port = 995
    ssl = yes
  }
  process_min_avail = 4
}
remote 203.0.113.0/24 {
  auth_allow_cleartext = no
}
"""


def test_dovecot_2_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "dovecot.conf"
    conf.write_text(V24)
    data, notes = convert(conf, capsys)
    assert data["server"] == {
        "listen": ["192.0.2.10:110", "[2001:db8::10]:110"],
        "proxy_networks": ["10.1.0.0/24"],
        "workarounds": ["outlook-no-nuls"],
        "greeting": "Example mail ready.",
        "hostname": "mail.example.org",
    }
    assert data["tls"] == {
        "cert": "/etc/ssl/mail.pem", "key": "/etc/ssl/mail.key", "min_version": "1.3",
        "sni": {"other.example.org": {"cert": "/etc/ssl/other.pem",
                                      "key": "/etc/ssl/other.key"}},
        "implicit": ["192.0.2.10:995", "[2001:db8::10]:995"],
    }
    assert data["auth"] == {
        "mechanisms": ["PLAIN", "LOGIN", "SCRAM-SHA-256"],
        "derive_credentials": True,
        "cleartext": "always",
        "local_networks": ["127.0.0.0/8", "::1/128", "10.0.0.0/8"],
        "backend": "passwd-file",
        "passwd_file": "/etc/dovecot/users",
        "mail_location": "/srv/vmail/{domain}/{local}/Maildir",
    }
    assert data["store"] == {"uidl_import": "dovecot"}
    assert data["limits"] == {"max_connections_per_ip": 4}
    expect = {
        "auth_mechanisms = ": "popbox has no GSSAPI",
        "pop3_client_workarounds = ": "oe-ns-eoh",
        "pop3_logout_format = ": "fixed fields",
        "protocol imap {": "protocol imap { 1 setting(s) }: not used by POP3",
        "process_min_avail = 4": "process_min_avail",
        "remote 203.0.113.0/24 {": "{ 1 setting(s) }: popbox has no per-address settings",
    }
    for text, note in expect.items():
        number = next(n for n, line in enumerate(V24.splitlines(), 1)
                      if line.strip().startswith(text))
        assert any(n.startswith(f"{conf}:{number}:") and note in n for n in notes), (
            text, notes)


def test_plaintext_and_tls_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "dovecot.conf"
    conf.write_text("ssl = required\nssl_cert = </c.pem\nssl_key = </k.pem\n"
                    "disable_plaintext_auth = no\nprotocols = imap\n"
                    "mail_location = maildir:/var/vmail/%d/%n:INDEX=/var/idx/%u:"
                    "CONTROL=/var/ctl/%u\n"
                    "pop3_uidl_format = %f\n")
    data, notes = convert(conf, capsys)
    auth = data["auth"]
    assert isinstance(auth, dict)
    assert auth["cleartext"] == "local"  # ssl = required wins over the no
    assert auth["mail_location"] == "/var/vmail/{domain}/{local}"
    assert "store" not in data  # %f: no import
    assert any(n.startswith(f"{conf}:1:") and "ssl = required" in n for n in notes)
    assert any(n.startswith(f"{conf}:5:") and "did not serve POP3" in n for n in notes)
    assert any(n.startswith(f"{conf}:6:") and "INDEX=/var/idx/%u" in n for n in notes)
    assert any(n.startswith(f"{conf}:6:") and "CONTROL=/var/ctl/%u" in n and
               "copy it in" in n for n in notes)
    assert any(n.startswith(f"{conf}:7:") and "uidl audit" in n for n in notes)
    conf.write_text("ssl = no\nmail_location = sdbox:~/mail\n")
    data, notes = convert(conf, capsys)
    assert "tls" not in data
    assert data["server"] == {"listen": ["0.0.0.0:110", "[::]:110"]}
    assert any("POP3S) dropped" in n for n in notes)
    assert any(n.startswith(f"{conf}:2:") and "sdbox" in n for n in notes)


@pytest.mark.parametrize("syntax", ["2.3", "2.4"])
def test_passwd_file_with_a_static_userdb(syntax: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The usual virtual-user layout: passwords in a file, homes from a template."""
    conf = tmp_path / "dovecot.conf"
    if syntax == "2.3":
        conf.write_text("passdb {\n  driver = passwd-file\n  args = scheme=PLAIN "
                        "username_format=%u /etc/dovecot/users\n}\nuserdb {\n  driver = static"
                        "\n  args = uid=vmail gid=vmail home=/var/vmail/%d/%n\n}\n"
                        "mail_location = maildir:~/Maildir\n")
    else:
        conf.write_text("dovecot_config_version = 2.4.0\npassdb passwd-file {\n"
                        "  passwd_file_path = /etc/dovecot/users\n}\nuserdb static {\n"
                        "  fields {\n    uid = vmail\n    home = /var/vmail/%{user | domain}/"
                        "%{user | username}\n  }\n}\nmail_driver = maildir\n"
                        "mail_path = ~/Maildir\n")
    data, notes = convert(conf, capsys)
    auth = data["auth"]
    assert isinstance(auth, dict)
    assert auth["passwd_file"] == "/etc/dovecot/users"
    assert auth["mail_location"] == "/var/vmail/{domain}/{local}/Maildir"
    scheme = [n for n in notes if "scheme=" in n]
    assert len(scheme) == (syntax == "2.3"), notes  # PLAIN: write {PLAIN} before each
    if syntax == "2.4":
        assert any(n.startswith(f"{conf}:7:") and "userdb static uid" in n for n in notes)


def test_output_file_is_private_and_whole(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "dovecot.conf"
    conf.write_text("mail_location = maildir:~/Maildir\n")
    out = tmp_path / "popbox.toml"
    out.write_text("old contents\n")
    out.chmod(0o644)
    assert main(["migrate", "dovecot", str(conf), "--output", str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    auth = tomllib.loads(out.read_text())["auth"]
    assert auth["mail_location"] == "~/Maildir"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert main(["migrate", "dovecot", str(tmp_path / "nothing")]) == 2
    conf.write_text("service pop3 {\n")
    assert main(["migrate", "dovecot", str(conf), "--output", str(out)]) == 2
    assert f"{conf}:1:" in capsys.readouterr().err
    assert tomllib.loads(out.read_text())["auth"]["mail_location"] == "~/Maildir"  # kept


# --- SQL passdbs, against a real PostgreSQL ---

DOVECOT_TABLE = """
CREATE TABLE mailusers (userid text NOT NULL, domain text NOT NULL, password text NOT NULL,
                        home text NOT NULL, uid integer NOT NULL, gid integer NOT NULL);
INSERT INTO mailusers VALUES
  ('alice', 'example.org', '{PLAIN}alice-pw', '/srv/vmail/example.org/alice', 5000, 5000),
  ('bob', 'example.net', '{PLAIN}bob-pw', '/srv/vmail/example.net/bob', 5000, 5000);
"""


def _libpq_words(dsn: str) -> str:
    """Dovecot's connect= string for a postgresql:// DSN."""
    match = re.fullmatch(r"postgresql://([^@]+)@([^:/]+):(\d+)/(\w+)", dsn)
    assert match, dsn
    user, host, port, db = match.groups()
    return f"host={host} port={port} dbname={db} user={user}"


async def _copy_and_verify(dovecot_dsn: str, popbox_dsn: str, select: str) -> list[Verdict]:
    old = await asyncpg.connect(dovecot_dsn)
    try:
        rows = await old.fetch(select)
    finally:
        await old.close()
    new = await asyncpg.connect(popbox_dsn)
    try:
        for row in rows:
            columns = list(row.keys())
            marks = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
            await new.execute(f"INSERT INTO users ({', '.join(columns)}) "  # noqa: S608
                              f"VALUES ({marks})", *row.values())
    finally:
        await new.close()
    db = Database(popbox_dsn, max_size=2)
    users = PostgresUsers(db, "/srv/vmail/{domain}/{local}/Maildir", cache_ttl=0)
    try:
        return [
            await users.verify("alice@example.org", Secret(b"alice-pw")),
            await users.verify("bob@example.net", Secret(b"bob-pw")),
            await users.verify("bob@example.net", Secret(b"alice-pw")),
        ]
    finally:
        await db.close()


@pytest.mark.parametrize("syntax", ["2.3", "2.4"])
def test_sql_passdb(syntax: str, tmp_path: Path, pg_server: str,
                    capsys: pytest.CaptureFixture[str]) -> None:
    """The DSN from connect= (2.3) or pgsql { parameters } (2.4) reaches the database;
    the SELECT made from the queries gives the users, which popbox then accepts."""
    password_query = ("SELECT userid AS username, domain, password FROM mailusers "
                      "WHERE userid = '%n' AND domain = '%d'")
    user_query = "SELECT home, uid, gid FROM mailusers WHERE userid = '%n' AND domain = '%d'"
    with fresh_database(pg_server) as dovecot_dsn, fresh_database(pg_server) as popbox_dsn:
        run(_exec(dovecot_dsn, DOVECOT_TABLE))
        run(migrate(popbox_dsn))
        conf = tmp_path / "dovecot.conf"
        connect = _libpq_words(dovecot_dsn)
        if syntax == "2.3":
            (tmp_path / "dovecot-sql.conf.ext").write_text(
                f"driver = pgsql\nconnect = {connect}\n"
                "password_query = " + password_query.replace(" FROM", " \\\n    FROM") + "\n"
                f"user_query = {user_query}\n")
            conf.write_text(f"passdb {{\n  driver = sql\n  args = {tmp_path}/"
                            "dovecot-sql.conf.ext\n}\nuserdb {\n  driver = prefetch\n}\n"
                            "mail_location = maildir:~/Maildir\n")
        else:
            params = "\n".join(f"    {w.replace('=', ' = ', 1)}" for w in connect.split()
                               if not w.startswith("host="))
            host = connect.split()[0].partition("=")[2]
            conf.write_text(f"dovecot_config_version = 2.4.0\nsql_driver = pgsql\n"
                            f"pgsql {host} {{\n  parameters {{\n{params}\n  }}\n}}\n"
                            f"passdb sql {{\n  query = {password_query}\n}}\n"
                            f"userdb sql {{\n  query = {user_query}\n}}\n"
                            "mail_driver = maildir\nmail_path = ~/Maildir\n")
        data, notes = convert(conf, capsys)
        postgres, auth = data["postgres"], data["auth"]
        assert isinstance(postgres, dict) and isinstance(auth, dict)
        assert auth["backend"] == "postgres"
        dsn = postgres["dsn"]
        assert isinstance(dsn, str)
        assert run(_exec(dsn, "SELECT 1")) is None  # the DSN reaches Dovecot's database
        assert not [n for n in notes if "userdb" in n]  # prefetch, or the same queries
        copy = [n for n in notes if "SELECT" in n]
        assert len(copy) == 1, notes
        select = copy[0][copy[0].index("SELECT"):]
        assert select == ("SELECT userid || '@' || domain AS name, password AS password, "
                          "home AS home, uid AS uid, gid AS gid FROM mailusers")
        verdicts = run(_copy_and_verify(dovecot_dsn, popbox_dsn, select))
        assert verdicts == [Verdict.OK, Verdict.OK, Verdict.REJECTED]


async def _exec(dsn: str, sql: str) -> None:
    conn = await asyncio.wait_for(asyncpg.connect(dsn), 10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def test_sql_other_drivers_and_unreadable_file(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "dovecot.conf"
    (tmp_path / "sql.ext").write_text("driver = mysql\nconnect = host=db dbname=mail\n")
    conf.write_text(f"passdb {{\n  driver = sql\n  args = {tmp_path}/sql.ext\n}}\n")
    data, notes = convert(conf, capsys)
    assert "postgres" not in data
    assert any(n.startswith(f"{conf}:3:") and "'mysql'" in n for n in notes), notes
    conf.write_text(f"passdb {{\n  driver = sql\n  args = {tmp_path}/none.ext\n}}\n")
    data, notes = convert(conf, capsys)
    assert any(n.startswith(f"{conf}:3:") and "cannot read" in n for n in notes), notes


def peer_2_4(dovecot: Dovecot) -> str:
    """The tests' Dovecot configuration (dovecot_peer.py, 2.3) in 2.4's syntax, written
    from "Upgrading Dovecot CE from 2.3 to 2.4" and "Dovecot Config File Syntax"."""
    root = dovecot.root
    return f"""dovecot_config_version = 2.4.0
dovecot_storage_version = 2.4.0
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
instance_name = popbox-test
protocols = pop3
listen = 127.0.0.1
ssl = yes
ssl_server_cert_file = {dovecot.cert}
ssl_server_key_file = {dovecot.key}
auth_allow_cleartext = yes
auth_failure_delay = 0
auth_mechanisms = plain login cram-md5 scram-sha-1 scram-sha-256 apop
default_internal_user = dovecot
default_login_user = dovenull
mail_uid = 65534
mail_gid = 65534
mail_driver = maildir
mail_path = {dovecot.mail}/%{{user}}/Maildir
pop3_lock_session = yes
passdb passwd-file {{
  passwd_file_path = {dovecot.users}
}}
userdb passwd-file {{
  passwd_file_path = {dovecot.users}
}}
service pop3-login {{
  inet_listener pop3 {{
    listen = 127.0.0.1
    port = {dovecot.port}
  }}
  inet_listener pop3s {{
    listen = 127.0.0.1
    port = {dovecot.tls_port}
    ssl = yes
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


def test_2_3_and_2_4_spellings_convert_alike(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    dovecot = Dovecot(b"cert", b"key")
    try:
        dovecot.port, dovecot.tls_port = 110, 995
        old = tmp_path / "2.3" / "dovecot.conf"
        new = tmp_path / "2.4" / "dovecot.conf"
        for path, text in ((old, dovecot.config_text()), (new, peer_2_4(dovecot))):
            path.parent.mkdir()
            path.write_text(text)
        converted_old, notes_old = convert(old, capsys)
        converted_new, notes_new = convert(new, capsys)
    finally:
        dovecot.stop()
    assert converted_new == converted_old
    assert converted_old["server"] == {"listen": ["127.0.0.1:110"], "user": "nobody",
                                       "group": "nogroup"}
    assert len(notes_new) == len(notes_old) + 1  # dovecot_storage_version: Dovecot's own


@pytest.mark.parametrize("high_performance", [False, True])
def test_benchmark_dovecot_configuration(high_performance: bool, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The other Dovecot configuration the project writes (bench/servers.py), in both of
    its login modes: the file passes `popbox check-config`; the POP3S listener it turns
    off (port 0) stays off; its process tuning is reported, one line per setting."""
    from bench.servers import Dovecot as BenchDovecot

    users = tmp_path / "users"
    users.write_text("alice:{PLAIN}secret::::::\n")
    server = BenchDovecot(tmp_path / "work", users, tmp_path / "mail", 100,
                          (tmp_path / "cert.pem", tmp_path / "key.pem"),
                          high_performance=high_performance)
    server.port = 2110
    server.conf.write_text(server.config_text())
    data, notes = convert(server.conf, capsys)
    assert data["server"] == {"listen": ["127.0.0.1:2110"], "user": "nobody",
                              "group": "nogroup"}
    assert data["tls"] == {"cert": str(tmp_path / "cert.pem"),
                           "key": str(tmp_path / "key.pem")}
    tuning = [n.split(": ", 1)[1] for n in notes if "one process serves" in n]
    expected = ["service pop3-login: service_count", "service pop3: process_limit"]
    if high_performance:
        expected.insert(1, "service pop3-login: process_min_avail")
    assert [t.split(" = ")[0] for t in tuning] == expected
    auth = data["auth"]
    assert isinstance(auth, dict)
    assert auth["cache_ttl"] == 3600  # auth_cache_size = 10M, Dovecot's default TTL
    config = tmp_path / "popbox.toml"
    assert main(["migrate", "dovecot", str(server.conf), "--output", str(config)]) == 0
    capsys.readouterr()
    assert main(["check-config", "--config", str(config)]) == 0
    assert capsys.readouterr().out == f"{config}: OK\n"
