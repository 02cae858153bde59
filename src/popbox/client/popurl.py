"""POP URLs (RFC 2384), pure: `pop://user;AUTH=mechanism@host:port` -> account settings.

Grammar (RFC 2384 §8, with RFC 1738's `uchar`): `"pop://" [enc-user [";AUTH=" ("*" /
enc-auth-type)] "@"] host [":" port]`; user and mechanism are percent-decoded (UTF-8),
the scheme and `AUTH` are case-insensitive. No password may appear (§3: `user:password`
is refused, as clear text passwords are not permitted). The port defaults to 110 (§3).

The mechanism (§4): a SASL name (`SCRAM-SHA-256`); `+APOP`, APOP (RFC 1939 §7); `*`,
any mechanism the client finds suitable, which is popbox's `auto`; a user name without
`;AUTH=` means `*` as well, so without `;AUTH=` the account's `auth` is left as it is
(by default `auto`). Other `+` extensions are refused.

`pops://` is accepted too, though RFC 2384 has only `pop://`: POP3 over implicit TLS
(RFC 8314 §3.3), default port 995, as mail clients that take POP URLs write it. A
`pop://` URL leaves `tls` to the account's other settings (popbox's default: implicit
on port 995, STLS on any other), so a URL never turns TLS off.

Lenient in one way: an "@" in the user name should be `%40`, but the last "@" is taken
as the one that ends the user part, so `pop://alice@example.org@pop.example.org` works.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

_ACHAR = re.compile(r"(?:[A-Za-z0-9$\-_.+!*'(),&=~@]|%[0-9A-Fa-f]{2})+")
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.?")
SCHEMES = {"pop": 110, "pops": 995}


class PopUrlError(ValueError):
    """Not a POP URL popbox can use; the text says why."""


@dataclass(frozen=True)
class PopUrl:
    scheme: str  # "pop" or "pops"
    host: str
    port: int
    user: str | None
    auth: str | None  # as written, decoded: "*", "+APOP", "SCRAM-SHA-256"; None: absent
    port_given: bool


def _decode(text: str, what: str) -> str:
    if not _ACHAR.fullmatch(text):
        raise PopUrlError(f"{what} {text!r}: characters other than letters, digits, "
                          "$-_.+!*'(),&=~ must be %-encoded")
    try:
        decoded = urllib.parse.unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise PopUrlError(f"{what} {text!r}: %-escapes that are not UTF-8") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded) or not decoded:
        raise PopUrlError(f"{what} {text!r}: empty, or control characters")
    return decoded


def _host(text: str) -> str:
    if text.startswith("[") and text.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(text[1:-1]))
        except ValueError:
            raise PopUrlError(f"host {text!r}: not an IPv6 address") from None
    if not _HOSTNAME.fullmatch(text) or len(text) > 253:
        raise PopUrlError(f"host {text!r}: not a host name or address")
    return text.rstrip(".").lower()


def parse(url: str) -> PopUrl:
    """The parts of a POP URL; PopUrlError for anything else."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise PopUrlError(f"{url[:60]!r}: not a pop:// or pops:// URL")
    if rest.endswith("/"):
        rest = rest[:-1]
    if "/" in rest or "?" in rest or "#" in rest:
        raise PopUrlError("a POP URL has no path, query or fragment (RFC 2384 §3)")
    userinfo, at, hostport = rest.rpartition("@")
    user = auth = None
    if at:
        name, semi, param = userinfo.partition(";")
        if ":" in name:
            raise PopUrlError("a POP URL may not hold a password (RFC 2384 §3)")
        if semi:
            key, eq, value = param.partition("=")
            if key.upper() != "AUTH" or not eq or not value:
                raise PopUrlError(f"{';' + param!r}: the only parameter is ;AUTH=")
            auth = "*" if value == "*" else _decode(value, "mechanism")
        user = _decode(name, "user") if name else None
    host, colon, port_text = hostport, "", ""
    if not hostport.endswith("]"):
        host, colon, port_text = hostport.rpartition(":") if ":" in hostport \
            else (hostport, "", "")
    port = SCHEMES[scheme]
    if colon:
        if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise PopUrlError(f"port {port_text!r}: not a port number")
        port = int(port_text)
    if not host:
        raise PopUrlError("a POP URL needs a host")
    return PopUrl(scheme, _host(host), port, user, auth, bool(colon))


def account_keys(url: PopUrl, methods: Collection[str]) -> dict[str, Any]:
    """The account settings the URL gives (`server`, `port`, `user`, `auth`, `tls`), for
    the accounts file's `url` key or a one-off account; `methods` are the `auth` values
    the fetcher knows. PopUrlError for a mechanism it does not."""
    keys: dict[str, Any] = {"server": url.host}
    if url.port_given or url.scheme == "pops":
        keys["port"] = url.port
    if url.scheme == "pops":
        keys["tls"] = "implicit"
    if url.user is not None:
        keys["user"] = url.user
    match url.auth:
        case None | "*":
            auth = "auto"
        case str(name) if name.upper() == "+APOP":
            auth = "apop"
        case str(name) if name.startswith("+"):
            raise PopUrlError(f";AUTH={name}: not an extension popbox knows (only +APOP)")
        case str(name):
            auth = name.lower()
            if auth not in methods or auth in ("auto", "user", "apop"):
                raise PopUrlError(f";AUTH={name}: not a SASL mechanism popbox fetch knows")
    if url.auth is not None:
        keys["auth"] = auth
    return keys
