"""User names, and the mail location templates they are put into.

A user name ends up inside a file system path (`/var/mail/{domain}/{local}`), so every
name is checked before it is looked up or used: no path separators, no NUL, no control,
format or space characters, no leading `.` or `-` in any part (so never `.` or `..`), at
most 255 UTF-8 bytes (one path component). A virtual user is `local@domain` with exactly
one `@` and both parts non-empty; its domain is case-insensitive and lowercased, its local
part is kept as given.

An operator may translate characters in names before any lookup (`translation`): SDPS
clients send `john+example.org` for `john@example.org`.

A location template is an optional `type:` prefix (`maildir:`) and a path in which
`{user}`, `{local}`, `{domain}` and `{home}` are replaced, once, and a leading `~` means the
home directory. A template that needs something the user does not have expands to None.
"""

from __future__ import annotations

import re
import unicodedata

_MAX_BYTES = 255
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+-]*:")
_VARIABLE = re.compile(r"\{([^{}]*)\}")


def _valid_part(part: str) -> bool:
    if not part or part[0] in ".-":
        return False
    for char in part:
        if char in "/\\@" or unicodedata.category(char)[0] in "CZ" or char.isspace():
            return False
    return True


def valid_username(name: str) -> bool:
    """True if `name` is safe to look up and to put into a path."""
    parts = name.split("@")
    if len(parts) > 2 or not all(_valid_part(part) for part in parts):
        return False
    return len(name.encode("utf-8")) <= _MAX_BYTES


def translation(pairs: list[str]) -> dict[int, str]:
    """A `str.translate` table from "from to" character pairs (Dovecot's
    auth_username_translation): ["+@", "%@"] turns john+example.org into john@example.org."""
    return {ord(pair[0]): pair[1] for pair in pairs}


def normalize_username(name: str) -> str:
    """`local@Domain` → `local@domain`; a name without a domain is returned as is."""
    local, at, domain = name.partition("@")
    return local + at + domain.lower()


def expand_location(template: str, user: str, home: str | None) -> str | None:
    """The template with the user's values put in, or None if one is missing or unknown."""
    if not valid_username(user):
        return None
    local, _, domain = normalize_username(user).partition("@")
    values: dict[str, str | None] = {
        "user": normalize_username(user),
        "local": local,
        "domain": domain or None,
        "home": home or None,
    }
    match = _PREFIX.match(template)
    prefix, path = (template[: match.end()], template[match.end() :]) if match else ("", template)
    base = ""
    if path == "~" or path.startswith("~/"):
        if not home:
            return None
        base, path = home.rstrip("/") if path != "~" else home, path[1:]

    missing = False

    def put(found: re.Match[str]) -> str:
        nonlocal missing
        value = values.get(found.group(1))
        if value is None:
            missing = True
            return ""
        return value

    expanded = _VARIABLE.sub(put, path)
    return None if missing else prefix + base + expanded
