"""A Dovecot 2.3 or 2.4 configuration (a `dovecot_conf` tree) as popbox.toml settings.

`convert(tree, host)` gives the popbox sections (plain data, ready for `popbox.config`)
and a `Note` for every setting it could not carry over, each with its file and line.
No I/O of its own: the files it must look into (a passdb's dovecot-sql.conf.ext) and the
user names behind numeric ids come through `host`. The passdb and userdb rules are in
`popbox.migrate.dovecot_auth`.

What POP3 sees in Dovecot is the top level with ``protocol pop3 { }`` (and ``protocol
!imap``-style blocks) on top; the settings of other protocols and services are reported
once per block. The syntax is told by ``dovecot_config_version`` (2.4 requires it first;
doc.dovecot.org "Upgrading Dovecot CE from 2.3 to 2.4" lists the renamed settings used
here: ``ssl_server_cert_file``, ``auth_allow_cleartext``, ``mail_driver``/``mail_path``,
``passwd_file_path``, named ``passdb``/``userdb`` blocks, ``%{user | domain}`` variables).

UIDLs (RFC 1939 §7): popbox's own Maildir UIDL is a file name's unique part, up to the
first ``,`` or ``:``. Dovecot's default ``pop3_uidl_format`` (``%08Xu%08Xv``; 2.4
``%{uid | hex(8)}%{uidvalidity | hex(8)}``) is the IMAP uid and uidvalidity in hex (lower
case, as Dovecot prints them), kept
in each maildir's ``dovecot-uidlist``: then ``store.uidl_import = "dovecot"`` makes
popbox list what Dovecot listed. ``%f``/``%g`` is the file name up to ``:`` (seen from
Dovecot 2.3.19): the same as popbox's for names without ``,S=``, not for Dovecot's own
deliveries. `popbox uidl audit` compares the two for real before the switch.
"""

from __future__ import annotations

from popbox.migrate.dovecot_auth import DatabaseRules
from popbox.migrate.dovecot_conf import Section, Value, Where
from popbox.migrate.dovecot_context import Host, Result
from popbox.migrate.dovecot_values import (
    address,
    location_template,
    networks,
    seconds,
    words,
    yes,
)
from popbox.proto import sasl

LOOPBACK = ["127.0.0.0/8", "::1/128"]
DEFAULT_UIDL_FORMATS = frozenset({"%08Xu%08Xv", "%{uid|hex(8)}%{uidvalidity|hex(8)}"})
FILENAME_UIDL_FORMATS = frozenset({"%f", "%g", "%{filename}", "%{guid}"})
POP3_SERVICES = frozenset({"pop3", "pop3-login"})

# Leftover settings: why they do not carry over, by name prefix (first match wins).
_REASONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("imap", "submission", "lmtp", "lda_", "sieve", "managesieve", "quota", "acl",
      "mail_plugins", "fts", "postmaster_address", "recipient_delimiter", "mailbox_",
      "lazy_expunge", "mail_attribute", "push_notification", "doveadm", "replication",
      "dsync", "director"), "not used by POP3"),
    (("log_", "info_log", "debug_log", "syslog", "mail_debug", "auth_verbose",
      "auth_debug", "verbose_", "login_log_format", "mail_log_prefix", "log_path"),
     "popbox logs to standard error with fixed fields (README: Logs)"),
    (("base_dir", "state_dir", "instance_name", "default_", "mail_privileged_group",
      "first_valid", "last_valid", "dovecot_", "import_environment", "shutdown_clients",
      "version_ignore", "login_plugin", "mail_cache", "mail_fsync", "mmap_", "lock_method",
      "mail_nfs", "maildir_", "mbox_", "mail_temp", "mail_full_filesystem_access",
      "valid_chroot_dirs", "mail_chroot", "mail_access_groups", "mail_attachment",
      "mail_index", "stats", "metric", "event_"),
     "Dovecot-internal; nothing to carry over"),
    (("ssl_",), "popbox chooses its own TLS parameters (TLS 1.2 or later, forward-secret "
     "AEAD ciphers; README: Security)"),
)


def convert(tree: Section, host: Host) -> Result:
    return _Converter(tree, host).run()


class _Converter(DatabaseRules):
    # --- the conversion ---

    def run(self) -> Result:
        self.take("dovecot_config_version", "dovecot_storage_version")
        self._protocols()
        tls = self._tls()
        self._listeners(tls)
        self._auth(tls)
        self._databases()
        self._mail()
        self._pop3()
        self._leftovers()
        return self.result

    def _protocols(self) -> None:
        value = self.take("protocols")
        if value is not None and "pop3" not in words(value.text):
            self.note(value.where, f"protocols = {value.text}: Dovecot did not serve POP3 "
                      "with this configuration")

    def _tls(self) -> bool:
        ssl = self.take("ssl")
        mode = ssl.text.lower() if ssl is not None else "yes"
        self.ssl_where = ssl.where if ssl is not None else None
        cert = self.take("ssl_server_cert_file", "ssl_cert")
        key = self.take("ssl_server_key_file", "ssl_key")
        if mode == "no":
            for value in (cert, key):
                if value is not None:
                    self.note(value.where, "ssl = no: Dovecot did not use this file; "
                              "popbox offers no TLS")
            return False
        for value, what in ((cert, "certificate"), (key, "key")):
            if value is not None and not value.from_file and not self.v24:
                self.note(value.where, f"the TLS {what} is written inline; popbox needs "
                          "it in a file")
                return False
        if cert is None or key is None:
            self.note(ssl.where if ssl else None, "no TLS certificate and key: popbox "
                      "offers no STLS and no POP3S")
            return False
        self.put("tls", "cert", cert.text, cert.where)
        self.put("tls", "key", key.text, key.where)
        password = self.take("ssl_server_key_password", "ssl_key_password")
        if password is not None and password.text:
            self.note(password.where, "the TLS key has a password: popbox needs an "
                      "unencrypted key file (readable by root only)")
        low = self.take("ssl_min_protocol")
        if low is not None:
            version = low.text.upper().removeprefix("TLSV")
            if version in ("1.2", "1.3"):
                self.put("tls", "min_version", version, low.where)
            else:
                self.note(low.where, f"ssl_min_protocol = {low.text}: popbox never "
                          "speaks below TLS 1.2")
        for section in self.tree.children("local_name"):
            sni_cert = self.take_in(section, "ssl_server_cert_file", "ssl_cert")
            sni_key = self.take_in(section, "ssl_server_key_file", "ssl_key")
            if section.name and sni_cert and sni_key:
                pairs = self.result.sections.setdefault("tls", {}).setdefault("sni", {})
                assert isinstance(pairs, dict)
                pairs[section.name.strip("\"")] = {"cert": sni_cert.text, "key": sni_key.text}
        return True

    def _listeners(self, tls: bool) -> None:
        listen = self.take("listen", "inet_listener_listen")
        hosts = words(listen.text) if listen is not None else ["*", "::"]
        service = self.tree.child("service", "pop3-login")
        defined = {s.name: s for s in service.children("inet_listener")} if service else {}
        plain: list[str] = []
        implicit: list[str] = []
        for name in dict.fromkeys(["pop3", "pop3s", *(n for n in defined if n)]):
            listener = defined.get(name)
            port_value = self.take_in(listener, "port", "inet_listener_port") if listener \
                else None
            port_text = port_value.text if port_value else ("995" if name == "pop3s" else "110")
            ssl_value = self.take_in(listener, "ssl", "inet_listener_ssl") if listener \
                else None
            is_tls = yes(ssl_value, name == "pop3s")
            where = port_value.where if port_value else (listener.where if listener else None)
            if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
                self.note(where, f"inet_listener {name}: port {port_text!r} is not a port")
                continue
            if int(port_text) == 0:
                continue
            # 2.3 "address"; 2.4 "listen" (inet_listener_listen), "address" kept as alias
            address_value = self.take_in(listener, "address", "listen",
                                         "inet_listener_listen") if listener else None
            addresses = words(address_value.text) if address_value else hosts
            if listener is not None:
                haproxy = self.take_in(listener, "haproxy", "inet_listener_haproxy")
                if yes(haproxy, False):
                    self.note(haproxy.where if haproxy else where, f"inet_listener {name} "
                              "expects HAProxy's PROXY protocol: popbox requires it from "
                              "server.proxy_networks (haproxy_trusted_networks)")
            if is_tls and not tls:
                self.note(where or self.ssl_where,
                          f"inet_listener {name} (POP3S) dropped: no TLS certificate")
                continue
            for host in addresses:
                where_to = address(host)
                if where_to is None:
                    self.note(where, f"inet_listener {name}: address {host!r} is not an IP "
                              "address")
                    continue
                (implicit if is_tls else plain).append(f"{where_to}:{port_text}")
        self.put("server", "listen", plain, listen.where if listen else None)
        if implicit:
            self.put("tls", "implicit", implicit, None)
        if service is not None:
            self.done_sections.add(id(service))
            for listener in service.children("inet_listener"):
                self.done_sections.add(id(listener))

    def _auth(self, tls: bool) -> None:
        mechanisms = self.take("auth_mechanisms")
        names = words(mechanisms.text.upper()) if mechanisms else ["PLAIN"]
        chosen: list[str] = []
        for name in names:
            if name == "APOP":
                self.put("auth", "apop", True, mechanisms.where if mechanisms else None)
            elif name in sasl.INFO:
                chosen.append(name)
            else:
                self.note(mechanisms.where if mechanisms else None,
                          f"auth_mechanisms: popbox has no {name}")
        self.put("auth", "mechanisms", chosen, mechanisms.where if mechanisms else None)
        if any(n.startswith(("SCRAM", "CRAM")) for n in chosen):
            # Dovecot derives CRAM-MD5 and SCRAM from {PLAIN} passwords; so does popbox
            # when asked to.
            self.put("auth", "derive_credentials", True,
                     mechanisms.where if mechanisms else None)
        ssl = self.take("ssl")
        if self.v24:
            cleartext = self.take("auth_allow_cleartext")
            allowed = yes(cleartext, False)
        else:
            cleartext = self.take("disable_plaintext_auth")
            allowed = not yes(cleartext, True)
        if ssl is not None and ssl.text.lower() == "required":
            allowed = False
            self.note(ssl.where, "ssl = required: popbox refuses plaintext passwords "
                      "without TLS except from auth.local_networks, but allows SCRAM and "
                      "CRAM-MD5 without TLS")
        self.put("auth", "cleartext", "always" if allowed else "local",
                 cleartext.where if cleartext else None)
        trusted = self.take("login_trusted_networks")
        if trusted is not None:
            good, bad = networks(trusted.text)
            self.put("auth", "local_networks", LOOPBACK + good, trusted.where)
            if bad:
                self.note(trusted.where, f"login_trusted_networks: not networks: {bad}")
        proxies = self.take("haproxy_trusted_networks")
        if proxies is not None:
            good, bad = networks(proxies.text)
            self.put("server", "proxy_networks", good, proxies.where)
            if bad:
                self.note(proxies.where, f"haproxy_trusted_networks: not networks: {bad}")
        delay = self.take("auth_failure_delay")
        if delay is not None:
            delay_s = seconds(delay.text)
            if delay_s is None:
                self.note(delay.where, f"auth_failure_delay = {delay.text}: not a time")
            else:
                self.put("limits", "penalty_initial", delay_s, delay.where)
        self._auth_cache()
        for key in ("auth_username_format", "auth_username_translation",
                    "auth_default_realm", "auth_default_domain", "auth_realms"):
            value = self.take(key)
            if value is not None:
                self.note(value.where, f"{key} = {value.text}: popbox looks users up by the "
                          "name given, with the domain lower-cased")

    def _auth_cache(self) -> None:
        """Dovecot's auth cache (off unless auth_cache_size is set) and popbox's, which
        remembers verified slow-hash logins for auth.cache_ttl seconds."""
        size = self.take("auth_cache_size")
        ttl = self.take("auth_cache_ttl")
        if size is None or size.text.strip() in ("0", ""):
            if size is not None:
                self.note(size.where, "auth_cache_size = 0: Dovecot cached no logins; "
                          "popbox remembers verified slow-hash logins for auth.cache_ttl "
                          "(300 s; 0 turns it off)")
            return
        ttl_s = seconds(ttl.text) if ttl is not None else 3600.0  # Dovecot's default: 1 hour
        if ttl_s is None or not 0 <= ttl_s <= 86_400:
            self.note(ttl.where if ttl else size.where, "auth_cache_ttl: popbox takes 0 to "
                      "86400 seconds")
            return
        self.put("auth", "cache_ttl", ttl_s, ttl.where if ttl else size.where)

    # --- mail ---

    def _mail(self) -> None:
        home_value = self.take("mail_home")
        home = (home_value.text, home_value.where) if home_value else self.static_home
        if self.v24:
            driver_value = self.take("mail_driver")
            path_value = self.take("mail_path")
            inbox_value = self.take("mail_inbox_path")
            if driver_value is None:
                self.note(None, "no mail_driver: Dovecot looked for the mail itself; "
                          "popbox's default mail location is kept")
                return
            driver, where = driver_value.text.lower(), driver_value.where
            path = path_value.text if path_value else "~/Maildir"  # 2.4's maildir default
            inbox = inbox_value.text if inbox_value else None
            options: list[str] = []
            control = self.take("mail_control_path")
            if control is not None:
                options.append(f"CONTROL={control.text}")
        else:
            location = self.take("mail_location")
            if location is None or not location.text:
                self.note(None, "no mail_location: Dovecot looked for the mail itself; "
                          "popbox's default mail location is kept")
                return
            where = location.where
            driver, sep, rest = location.text.partition(":")
            if not sep:
                driver, rest = "", location.text
            parts = rest.split(":")
            path, options = parts[0], parts[1:]
            inbox = None
            for option in list(options):
                if option.upper().startswith("INBOX="):
                    inbox = option.partition("=")[2]
                    options.remove(option)
            driver = driver.lower()
        for option in options:
            if option.upper().startswith("CONTROL="):
                self.note(where, f"mail location option {option}: Dovecot keeps "
                          "dovecot-uidlist there, and popbox's store.uidl_import reads it "
                          "from the maildir itself: copy it in before the switch (popbox "
                          "uidl audit shows the difference)")
            else:
                self.note(where, f"mail location option {option}: not needed by popbox")
        if driver == "maildir":
            self._maildir(path, home, where)
        elif driver == "mbox":
            self._mbox(inbox, where)
        else:
            self.note(where, f"mail format {driver or '(unnamed)'}: popbox serves Maildir "
                      "(and PostgreSQL); convert the mail first, e.g. `doveadm sync -u USER "
                      "maildir:~/Maildir`")

    def _maildir(self, path: str, home: tuple[str, Where] | None, where: Where) -> None:
        if path.startswith("~") and home is not None:
            path = home[0].rstrip("/") + path[1:]
        template, remarks = location_template(path)
        for remark in remarks:
            self.note(where, f"mail location {path}: {remark}")
        if template is None:
            return
        self.put("auth", "mail_location", template, where)
        self.maildir = True

    maildir = False
    ssl_where: Where | None = None

    def _mbox(self, inbox: str | None, where: Where) -> None:
        if inbox is None:
            self.note(where, "mbox without an INBOX path: popbox cannot tell which file "
                      "POP3 served")
            return
        template, remarks = location_template(inbox)
        for remark in remarks:
            self.note(where, f"mbox INBOX {inbox}: {remark}")
        if template is None:
            return
        self.put("auth", "mail_location", "mbox:" + template, where)

    # --- POP3 behaviour ---

    def _pop3(self) -> None:
        uidl = self.take("pop3_uidl_format")
        fmt = uidl.text.replace(" ", "") if uidl else (
            "%{uid|hex(8)}%{uidvalidity|hex(8)}" if self.v24 else "%08Xu%08Xv")
        saved = self.take("pop3_save_uidl")
        where = uidl.where if uidl else None
        if self.maildir:
            if fmt in DEFAULT_UIDL_FORMATS or yes(saved, False):
                self.put("store", "uidl_import", "dovecot", where)
                said = f"pop3_uidl_format = {fmt}" if uidl else (
                    f"pop3_uidl_format not set (Dovecot's default {fmt})")
                self.note(where, f"{said}: popbox's own UIDLs would "
                          "differ; store.uidl_import = \"dovecot\" makes popbox serve the "
                          "UIDLs in each maildir's dovecot-uidlist, the ones clients have")
            elif fmt in FILENAME_UIDL_FORMATS:
                self.note(where, f"pop3_uidl_format = {fmt}: the file name up to ':'. "
                          "popbox's UIDL stops at the first ',' as well: the same for mail "
                          "delivered without ',S=' in its name, different for Dovecot's own "
                          "deliveries. Check with `popbox uidl audit`")
            else:
                self.note(where, f"pop3_uidl_format = {fmt}: popbox cannot compute these "
                          "UIDLs, so clients that keep mail on the server will download it "
                          "again; with pop3_save_uidl = yes Dovecot records them in "
                          "dovecot-uidlist for store.uidl_import = \"dovecot\"")
        elif uidl is not None:
            self.note(where, f"pop3_uidl_format = {fmt}: popbox's UIDLs depend on its store")
        workarounds = self.take("pop3_client_workarounds")
        if workarounds is not None:
            names = words(workarounds.text)
            self.put("server", "workarounds", [n for n in names if n == "outlook-no-nuls"],
                     workarounds.where)
            for word in names:
                if word != "outlook-no-nuls":
                    self.note(workarounds.where, f"pop3_client_workarounds {word}: popbox "
                              "has no such workaround")
        greeting = self.take("login_greeting")
        if greeting is not None:
            self.put("server", "greeting", greeting.text, greeting.where)
        hostname = self.take("hostname")
        if hostname is not None:
            self.put("server", "hostname", hostname.text, hostname.where)
        per_ip = self.take("mail_max_userip_connections")
        if per_ip is not None:
            if per_ip.text.isdigit() and int(per_ip.text) >= 1:
                self.put("limits", "max_connections_per_ip", int(per_ip.text), per_ip.where)
                self.note(per_ip.where, "mail_max_userip_connections counted per user and "
                          "address; limits.max_connections_per_ip counts per address (one "
                          "session per maildrop always holds)")
            else:
                self.note(per_ip.where, f"mail_max_userip_connections = {per_ip.text}: not "
                          "a positive number")
        no_flags = self.take("pop3_no_flag_updates")
        if yes(no_flags, False):
            self.put("store", "mark_seen", False, no_flags.where if no_flags else None)
        lock = self.take("pop3_lock_session")
        if lock is not None and not yes(lock, False):
            self.note(lock.where, "pop3_lock_session = no: popbox always locks the maildrop "
                      "for the session (a second one gets -ERR [IN-USE])")
        for key, user_or_group in (("mail_uid", "user"), ("mail_gid", "group")):
            value = self.take(key)
            if value is None:
                continue
            name: str | None = value.text
            if value.text.isdigit():
                number = int(value.text)
                name = (self.host.user_name(number) if key == "mail_uid"
                        else self.host.group_name(number))
            if name:
                self.put("server", user_or_group, name, value.where)
            else:
                self.note(value.where, f"{key} = {value.text}: no such {user_or_group} here")
        logout = self.take("pop3_logout_format")
        if logout is not None:
            self.note(logout.where, "pop3_logout_format: popbox's logout line has fixed "
                      "fields (retr, dele, bytes; README: Logs)")

    # --- the rest ---

    def _leftovers(self) -> None:
        for section in self.tree.sections:
            self._leftover_section(section)
        for key, value in self.tree.settings.items():
            if (id(self.tree), key) not in self.used:
                self.note(value.where, f"{key} = {_short(value)}: {_reason(key)}")

    def _leftover_section(self, section: Section) -> None:
        label = section.kind + (f" {section.name}" if section.name else "")
        relevant = (section.kind == "protocol" and section in self.scopes) or (
            section.kind == "service" and section.name in POP3_SERVICES) or (
            id(section) in self.done_sections) or section.kind in ("local_name",
                                                                  "inet_listener")
        if not relevant:
            count = sum(len(s.settings) for s in section.walk())
            if count:
                why = ("not used by POP3" if section.kind in ("protocol", "service",
                                                              "namespace", "plugin")
                       else _reason(section.kind))
                if section.kind in ("local", "remote"):
                    why = "popbox has no per-address settings"
                self.note(section.where, f"{label} {{ {count} setting(s) }}: {why}")
            return
        for key, value in section.settings.items():
            if (id(section), key) not in self.used:
                why = _reason(key)
                if section.kind == "service":
                    why = "popbox has no equivalent (one process serves every session; " \
                          "see server.workers)"
                elif section.kind == "local_name":
                    why = f"only for TLS name {section.name}: popbox has per-name " \
                          "certificates only (tls.sni)"
                self.note(value.where, f"{label}: {key} = {_short(value)}: {why}")
        for sub in section.sections:
            self._leftover_section(sub)


def _short(value: Value) -> str:
    text = ("<" if value.from_file else "") + value.text
    return text if len(text) <= 60 else text[:57] + "..."


def _reason(key: str) -> str:
    for prefixes, reason in _REASONS:
        if key.startswith(prefixes):
            return reason
    return "popbox has no equivalent"
