"""popbox.migrate.dovecot_conf: Dovecot's configuration syntax, text in and a tree out
(doc.dovecot.org "Dovecot Config File Syntax"), with the edge cases checked against
Dovecot 2.3.19's own `doveconf` where it is installed: quoting, comments, `<file` values,
continuation lines, nested and merged sections, includes (relative, globbed, `_try`,
inside a section), `$variables`, and errors with their file and line. Each input is fed
as text and as bytes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popbox.migrate import dovecot_files
from popbox.migrate.dovecot_conf import IncludeError, Loader, ParseError, parse

BASIC = """\
# a comment
protocols = imap pop3   # trailing comment
listen = *, ::
login_greeting = "Mail # here, \\"quoted\\"  "
pop3_logout_format = 'single quoted'
ssl_cert = </etc/ssl/mail.pem
ssl_key=</etc/ssl/mail.key
auth_mechanisms = plain \\
     login\\
  cram-md5
mail_plugins = quota
mail_plugins = $mail_plugins acl
hash_in_value = abc#def
service pop3-login {
  inet_listener pop3s {
    port = 995
    ssl = yes
  }
  process_limit = 10
}
protocol pop3 {
  pop3_uidl_format = %f
}
mailbox "Sent Messages" {
  special_use = \\Sent
}
"""


def both(text: str) -> list[str | bytes]:
    return [text, text.encode()]


@pytest.mark.parametrize("data", both(BASIC))
def test_values_sections_and_places(data: str | bytes) -> None:
    tree = parse(data, "dovecot.conf")
    assert tree.to_dict() == {
        "protocols": "imap pop3",
        "listen": "*, ::",
        "login_greeting": 'Mail # here, "quoted"  ',
        "pop3_logout_format": "single quoted",
        "ssl_cert": "</etc/ssl/mail.pem",
        "ssl_key": "</etc/ssl/mail.key",
        "auth_mechanisms": "plain login cram-md5",
        "mail_plugins": "quota acl",
        "hash_in_value": "abc",
        "service pop3-login": {
            "process_limit": "10",
            "inet_listener pop3s": {"port": "995", "ssl": "yes"},
        },
        "protocol pop3": {"pop3_uidl_format": "%f"},
        "mailbox Sent Messages": {"special_use": "\\Sent"},
    }
    cert = tree.get("ssl_cert")
    assert cert is not None and cert.from_file and cert.text == "/etc/ssl/mail.pem"
    mechanisms = tree.get("auth_mechanisms")
    assert mechanisms is not None and str(mechanisms.where) == "dovecot.conf:8"
    service = tree.child("service", "pop3-login")
    assert service is not None and str(service.where) == "dovecot.conf:14"
    listener = service.child("inet_listener", "pop3s")
    assert listener is not None
    port = listener.get("port")
    assert port is not None and str(port.where) == "dovecot.conf:16"


def test_file_values_are_relative_to_their_file() -> None:
    tree = parse("ssl_cert = <private/cert.pem\nssl_key = <\"/abs/key.pem\"\n",
                 "/etc/dovecot/conf.d/10-ssl.conf")
    assert tree.text("ssl_cert") == "/etc/dovecot/conf.d/private/cert.pem"
    assert tree.text("ssl_key") == "/abs/key.pem"


def test_crlf_and_later_assignment_wins() -> None:
    tree = parse(b"ssl = yes\r\nssl = required\r\n", "x.conf")
    value = tree.get("ssl")
    assert value is not None and value.text == "required" and value.where.line == 2


def test_sections_of_one_name_merge_but_unnamed_passdbs_do_not() -> None:
    tree = parse("""service pop3-login {
  inet_listener pop3 {
    port = 110
  }
}
passdb {
  driver = passwd-file
}
passdb {
  driver = pam
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
  }
}
""")
    services = tree.children("service")
    assert len(services) == 1
    listener = services[0].child("inet_listener", "pop3")
    assert listener is not None
    assert listener.to_dict() == {"port": "110", "address": "127.0.0.1"}
    assert [p.text("driver") for p in tree.children("passdb")] == ["passwd-file", "pam"]


def test_2_4_groups_and_filters() -> None:
    tree = parse("""dovecot_config_version = 2.4.0
group @mysql default {
  host = db.example.org
}
@mysql = default
local 192.0.2.1 {
  remote 10.0.0.0/8 {
    protocol pop3 {
      login_greeting = hi
    }
  }
}
""")
    group = tree.child("group", "@mysql default")
    assert group is not None and group.text("host") == "db.example.org"
    assert tree.text("@mysql") == "default"
    assert tree.to_dict()["local 192.0.2.1"] == {
        "remote 10.0.0.0/8": {"protocol pop3": {"login_greeting": "hi"}}}
    with pytest.raises(ParseError, match=r"expected '=' or '\{'"):
        parse("group @a b c {\n}\n")


def test_2_4_variables_and_environment() -> None:
    tree = parse("""dovecot_config_version = 2.4.0
default_internal_user = vmail
mail_plugins = quota
mail_plugins = $SET:mail_plugins acl
owner = $SET:default_internal_user
cert = $ENV:CERT_PATH
missing = $SET:nothing end
""", env={"CERT_PATH": "/srv/cert.pem"})
    assert tree.text("mail_plugins") == "quota acl"
    assert tree.text("owner") == "vmail"
    assert tree.text("cert") == "/srv/cert.pem"
    assert tree.text("missing") == " end"


def loader(files: dict[str, str]) -> Loader:
    """A Loader over a dict, as dovecot_files.load is over the disk."""

    def load(pattern: str, including: str, allow_missing: bool) -> list[tuple[str, bytes | str]]:
        names = sorted(n for n in files if Path(n).match(pattern) or n == pattern)
        if not names and not allow_missing and "*" not in pattern:
            raise IncludeError("no such file")
        return [(n, files[n]) for n in names]

    return load


def test_include_keeps_the_section_it_is_in() -> None:
    files = {"pop3.conf": "pop3_uidl_format = %g\n", "a.conf": "x = 1\n", "b.conf": "x = 2\n"}
    tree = parse("""protocol pop3 {
  !include pop3.conf
}
!include *.conf
!include_try missing.conf
""", "dovecot.conf", loader(files))
    protocol = tree.child("protocol", "pop3")
    assert protocol is not None
    value = protocol.get("pop3_uidl_format")
    assert value is not None and str(value.where) == "pop3.conf:1"
    assert tree.text("x") == "2"  # a.conf, b.conf, pop3.conf in order: b's x last
    assert tree.text("pop3_uidl_format") == "%g"  # pop3.conf again, at the top level


@pytest.mark.parametrize(("text", "line", "reason"), [
    ("protocols = pop3\nfoo bar\n", 2, "expected '=' or '{'"),
    ("protocols = pop3\n}\n", 2, "unexpected '}'"),
    ("a = 1\nservice pop3 {\n  b = 2\n", 2, "not closed"),
    ("namespace inbox { prefix = INBOX/ }\n", 1, "text after '{'"),
    ('login_greeting = "abc\n', 1, "unterminated"),
    ("!include nothere.conf\n", 1, "no such file"),
    ("!require x\n", 1, "unknown directive"),
    ("a = 1\nb = \xff\n", 2, "not UTF-8"),
])
def test_errors_name_file_and_line(text: str, line: int, reason: str) -> None:
    data: str | bytes = text.encode("latin-1") if "\xff" in text else text
    with pytest.raises(ParseError) as caught:
        parse(data, "bad.conf", loader({}))
    assert caught.value.where.source == "bad.conf"
    assert caught.value.where.line == line
    assert reason in caught.value.reason


def test_include_loop_is_an_error() -> None:
    with pytest.raises(ParseError, match="nested more than"):
        parse("!include self.conf\n", "self.conf", loader({"self.conf": "!include self.conf\n"}))


def test_error_inside_an_included_file_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "dovecot.conf").write_text("!include conf.d/*.conf\n")
    (tmp_path / "conf.d" / "10-a.conf").write_text("ok = 1\n")
    (tmp_path / "conf.d" / "20-b.conf").write_text("ok = 2\n\nbroken line\n")
    with pytest.raises(ParseError) as caught:
        dovecot_files.read_config(tmp_path)
    assert str(caught.value.where) == f"{tmp_path}/conf.d/20-b.conf:3"


def test_files_relative_globbed_sorted_and_tried(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "dovecot.conf").write_text(
        "!include conf.d/*.conf\n!include_try local.conf\n!include conf.d/none-*.conf\n")
    (tmp_path / "conf.d" / "20-b.conf").write_text("order = $order b\n")
    (tmp_path / "conf.d" / "10-a.conf").write_text("order = a\n!include ../more.ext\n")
    (tmp_path / "more.ext").write_text("more = yes\n")
    tree = dovecot_files.read_config(tmp_path)
    assert tree.to_dict() == {"order": "a b", "more": "yes"}
    (tmp_path / "dovecot.conf").write_text("!include local.conf\n")
    with pytest.raises(ParseError, match=r"local\.conf: no such file"):
        dovecot_files.read_config(tmp_path / "dovecot.conf")


DEBIAN = Path("/etc/dovecot")


@pytest.mark.skipif(not (DEBIAN / "dovecot.conf").exists(), reason="no /etc/dovecot")
def test_debian_configuration_reads_as_doveconf_reads_it(tmp_path: Path) -> None:
    """Debian's own files (copied), against what `doveconf -n` says of them."""
    root = tmp_path / "dovecot"
    shutil.copytree(DEBIAN, root)
    tree = dovecot_files.read_config(root)
    assert "pop3" in tree.text("protocols").split()  # "$protocols pop3" in protocols.d
    assert tree.text("mail_location") == "mbox:~/mail:INBOX=/var/mail/%u"
    cert = tree.get("ssl_cert")
    assert cert is not None and cert.from_file
    assert cert.text == "/etc/dovecot/private/dovecot.pem"
    assert cert.where.source == f"{root}/conf.d/10-ssl.conf"
    assert [p.text("driver") for p in tree.children("passdb")] == ["pam"]
    assert [u.text("driver") for u in tree.children("userdb")] == ["passwd"]
    service = tree.child("service", "pop3-login")
    assert service is not None  # in 10-director.conf and 10-master.conf: one section
    assert sorted(s.name or "" for s in service.children("inet_listener")) == ["pop3", "pop3s"]
    if shutil.which("doveconf"):
        shown = subprocess.run(["doveconf", "-c", str(root / "dovecot.conf"), "-n"],
                               capture_output=True, text=True, timeout=30, check=True).stdout
        assert f'protocols = "{tree.text("protocols")}"' in shown  # " lmtp pop3", say
        assert f"mail_location = {tree.text('mail_location')}" in shown
        assert f"ssl_cert = <{cert.text}" in shown
        assert f"mail_privileged_group = {tree.text('mail_privileged_group')}" in shown


LINES = st.sampled_from([
    "a = b", "a=", "key = \"q\\\"x\"", "k = 'x", "s {", "s name {", "}", "!include x.conf",
    "!include_try *.conf", "# c", "", "x = $x y", "v = <file", "line \\", "{", "= v",
    "s n { k = v }", "k = v # c", "\t k \t=\t v", "k = $SET:k", "k = $ENV:HOME",
])


@given(st.lists(LINES, max_size=30), st.booleans())
def test_any_input_is_a_tree_or_a_parse_error(lines: list[str], as_bytes: bool) -> None:
    """Hostile or broken files give a ParseError with a place, never another exception."""
    text = "\n".join(lines)
    files = {"x.conf": "k = 1\n", "y.conf": "s {\n"}
    try:
        tree = parse(text.encode() if as_bytes else text, "f.conf", loader(files))
    except ParseError as exc:
        assert exc.where.source in ("f.conf", "x.conf", "y.conf")
        assert exc.where.line >= 1
    else:
        assert tree.kind == ""


@given(st.binary(max_size=200))
def test_arbitrary_bytes(data: bytes) -> None:
    try:
        parse(data, "f.conf")
    except ParseError as exc:
        assert exc.where.line >= 1
