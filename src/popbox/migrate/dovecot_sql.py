"""Dovecot's SQL passdb/userdb settings in popbox's terms: a libpq URI from
``connect = host=... dbname=...`` (dovecot-sql.conf.ext, or 2.4's ``pgsql HOST {
parameters { } }``), and a SELECT that gives the users of Dovecot's ``password_query`` and
``user_query`` in the columns of popbox's ``users`` table (popbox.pg.schema).

Dovecot's queries name their columns by ``AS`` aliases (doc.dovecot.org "SQL"):
``user`` or ``username`` + ``domain``, ``password``, ``home``/``userdb_home``,
``mail``/``userdb_mail``, ``uid``, ``gid``. Queries of the common shape ``SELECT ...
FROM table [WHERE ...]`` on one table are mapped; anything else is reported instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote


def _libpq_words(text: str) -> list[tuple[str, str]]:
    """``key=value key='quoted value'`` as libpq connection strings write them."""
    pairs, i = [], 0
    while i < len(text):
        match = re.compile(r"\s*([A-Za-z_]+)\s*=\s*").match(text, i)
        if not match:
            break
        i = match.end()
        if i < len(text) and text[i] == "'":
            out, i = [], i + 1
            while i < len(text) and text[i] != "'":
                if text[i] == "\\" and i + 1 < len(text):
                    i += 1
                out.append(text[i])
                i += 1
            value, i = "".join(out), i + 1
        else:
            end = i
            while end < len(text) and not text[end].isspace():
                end += 1
            value, i = text[i:end], end
        pairs.append((match.group(1), value))
    return pairs


def pgsql_dsn(connect: str | dict[str, str]) -> tuple[str, list[str]]:
    """A libpq URI from Dovecot's ``connect = host=... dbname=...`` (or 2.4's
    ``parameters``), with remarks."""
    pairs = list(connect.items()) if isinstance(connect, dict) else _libpq_words(connect)
    remarks = []
    params: dict[str, str] = {}
    for key, value in pairs:
        if key == "host" and "host" in params:
            remarks.append(f"several hosts: popbox uses the first, {params['host']}")
            continue
        params.setdefault(key, value)
    host = params.pop("host", "")
    port = params.pop("port", "")
    user = params.pop("user", "")
    password = params.pop("password", "")
    dbname = params.pop("dbname", "")
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    netloc = (auth + "@" if auth else "")
    if host.startswith("/"):  # a socket directory goes in the query
        params["host"] = host
        host = ""
    elif ":" in host:
        host = f"[{host}]"
    netloc += host + (":" + port if port else "")
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params.items())
    return f"postgresql://{netloc}/{quote(dbname, safe='')}" + ("?" + query if query else ""), \
        remarks


_SELECT = re.compile(r"^\s*select\s+(?P<columns>.*?)\s+from\s+(?P<table>.*?)"
                     r"(?:\s+where\s+.*)?$", re.IGNORECASE | re.DOTALL)
# popbox users column -> the names a Dovecot query may give it (AS aliases)
_COLUMNS = {
    "password": ("password",),
    "home": ("home", "userdb_home"),
    "mail": ("mail", "userdb_mail"),
    "uid": ("uid", "userdb_uid"),
    "gid": ("gid", "userdb_gid"),
}


def _split_columns(text: str) -> list[str]:
    out: list[str] = []
    current: list[str] = []
    depth, quote_char = 0, ""
    for char in text:
        if quote_char:
            quote_char = "" if char == quote_char else quote_char
        elif char in "'\"":
            quote_char = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            out.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    if current:
        out.append("".join(current).strip())
    return out


def _alias(column: str) -> tuple[str, str]:
    match = re.match(r"^(.*?)\s+as\s+\"?([A-Za-z_][A-Za-z0-9_]*)\"?\s*$", column,
                     re.IGNORECASE | re.DOTALL)
    if match:
        return match.group(1).strip(), match.group(2).lower()
    name = column.strip().split(".")[-1].strip('"').lower()
    return column.strip(), name


def sql_copy(queries: Iterable[str]) -> tuple[str | None, str]:
    """A SELECT giving the users of Dovecot's password/user queries in the columns of
    popbox's ``users`` table, or None and why not."""
    found: dict[str, str] = {}
    tables: list[str] = []
    for query in queries:
        match = _SELECT.match(query.strip().rstrip(";"))
        if not match:
            return None, f"cannot read the query {query.strip()[:60]!r}"
        tables.append(match.group("table").strip())
        for column in _split_columns(match.group("columns")):
            expression, alias = _alias(column)
            found.setdefault(alias, expression)
    if len(set(tables)) != 1:
        return None, f"the queries read different tables ({', '.join(tables)})"
    if "user" in found:
        name = found["user"]
    elif "username" in found and "domain" in found:
        name = f"{found['username']} || '@' || {found['domain']}"
    elif "username" in found:
        name = found["username"]
    else:
        return None, "the queries give no user or username column"
    if "password" not in found:
        return None, "the password query gives no password column"
    columns = [("name", name)]
    for target, aliases in _COLUMNS.items():
        for alias in aliases:
            if alias in found:
                columns.append((target, found[alias]))
                break
    select = ", ".join(f"{expression} AS {target}" for target, expression in columns)
    # Text for the operator to read and run, made from their own queries.
    statement = f"SELECT {select} FROM {tables[0]}"  # noqa: S608
    return statement, ", ".join(t for t, _ in columns)
