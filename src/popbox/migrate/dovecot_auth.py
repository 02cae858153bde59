"""Dovecot's passdb and userdb blocks in popbox's terms: a passwd-file (the same file
works unchanged), a PostgreSQL DSN and users' SELECT for SQL (popbox.migrate.dovecot_sql),
a static userdb's home template, and a note for every other kind of database."""

from __future__ import annotations

from popbox.migrate.dovecot_conf import ParseError, Section, Where, parse
from popbox.migrate.dovecot_context import Context
from popbox.migrate.dovecot_sql import pgsql_dsn, sql_copy
from popbox.migrate.dovecot_values import yes

CRYPT_SCHEMES = frozenset({"CRYPT", "MD5-CRYPT", "SHA256-CRYPT", "SHA512-CRYPT", "BLF-CRYPT"})


class DatabaseRules(Context):
    """The first passdb that is neither a deny nor a master database decides
    `auth.backend`; its userdbs are checked against it."""

    def _driver(self, section: Section) -> str:
        value = self.take_in(section, "driver", f"{section.kind}_driver")
        return (value.text if value else section.name or "").lower()

    def _databases(self) -> None:
        passdbs = [s for s in self.tree.children("passdb")]
        userdbs = [s for s in self.tree.children("userdb")]
        for section in passdbs + userdbs:
            self.done_sections.add(id(section))
        usable = []
        for section in passdbs:
            for flag in ("deny", "master", "passdb_deny", "passdb_master"):
                value = self.take_in(section, flag)
                if yes(value, False):
                    self.note(value.where if value else section.where,
                              f"passdb {self._driver(section)} with {flag} = yes: popbox "
                              "has no deny or master-user databases")
                    break
            else:
                usable.append(section)
        if not usable:
            self.note(None, "no passdb: popbox's default users file "
                      "/etc/popbox/users is used")
            return
        first = usable[0]
        for extra in usable[1:]:
            self.note(extra.where, f"passdb {self._driver(extra)}: popbox reads one "
                      "password database; this one is left out")
        driver = self._driver(first)
        if driver == "passwd-file":
            self._passwd_file(first, userdbs)
        elif driver == "sql":
            self._sql(first, userdbs)
        else:
            self.note(first.where, _OTHER_DRIVERS.get(driver, f"passdb driver {driver}: "
                      "popbox reads a passwd-file or PostgreSQL") +
                      "; make a users file with `popbox user add`")
            for userdb in userdbs:
                kind = self._driver(userdb)
                self.note(userdb.where, f"userdb {kind}: popbox takes homes and mail "
                          "locations from its users file (userdb_mail=, userdb_home=) or "
                          "auth.mail_location")
        for section in passdbs + userdbs:
            for key, value in section.settings.items():
                if (id(section), key) not in self.used:
                    self.note(value.where, f"{section.kind} {key} = {value.text}: popbox "
                              "has no equivalent")
                    self.used.add((id(section), key))

    def _passwd_file_args(self, section: Section) -> tuple[str | None, dict[str, str],
                                                           Where]:
        args = self.take_in(section, "args")
        options: dict[str, str] = {}
        path = None
        if args is not None:
            for word in args.text.split():
                key, sep, value = word.partition("=")
                if sep and not word.startswith("/"):
                    options[key] = value
                else:
                    path = word
        named = self.take_in(section, "passwd_file_path", f"{section.kind}_passwd_file_path")
        if named is not None:
            path = named.text
        for key in ("default_password_scheme", "passdb_default_password_scheme"):
            scheme = self.take_in(section, key)
            if scheme is not None:
                options["scheme"] = scheme.text
        where = args.where if args is not None else (named.where if named else section.where)
        return path, options, where

    def _passwd_file(self, passdb: Section, userdbs: list[Section]) -> None:
        path, options, where = self._passwd_file_args(passdb)
        if path is None:
            self.note(where, "passdb passwd-file without a file name")
            return
        if "%" in path:
            self.note(where, f"passwd-file {path}: popbox reads one users file, not one "
                      "per user or domain")
            return
        self.put("auth", "backend", "passwd-file", where)
        self.put("auth", "passwd_file", path, where)
        scheme = options.pop("scheme", "CRYPT").upper()
        if scheme not in CRYPT_SCHEMES:  # those hashes tell their scheme by their prefix
            self.note(where, f"scheme={scheme}: popbox reads a password without a "
                      "{SCHEME} prefix as a crypt(3) hash; write {" + scheme + "} before "
                      "each such password")
        fmt = options.pop("username_format", "%u")
        if fmt not in ("%u", "%{user}", "%Lu"):
            self.note(where, f"username_format={fmt}: popbox looks up the whole "
                      "user@domain name in the file")
        for key in options:
            self.note(where, f"passwd-file option {key}: popbox has no equivalent")
        for userdb in userdbs:
            driver = self._driver(userdb)
            if driver == "passwd-file":
                other, _, uwhere = self._passwd_file_args(userdb)
                if other not in (None, path):
                    self.note(uwhere, f"userdb passwd-file {other}: popbox takes the users' "
                              f"homes and mail from {path}, the passdb's file")
            elif driver == "static":
                self._static_userdb(userdb)
            elif driver != "prefetch":
                self.note(userdb.where, f"userdb {driver}: popbox takes the users' homes "
                          f"and mail locations from {path}")

    def _static_userdb(self, userdb: Section) -> None:
        """2.3: ``args = uid=vmail gid=vmail home=/var/vmail/%d/%n``; 2.4: a ``fields
        { home = ... }`` block. The home goes into ``~`` of the mail location."""
        args = self.take_in(userdb, "args")
        found: dict[str, tuple[str, Where]] = {}
        for word in args.text.split() if args else []:
            key, _, text = word.partition("=")
            found[key] = (text, args.where if args else userdb.where)
        for block in userdb.sections:
            if block.kind in ("fields", "userdb_fields"):
                self.done_sections.add(id(block))
                home = self.take_in(block, "home")
                if home is not None:
                    found["home"] = (home.text, home.where)
                for key, value in block.settings.items():
                    if key != "home":
                        self.note(value.where, f"userdb static {key}: popbox has no "
                                  "per-user setting of that name")
        if "home" in found:
            self.static_home = found["home"]

    def _sql(self, passdb: Section, userdbs: list[Section]) -> None:
        queries: list[str] = []
        connect: str | dict[str, str] | None = None
        driver = "pgsql"
        where = passdb.where
        if self.v24:
            query = self.take_in(passdb, "query", "sql_query", "passdb_sql_query")
            if query is not None:
                queries.append(query.text)
            for userdb in userdbs:
                uquery = self.take_in(userdb, "query", "sql_query", "userdb_sql_query")
                if uquery is not None:
                    queries.append(uquery.text)
            drv = self.take("sql_driver")
            driver = drv.text if drv else "pgsql"
            for section in self.tree.children("pgsql"):
                self.done_sections.add(id(section))
                params: dict[str, str] = {"host": section.name or ""}
                for sub in section.children("parameters"):
                    self.done_sections.add(id(sub))
                    for key, value in sub.settings.items():
                        params[key] = value.text
                        self.used.add((id(sub), key))
                connect = connect or params
        else:
            args = self.take_in(passdb, "args")
            if args is None:
                self.note(passdb.where, "passdb sql without args (dovecot-sql.conf.ext)")
                return
            where = args.where
            for userdb in userdbs:  # the same file's user_query, or the passdb's fields
                kind = self._driver(userdb)
                uargs = userdb.get("args")
                if kind == "sql" and uargs is not None and uargs.text == args.text:
                    self.take_in(userdb, "args")
                elif kind != "prefetch":
                    self.note(userdb.where, f"userdb {kind}: popbox reads homes and mail "
                              f"locations from the users table")
            data = self.host.read(args.text)
            if data is None:
                self.note(args.where, f"cannot read {args.text}: the PostgreSQL DSN and "
                          "the users' columns are not carried over")
                return
            try:
                sql = parse(data, args.text)
            except ParseError as exc:
                self.note(args.where, f"{exc}")
                return
            driver = sql.text("driver", "")
            connect = sql.text("connect", "")
            for key in ("password_query", "user_query"):
                if sql.get(key) is not None:
                    queries.append(sql.text(key))
        if driver != "pgsql":
            self.note(where, f"SQL driver {driver!r}: popbox's database is PostgreSQL; "
                      "move the users into popbox's `users` table (popbox db upgrade; "
                      "popbox user add)")
            return
        if connect is not None:
            dsn, remarks = pgsql_dsn(connect)
            self.put("postgres", "dsn", dsn, where)
            for remark in remarks:
                self.note(where, remark)
        self.put("auth", "backend", "postgres", where)
        copy, columns = sql_copy(queries) if queries else (None, "no queries found")
        if copy is None:
            self.note(where, f"the users' columns could not be mapped ({columns}): popbox "
                      "reads its own `users` table (name, password, home, mail, uid, gid; "
                      "`popbox db upgrade` makes it)")
            return
        self.result.sql_copy = copy
        self.note(where, f"popbox reads its own `users` table ({columns}; `popbox db "
                  f"upgrade` makes it), not Dovecot's queries; this gives Dovecot's users "
                  f"in those columns: {copy}")



_OTHER_DRIVERS = {
    "pam": "passdb pam (system passwords): popbox cannot check passwords through PAM",
    "shadow": "passdb shadow (system passwords): popbox cannot read /etc/shadow",
    "checkpassword": "passdb checkpassword: popbox cannot run a checkpassword program",
    "ldap": "passdb ldap: popbox cannot ask an LDAP directory",
    "dict": "passdb dict: popbox cannot read a Dovecot dict",
    "lua": "passdb lua: popbox cannot run Lua",
    "static": "passdb static: popbox has no static password",
    "imap": "passdb imap: popbox cannot ask an IMAP server",
    "oauth2": "passdb oauth2: set up [oauth] instead (README: Configuration reference)",
    "bsdauth": "passdb bsdauth: popbox cannot use BSD authentication",
}
