"""Reading a Dovecot configuration from disk: the thin I/O layer under
`popbox.migrate.dovecot_conf` (which only parses) and `popbox.migrate.dovecot_map`.

`!include` patterns are relative to the including file's folder and expanded with
`glob`, sorted, as Dovecot does; a pattern with wildcards that matches nothing is not an
error, a plain file name that is missing is (except for `!include_try`).
"""

from __future__ import annotations

import glob
import grp
import os
import pwd
from pathlib import Path

from popbox.migrate.dovecot_conf import IncludeError, Section, parse


def load(pattern: str, including: str, allow_missing: bool) -> list[tuple[str, bytes | str]]:
    """The files an `!include` names (a `dovecot_conf.Loader`)."""
    path = pattern if os.path.isabs(pattern) else os.path.join(
        os.path.dirname(including), pattern)
    names = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
    files: list[tuple[str, bytes | str]] = []
    for name in names:
        try:
            with open(name, "rb") as f:
                files.append((name, f.read()))
        except FileNotFoundError:
            if not allow_missing:
                raise IncludeError("no such file") from None
        except OSError as exc:
            if not allow_missing:
                raise IncludeError(exc.strerror or str(exc)) from None
    return files


def config_file(where: Path) -> Path:
    """dovecot.conf in a folder, or the file itself."""
    return where / "dovecot.conf" if where.is_dir() else where


def read_config(where: Path) -> Section:
    """Parse a configuration and everything it includes. Raises OSError for an unreadable
    main file, `dovecot_conf.ParseError` for a bad one."""
    path = config_file(where)
    return parse(path.read_bytes(), str(path), load, os.environ)


class LocalHost:
    """`dovecot_map.Host` on this machine."""

    def read(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            return None

    def user_name(self, uid: int) -> str | None:
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return None

    def group_name(self, gid: int) -> str | None:
        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            return None
