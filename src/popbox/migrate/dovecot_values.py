"""Dovecot's value syntaxes: lists, booleans, times, addresses, networks, and mail
location paths with %variables (doc.dovecot.org "Config variables"; 2.4's
``%{user | domain}`` forms) as popbox's ``{user}``/``{local}``/``{domain}``/``{home}``
templates (popbox.auth.names)."""

from __future__ import annotations

import ipaddress
import re

from popbox.migrate.dovecot_conf import Value


def words(text: str) -> list[str]:
    return [w for w in re.split(r"[\s,]+", text) if w]


def yes(value: Value | None, default: bool) -> bool:
    if value is None:
        return default
    return value.text.strip().lower() in ("yes", "y", "true", "1")


def seconds(text: str) -> float | None:
    """A Dovecot time ("2 secs", "500ms", "1 min", "0") in seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", text.lower())
    if not match:
        return None
    number, unit = float(match.group(1)), match.group(2)
    if unit in ("", "s", "sec", "secs", "second", "seconds"):
        return number
    if unit in ("ms", "msec", "msecs", "millisecond", "milliseconds"):
        return number / 1000
    if unit in ("m", "min", "mins", "minute", "minutes"):
        return number * 60
    if unit in ("h", "hour", "hours"):
        return number * 3600
    return None


_VARIABLES = {
    "u": "{user}", "user": "{user}",
    "n": "{local}", "username": "{local}", "user|username": "{local}",
    "d": "{domain}", "domain": "{domain}", "user|domain": "{domain}",
    "h": "{home}", "home": "{home}",
}
_VARIABLE = re.compile(r"%(?:\{([^}]*)\}|([A-Za-z]+))")


def location_template(path: str) -> tuple[str | None, list[str]]:
    """A Dovecot path with %variables as a popbox template (None: cannot be), with
    remarks on what changes."""
    remarks: list[str] = []
    failed: list[str] = []

    def put(found: re.Match[str]) -> str:
        long, short = found.group(1), found.group(2)
        if long is not None:
            name = long.replace(" ", "")
            if name.endswith("|lower"):
                name = name.removesuffix("|lower")
                remarks.append("lower-cased")
        else:
            name = short
            if len(name) > 1 and name[0] == "L":  # %Lu: lower-cased
                name = name[1:]
                remarks.append("lower-cased")
            if len(name) > 1:  # %un and the like: one letter, the rest is text
                return put_one(name[0], found.group(0)) + name[1:]
        return put_one(name, found.group(0))

    def put_one(name: str, original: str) -> str:
        if name in _VARIABLES:
            return _VARIABLES[name]
        failed.append(original)
        return original

    template = _VARIABLE.sub(put, path.replace("%%", "\0")).replace("\0", "%")
    if failed:
        return None, [f"popbox has no equivalent of {', '.join(failed)}"]
    if remarks:
        remarks = ["Dovecot lower-cased the name in the path; popbox lower-cases only "
                   "the domain"]
    return template, remarks


def address(host: str) -> str | None:
    host = host.strip()
    if host in ("*", "0.0.0.0"):
        return "0.0.0.0"
    if host in ("::", "[::]"):
        return "[::]"
    if host == "localhost":
        return "localhost"
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return f"[{ip}]" if ip.version == 6 else str(ip)


def networks(text: str) -> tuple[list[str], list[str]]:
    good, bad = [], []
    for word in words(text):
        try:
            good.append(str(ipaddress.ip_network(word, strict=False)))
        except ValueError:
            bad.append(word)
    return good, bad
