"""A password and user database in Dovecot's passwd-file format, so an existing file works
unchanged.

One user per line, `user:{SCHEME}secret:uid:gid:gecos:home:shell:extra fields`; every field
after the password may be left out, `#` starts a comment line, blank lines are ignored.
The extra fields are space-separated `key=value` (or a bare `key`): `userdb_mail=` and
`userdb_home=` override the mail location template and the home directory, other
`userdb_*` fields reach `UserInfo.extra` without their prefix, `nopassword` accepts any
password, `nologin` refuses the login (as a wrong password) and `nopop3` refuses POP3
with its own answer once the password is right (`UserInfo.disabled`). A line that cannot
be read is skipped and reported (`problems`, `check()`), never fatal.

Reading: the parsed file is kept in memory and re-read when its inode, size or mtime
changes, looked at (one `os.stat`, in a thread) at most once per `stat_interval`.
Verifying: `auth.verifier.Verifier` (slow hashes on the shared hashing pool, the
verified-login cache). An unknown user costs one verification against a fixed Argon2id
hash, so the time taken does not tell whether the user exists; a missing or unreadable
file is `Verdict.TEMPORARY`.

Credentials for challenge-response SASL (`credentials()`): a `{CRAM-MD5}`/`{HMAC-MD5}`
context or a `{SCRAM-SHA-1}`/`{SCRAM-SHA-256}` key set is given as stored. With `derive`,
a `{PLAIN}` password also gives the CRAM-MD5 context and SCRAM keys, computed at each
request (PBKDF2 off the event loop) with a salt made from `secret` and the user name, so
it is the same at every login; an unknown user then costs the same PBKDF2. `schemes()` is
what every user with a password can be served (users with `nologin` or `nopassword` do
not count), worked out once per version of the file.

Editing (`add_user`, `set_password`, `delete_user`, for `popbox user`): under an exclusive
`flock` on `PATH.lock`, the new content goes to a temporary file in the same directory,
is fsynced and renamed over the old one, so readers see the old or the new file, never a
half-written one. Lines that are not the user's, comments included, are kept byte for byte;
the file's mode and owner are kept, a new file gets mode 0600.

The file is opened with O_NOFOLLOW and must be a regular file (popbox.fsutil): a users
file that is a symlink is refused, for reading and for editing, so that no one who can
replace it with a link makes popbox read or rewrite another file.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from popbox.auth import schemes
from popbox.auth.base import CREDENTIAL_SCHEMES, Secret, UserInfo, Verdict
from popbox.auth.credentials import CredentialSource
from popbox.auth.names import expand_location, normalize_username, valid_username
from popbox.auth.verifier import Verifier
from popbox.fsutil import open_regular, write_atomic

_FALSE = frozenset({"n", "no", "0", "false"})


@dataclass(frozen=True, slots=True)
class Entry:
    """One user's line."""

    name: str  # normalized (domain lowercased)
    password: str
    uid: int | None
    gid: int | None
    home: str | None
    extra: Mapping[str, str]
    line: int

    def flag(self, key: str) -> bool:
        value = self.extra.get(key)
        return value is not None and value.lower() not in _FALSE


@dataclass(frozen=True, slots=True)
class Table:
    """A parsed file: the users by normalized name, and what was wrong with it."""

    entries: Mapping[str, Entry]
    problems: tuple[str, ...]


def _number(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError
    return int(text)


def _parse_line(body: str, number: int) -> Entry | str:
    fields = body.split(":", 7)
    if len(fields) < 2:
        return "no password field"
    fields += [""] * (8 - len(fields))
    name, password, uid, gid, _gecos, home, _shell, extra_text = fields
    if not valid_username(name):
        return "invalid user name"
    try:
        uid_value = _number(uid) if uid else None
        gid_value = _number(gid) if gid else None
    except ValueError:
        return "uid and gid must be numbers"
    extra: dict[str, str] = {}
    for item in extra_text.split():
        key, _, value = item.partition("=")
        extra[key] = value
    home = extra.get("userdb_home", home)
    if home and not home.startswith("/"):
        return "home is not an absolute path"
    return Entry(
        normalize_username(name), password, uid_value, gid_value, home or None, extra, number
    )


def parse(text: str, source: str) -> Table:
    """Read a whole file's text; `source` names it in the problem reports."""
    entries: dict[str, Entry] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        body = raw.removesuffix("\r")
        if not body.strip() or body.lstrip().startswith("#"):
            continue
        parsed = _parse_line(body, number)
        if isinstance(parsed, str):
            problems.append(f"{source}:{number}: {parsed}; line skipped")
        elif parsed.name in entries:
            first = entries[parsed.name].line
            problems.append(
                f"{source}:{number}: duplicate user {parsed.name!r}, line {first} is used"
            )
        else:
            entries[parsed.name] = parsed
    return Table(entries, tuple(problems))


_Stamp = tuple[int, int, int, int]


def _stamp(st: os.stat_result) -> _Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _load(path: str, known: _Stamp | None) -> tuple[_Stamp, Table | None]:
    """The file's stamp, and its parsed content if the stamp is not `known`. Raises OSError."""
    if known is not None and _stamp(os.stat(path)) == known:
        return known, None
    with _open(path) as f:
        stamp = _stamp(os.fstat(f.fileno()))
        return stamp, parse(_decode(f.read()), path)


def _open(path: str | os.PathLike[str]) -> BinaryIO:
    """The users file, never through a symlink and only if it is a regular file."""
    return os.fdopen(open_regular(path), "rb")


class PasswdFile:
    """PassDB and UserDB over one passwd-file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        mail_location: str,
        *,
        default_scheme: str = "CRYPT",
        stat_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        derive: bool = False,
        secret: bytes | None = None,
        scram_iterations: int = schemes.DEFAULT_COST.scram_iterations,
        cache_ttl: float = 0.0,
    ) -> None:
        self._path = os.fspath(path)
        self._template = mail_location
        self._default_scheme = default_scheme
        self._interval = stat_interval
        self._clock = clock
        self._credentials = CredentialSource(
            default_scheme=default_scheme, derive=derive, secret=secret,
            iterations=scram_iterations,
        )
        self._verifier = Verifier(default_scheme=default_scheme, cache_ttl=cache_ttl)
        self._servable: tuple[Table, frozenset[str]] | None = None
        self._table: Table | None = None
        self._stamp: _Stamp | None = None
        self._next_check = 0.0
        self._lock = asyncio.Lock()

    @property
    def problems(self) -> tuple[str, ...]:
        """What was wrong with the file when it was last read."""
        return self._table.problems if self._table is not None else ()

    def check(self) -> list[str]:
        """Read the file now (blocking) and list everything wrong with it, for check-config."""
        try:
            with _open(self._path) as f:
                table = parse(_decode(f.read()), self._path)
        except OSError as e:
            return [f"{self._path}: cannot read: {e.strerror}"]
        found = list(table.problems)
        for entry in table.entries.values():
            where = f"{self._path}:{entry.line}: user {entry.name!r}"
            if (
                schemes.scheme_of(entry.password, default_scheme=self._default_scheme) is None
                and entry.password
                and not entry.flag("nopassword")
            ):
                found.append(f"{where}: unknown password scheme")
            if self._location(entry) is None:
                found.append(
                    f"{where}: the mail location cannot be expanded "
                    "(it needs a home or a domain this user does not have)"
                )
            for key in ("userdb_login_delay", "userdb_expire_days"):
                value = entry.extra.get(key)
                if value is not None and not (value.isascii() and value.isdigit()):
                    found.append(f"{where}: {key}={value!r} is not a whole number "
                                 "(the server's default applies)")
        return found

    async def _current(self) -> Table | None:
        now = self._clock()
        if self._table is not None and now < self._next_check:
            return self._table
        async with self._lock:
            if self._table is not None and now < self._next_check:
                return self._table
            try:
                stamp, table = await asyncio.to_thread(_load, self._path, self._stamp)
            except OSError:
                self._table, self._stamp = None, None
                return None
            if table is not None:
                self._table = table
            self._stamp = stamp
            self._next_check = now + self._interval
            return self._table

    @staticmethod
    def _find(table: Table, user: str) -> Entry | None:
        return table.entries.get(normalize_username(user)) if valid_username(user) else None

    def _location(self, entry: Entry) -> str | None:
        template = entry.extra.get("userdb_mail") or self._template
        return expand_location(template, entry.name, entry.home)

    async def verify(self, user: str, password: Secret) -> Verdict:
        table = await self._current()
        if table is None:
            return Verdict.TEMPORARY
        entry = self._find(table, user)
        if entry is not None and entry.flag("nopassword"):
            return Verdict.REJECTED if entry.flag("nologin") else Verdict.OK
        ok = await self._verifier.check(entry.password if entry else None, password)
        return Verdict.OK if ok and entry and not entry.flag("nologin") else Verdict.REJECTED

    async def plaintext(self, user: str) -> Secret | Verdict | None:
        table = await self._current()
        if table is None:
            return Verdict.TEMPORARY
        entry = self._find(table, user)
        if entry is None or entry.flag("nologin"):
            return None
        return schemes.plaintext(entry.password, default_scheme=self._default_scheme)

    async def schemes(self) -> frozenset[str]:
        table = await self._current()
        if table is None:
            return frozenset()
        if self._servable is not None and self._servable[0] is table:
            return self._servable[1]
        found = CREDENTIAL_SCHEMES
        for entry in table.entries.values():
            if entry.password and not entry.flag("nologin") and not entry.flag("nopassword"):
                found &= self._credentials.servable(entry.password)
                if not found:
                    break
        self._servable = (table, found)
        return found

    async def credentials(self, user: str, scheme: str) -> Secret | Verdict | None:
        table = await self._current()
        if table is None:
            return Verdict.TEMPORARY
        entry = self._find(table, user)
        if entry is None or entry.flag("nologin") or entry.flag("nopassword"):
            return await self._credentials.lookup(None, scheme, user)
        return await self._credentials.lookup(entry.password, scheme, entry.name)

    async def aclose(self) -> None:
        """Nothing to release: the file is opened and closed at each read."""

    async def names(self) -> list[str] | Verdict:
        table = await self._current()
        if table is None:
            return Verdict.TEMPORARY
        return sorted(table.entries, key=lambda name: table.entries[name].line)

    async def varies(self, field: str) -> bool:
        """Whether some line of the file sets `userdb_<field>`."""
        table = await self._current()
        key = "userdb_" + field
        return table is not None and any(key in e.extra for e in table.entries.values())

    async def lookup(self, user: str) -> UserInfo | Verdict | None:
        table = await self._current()
        if table is None:
            return Verdict.TEMPORARY
        entry = self._find(table, user)
        location = self._location(entry) if entry is not None else None
        if entry is None or location is None:
            return None
        extra = {
            key.removeprefix("userdb_"): value
            for key, value in entry.extra.items()
            if key.startswith("userdb_") and key != "userdb_mail"
        }
        if entry.home:
            extra["home"] = entry.home
        return UserInfo(entry.name, location, entry.uid, entry.gid, extra,
                        disabled=entry.flag("nopop3"))


# --- editing -----------------------------------------------------------------------------


class Edit(enum.Enum):
    """What an edit did."""

    DONE = "done"
    EXISTS = "the user already exists"
    NO_SUCH_USER = "no such user"


def _lines(text: str) -> list[str]:
    """Split at LF only (as `parse` does), keeping each line's ending."""
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _line_name(line: str) -> str | None:
    body = line.rstrip("\r\n")
    if not body.strip() or body.lstrip().startswith("#"):
        return None
    return normalize_username(body.split(":", 1)[0])


def _check_field(value: str, what: str, forbidden: str = ":\r\n") -> None:
    if any(char in value for char in forbidden):
        raise ValueError(f"{what} must not contain {forbidden!r}")


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _edit(path: str | os.PathLike[str], change: Callable[[list[str]], list[str] | Edit]) -> Edit:
    """Run `change` on the file's lines (with their endings) under the lock; write its result."""
    target = os.fspath(path)
    with _locked(target):
        try:
            with _open(target) as f:
                like: os.stat_result | None = os.fstat(f.fileno())
                lines = _lines(_decode(f.read()))
        except FileNotFoundError:
            like, lines = None, []
        result = change(lines)
        if isinstance(result, Edit):
            return result
        # The users file is the only copy of the passwords: durable before `popbox user` returns.
        write_atomic(
            target,
            "".join(result).encode("utf-8", "surrogateescape"),
            mode=like.st_mode & 0o7777 if like is not None else 0o600,
            owner=(like.st_uid, like.st_gid) if like is not None else None,
        )
        return Edit.DONE


def _checked_name(name: str) -> str:
    if not valid_username(name) or ":" in name:
        raise ValueError("invalid user name")
    return normalize_username(name)


def add_user(
    path: str | os.PathLike[str],
    name: str,
    hashed: str,
    *,
    uid: int | None = None,
    gid: int | None = None,
    home: str | None = None,
    extra: Sequence[str] = (),
) -> Edit:
    """Append a line for a new user; `extra` holds `key=value` fields. Edit.EXISTS if taken."""
    key = _checked_name(name)
    _check_field(hashed, "the password hash")
    if home is not None:
        _check_field(home, "the home directory")
    for item in extra:
        if not item or any(char.isspace() for char in item):
            raise ValueError("an extra field must be non-empty and without spaces")
    fields = [
        key,
        hashed,
        "" if uid is None else str(uid),
        "" if gid is None else str(gid),
        "",
        home or "",
        "",
        " ".join(extra),
    ]
    while len(fields) > 2 and not fields[-1]:
        fields.pop()
    new_line = ":".join(fields) + "\n"

    def change(lines: list[str]) -> list[str] | Edit:
        if any(_line_name(line) == key for line in lines):
            return Edit.EXISTS
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        return [*lines, new_line]

    return _edit(path, change)


def set_password(path: str | os.PathLike[str], name: str, hashed: str) -> Edit:
    """Replace the password field of the user's (first) line, keeping the other fields."""
    key = _checked_name(name)
    _check_field(hashed, "the password hash")

    def change(lines: list[str]) -> list[str] | Edit:
        for index, line in enumerate(lines):
            if _line_name(line) == key:
                body = line.rstrip("\r\n")
                user, _, rest = body.partition(":")
                _, colon, after = rest.partition(":")
                lines[index] = f"{user}:{hashed}{colon}{after}{line[len(body) :]}"
                return lines
        return Edit.NO_SUCH_USER

    return _edit(path, change)


def delete_user(path: str | os.PathLike[str], name: str) -> Edit:
    """Remove every line of the user."""
    key = _checked_name(name)

    def change(lines: list[str]) -> list[str] | Edit:
        kept = [line for line in lines if _line_name(line) != key]
        return Edit.NO_SUCH_USER if len(kept) == len(lines) else kept

    return _edit(path, change)


def list_users(path: str | os.PathLike[str]) -> list[str]:
    """The users of a file in file order (well-formed lines only). Raises OSError."""
    with _open(path) as f:
        table = parse(_decode(f.read()), os.fspath(path))
    return sorted(table.entries, key=lambda name: table.entries[name].line)
