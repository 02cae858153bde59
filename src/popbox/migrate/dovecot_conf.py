"""Dovecot's configuration language, read into a tree of sections and settings.

Text in, tree out: `parse` does no I/O. `!include` and `!include_try` ask a `Loader`
(given by the caller, e.g. `popbox.migrate.dovecot_files`) for the files a pattern names.

The syntax is the one Dovecot 2.3 and 2.4 share (doc.dovecot.org, "Dovecot Config File
Syntax"; Dovecot's src/config/config-parser.c):

* ``key = value``; spaces around ``=`` and at both ends of the value are dropped. A value
  may be quoted with ``"`` or ``'`` (``\\"`` and ``\\\\`` escape inside), which keeps
  spaces and ``#``. Outside quotes, ``#`` starts a comment (Dovecot warns when there is no
  space before it, and cuts the value there all the same).
* ``key = <path``: the value is read from a file. The tree keeps the path
  (`Value.from_file`), made absolute from the folder of the file it is written in, as
  Dovecot reads it; not the file's contents: a migration wants to know where a
  certificate is.
* A line ending in ``\\`` goes on on the next line, joined by one space.
* ``kind [name] {`` opens a section (2.4's ``group @label name {`` has a two-word name)
  and ``}`` on a line of its own closes it; nothing may follow the ``{``. Sections of
  the same kind and name are one section (Dovecot merges them: ``service pop3-login``
  may appear in several files), except the unnamed ``passdb { }`` and ``userdb { }`` of
  2.3, each a database of its own.
* ``!include PATTERN`` and ``!include_try PATTERN`` put the files a glob pattern names
  (relative to the including file's folder) at that point, inside the section the line is
  in. A missing file is an error for ``!include`` (unless the pattern has wildcards),
  nothing for ``!include_try``.
* Variables in unquoted values: 2.3's ``$name`` is the value the setting ``name`` has at
  that point (``mail_plugins = $mail_plugins quota``), empty when it has none; 2.4's
  ``$SET:name`` likewise (2.4 resolves it after the whole file is read; here it is the
  value so far, the same for the common self-reference), ``$ENV:name`` an environment
  variable from the mapping passed in.

Errors are `ParseError`, with the file and line: an unknown line, text after ``{``, a
``}`` with no section open, a section still open at the end of the file, an unterminated
quote, bytes that are not UTF-8, a file a ``!include`` cannot read, includes nested too
deep (a loop).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

MAX_INCLUDE_DEPTH = 20
UNMERGED = frozenset({"passdb", "userdb"})  # 2.3: each unnamed one is its own database


@dataclass(frozen=True, slots=True)
class Where:
    """A place in the configuration, for messages: ``file:line``."""

    source: str
    line: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True, slots=True)
class Value:
    """A setting's value and where it was set; `from_file`: written ``<path`` (`text`
    is the path)."""

    text: str
    where: Where
    from_file: bool = False


@dataclass(slots=True)
class Section:
    """A section (the top level has kind ``""``): its settings, the last assignment of
    each key, and its subsections in the order they first appear."""

    kind: str
    name: str | None
    where: Where
    settings: dict[str, Value] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)

    def get(self, key: str) -> Value | None:
        return self.settings.get(key)

    def text(self, key: str, default: str = "") -> str:
        value = self.settings.get(key)
        return default if value is None else value.text

    def children(self, kind: str) -> list[Section]:
        return [s for s in self.sections if s.kind == kind]

    def child(self, kind: str, name: str | None) -> Section | None:
        for section in self.sections:
            if section.kind == kind and section.name == name:
                return section
        return None

    def walk(self) -> Iterator[Section]:
        """This section and every section inside it, depth first."""
        yield self
        for section in self.sections:
            yield from section.walk()

    def to_dict(self) -> dict[str, object]:
        """A plain view (for tests and debugging): settings as text, sections keyed by
        ``kind`` or ``kind name``."""
        out: dict[str, object] = {
            key: ("<" + v.text if v.from_file else v.text) for key, v in self.settings.items()
        }
        for section in self.sections:
            label = section.kind if section.name is None else f"{section.kind} {section.name}"
            while label in out:
                label += "'"
            out[label] = section.to_dict()
        return out


class ParseError(Exception):
    """A configuration Dovecot would not accept; the message names the file and line."""

    def __init__(self, where: Where, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.reason = message


class IncludeError(Exception):
    """Raised by a `Loader` for a file it cannot give; the message is the reason."""


# (pattern, the including file's name, whether a miss is allowed) -> [(file name, data)]
Loader = Callable[[str, str, bool], list[tuple[str, bytes | str]]]


def parse(data: bytes | str, source: str = "dovecot.conf", load: Loader | None = None,
          env: Mapping[str, str] | None = None) -> Section:
    """The configuration in `data` (named `source` in messages) as a tree."""
    root = Section("", None, Where(source, 0))
    _Parser(load, env or {}).run(data, source, root, 0)
    return root


def _lines(data: bytes | str, source: str) -> Iterator[tuple[int, str]]:
    """Numbered logical lines: continuations joined, line ends and edges stripped."""
    raw = data.split(b"\n") if isinstance(data, bytes) else data.split("\n")
    pending: list[str] = []
    start = 0
    for number, chunk in enumerate(raw, 1):
        if isinstance(chunk, bytes):
            try:
                text = chunk.decode("utf-8")
            except UnicodeDecodeError:
                raise ParseError(Where(source, number), "not UTF-8 text") from None
        else:
            text = str(chunk)
        line = text.rstrip("\r").strip(" \t")
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].rstrip(" \t"))
            continue
        pending.append(line)
        yield start, " ".join(part for part in pending if part) if len(pending) > 1 else line
        pending = []
    if pending:
        yield start, " ".join(part for part in pending if part)


def _word(text: str) -> tuple[str, str]:
    """The first token of `text` (up to a space, ``=`` or ``{``) and the rest."""
    end = 0
    while end < len(text) and text[end] not in " \t={":
        end += 1
    return text[:end], text[end:].lstrip(" \t")


def _quoted(text: str, where: Where) -> tuple[str, str]:
    """A quoted string at the start of `text`: its contents and what follows it."""
    quote, out, i = text[0], [], 1
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if char == quote:
            return "".join(out), text[i + 1 :].strip(" \t")
        out.append(char)
        i += 1
    raise ParseError(where, "unterminated quoted string")


def _uncomment(text: str) -> str:
    cut = text.find("#")
    return (text if cut < 0 else text[:cut]).rstrip(" \t")


class _Parser:
    def __init__(self, load: Loader | None, env: Mapping[str, str]) -> None:
        self.load = load
        self.env = env

    def run(self, data: bytes | str, source: str, into: Section, depth: int) -> None:
        stack = [into]
        opened: list[Where] = []
        for number, line in _lines(data, source):
            where = Where(source, number)
            if not line or line.startswith("#"):
                continue
            if _uncomment(line) == "}":
                if not opened:
                    raise ParseError(where, "unexpected '}'")
                stack.pop()
                opened.pop()
                continue
            if line.startswith("!"):
                self._include(line, where, stack[-1], depth)
                continue
            key, rest = _word(line)
            if not key:
                raise ParseError(where, "expected a setting name")
            if rest.startswith("="):
                self._set(stack, key, rest[1:].strip(" \t"), where)
                continue
            names: list[str] = []  # 2.4's "group @label name {" has two
            while rest and not rest.startswith(("{", "#")) and len(names) < 2:
                if rest[0] in "\"'":
                    word, rest = _quoted(rest, where)
                else:
                    word, rest = _word(rest)
                    if not word:
                        break
                names.append(word)
            name = " ".join(names) if names else None
            if not rest.startswith("{"):
                raise ParseError(where, f"expected '=' or '{{' after {key!r}")
            if _uncomment(rest[1:].strip(" \t")):
                raise ParseError(where, "text after '{' (a section's settings go on lines "
                                 "of their own)")
            stack.append(self._open(stack[-1], key, name, where))
            opened.append(where)
        if opened:
            raise ParseError(opened[-1], f"section opened here is not closed in {source}")

    @staticmethod
    def _open(parent: Section, kind: str, name: str | None, where: Where) -> Section:
        if name is not None or kind not in UNMERGED:
            existing = parent.child(kind, name)
            if existing is not None:
                return existing
        section = Section(kind, name, where)
        parent.sections.append(section)
        return section

    def _set(self, stack: list[Section], key: str, text: str, where: Where) -> None:
        if text[:1] in ("\"", "'"):
            value, rest = _quoted(text, where)
            if _uncomment(rest):
                raise ParseError(where, "text after a quoted value")
            stack[-1].settings[key] = Value(value, where)
            return
        text = _uncomment(text)
        if text.startswith("<"):
            path = text[1:].strip(" \t")
            if path[:1] in ("\"", "'"):
                path, _ = _quoted(path, where)
            if not posixpath.isabs(path):  # relative to the file it is written in
                path = posixpath.join(posixpath.dirname(where.source), path)
            stack[-1].settings[key] = Value(path, where, from_file=True)
            return
        if "$" in text:
            text = " ".join(self._expand(stack, word) for word in text.split(" "))
        stack[-1].settings[key] = Value(text, where)

    def _expand(self, stack: list[Section], word: str) -> str:
        if not word.startswith("$") or len(word) < 2:
            return word
        name = word[1:]
        if name.startswith("ENV:"):
            return self.env.get(name[4:], "")
        name = name.removeprefix("SET:")
        for section in reversed(stack):
            value = section.get(name)
            if value is not None:
                return value.text
        return ""

    def _include(self, line: str, where: Where, into: Section, depth: int) -> None:
        directive, rest = _word(line)
        if directive not in ("!include", "!include_try"):
            raise ParseError(where, f"unknown directive {directive!r}")
        pattern = rest
        if pattern[:1] in ("\"", "'"):
            pattern, _ = _quoted(pattern, where)
        else:
            pattern = _uncomment(pattern)
        if not pattern:
            raise ParseError(where, f"{directive} without a file name")
        if self.load is None:
            raise ParseError(where, f"{directive} {pattern}: no files can be read here")
        if depth >= MAX_INCLUDE_DEPTH:
            raise ParseError(where, f"{directive} {pattern}: includes nested more than "
                             f"{MAX_INCLUDE_DEPTH} deep (a loop?)")
        try:
            files = self.load(pattern, where.source, directive == "!include_try")
        except IncludeError as exc:
            raise ParseError(where, f"{directive} {pattern}: {exc}") from None
        for name, data in files:
            self.run(data, name, into, depth + 1)
