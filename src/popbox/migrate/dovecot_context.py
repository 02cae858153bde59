"""The state shared by the parts of the Dovecot conversion (popbox.migrate.dovecot_map):
what POP3 sees of the tree, which settings were carried over, and the result so far."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from popbox.migrate.dovecot_conf import Section, Value, Where


class Host(Protocol):
    """What the conversion may ask of the machine."""

    def read(self, path: str) -> bytes | None:
        """A file's contents, None when it cannot be read."""
        ...

    def user_name(self, uid: int) -> str | None: ...

    def group_name(self, gid: int) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Note:
    """A setting that did not carry over (or carried over with a difference)."""

    where: Where | None
    text: str

    def __str__(self) -> str:
        return f"{self.where}: {self.text}" if self.where is not None else self.text


@dataclass(slots=True)
class Result:
    version: str  # "2.3" or "2.4"
    sections: dict[str, dict[str, object]] = field(default_factory=dict)
    origins: dict[tuple[str, str], Where] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)
    sql_copy: str | None = None  # a statement giving Dovecot's users in popbox's columns


class Context:
    """A conversion under way. The parts read settings with `take` (what POP3 sees) and
    `take_in` (one section), which mark them carried over; `put` sets a popbox key,
    `note` reports what did not carry over."""

    static_home: tuple[str, Where] | None = None  # a static userdb's home template

    def __init__(self, tree: Section, host: Host) -> None:
        self.tree = tree
        self.host = host
        self.used: set[tuple[int, str]] = set()
        self.done_sections: set[int] = set()
        version = tree.get("dovecot_config_version")
        self.v24 = version is not None
        self.result = Result("2.4" if self.v24 else "2.3")
        self.scopes = [tree] + [
            s for s in tree.children("protocol")
            if s.name == "pop3" or ((s.name or "").startswith("!") and s.name != "!pop3")
        ]

    # --- reading settings ---

    def take(self, *keys: str) -> Value | None:
        """The value POP3 sees for the first of `keys` that is set (protocol pop3 wins
        over the top level); every occurrence counts as carried over."""
        for key in keys:
            found = None
            for scope in self.scopes:
                value = scope.get(key)
                if value is not None:
                    self.used.add((id(scope), key))
                    found = value
            if found is not None:
                return found
        return None

    def take_in(self, section: Section, *keys: str) -> Value | None:
        for key in keys:
            value = section.get(key)
            if value is not None:
                self.used.add((id(section), key))
                return value
        return None

    def put(self, section: str, key: str, value: object, where: Where | None) -> None:
        self.result.sections.setdefault(section, {})[key] = value
        if where is not None:
            self.result.origins[(section, key)] = where

    def note(self, where: Where | None, text: str) -> None:
        self.result.notes.append(Note(where, text))
