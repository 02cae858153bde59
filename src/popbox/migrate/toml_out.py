"""popbox.toml text from plain data: tables of strings, numbers, booleans, lists of
strings and nested tables, with a comment above each key naming where it came from.

TOML's basic strings take JSON's escapes (`\\"`, `\\\\`, `\\uXXXX`), so `json.dumps`
writes every string; the result is read back with `tomllib` by the caller.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _key(key: str) -> str:
    return key if _BARE.fullmatch(key) else json.dumps(key)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as a TOML value")


def render(sections: Mapping[str, Mapping[str, object]], header: list[str],
           comments: Mapping[tuple[str, str], str]) -> str:
    """The TOML text; `header` lines become comments at the top, `comments[(table,
    key)]` a comment above that key."""
    lines = [f"# {line}" if line else "#" for line in header]
    for name, table in sections.items():
        lines += ["", f"[{_key(name)}]"]
        nested = []
        for key, value in table.items():
            if isinstance(value, Mapping):
                nested.append((key, value))
                continue
            if (name, key) in comments:
                lines.append(f"# {comments[(name, key)]}")
            lines.append(f"{_key(key)} = {_value(value)}")
        for key, sub in nested:
            for inner, pair in sub.items():
                lines += ["", f"[{_key(name)}.{_key(key)}.{_key(inner)}]"]
                lines += [f"{_key(k)} = {_value(v)}" for k, v in pair.items()]
    return "\n".join(lines) + "\n"
