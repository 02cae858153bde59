"""Soft delete for Maildirs (``store.deleted = "trash"``): the ``.Trash`` folder.

At QUIT a DELE'd message is renamed, file name unchanged, into ``.Trash/cur/`` (the
Maildir++ folder Dovecot and Courier call Trash), and its base is appended with the time
to ``.Trash/popbox.trashed`` (popbox.store.maildir_times). The file name keeps its base,
so a message put back has the UIDL it had (RFC 1939 §7: a UIDL never changes), and it
sorts into its old place (messages are ordered by the time in the name).

`purge` (from `popbox expire`) unlinks what was trashed before a time; `restore` (from
`popbox undelete`) renames back into ``cur/`` what was trashed since a time. Both touch
only messages popbox's record names, never mail an IMAP client put into Trash itself,
and both run under the maildrop lock (the caller's), as a commit does. Functions here
are blocking and raise OSError; the store runs them in a thread.
"""

from __future__ import annotations

import contextlib
import os

from popbox.store import maildir_times
from popbox.store.maildir_names import base_of

FOLDER = ".Trash"


def folder(root: str) -> str:
    return os.path.join(root, FOLDER)


def prepare(root: str) -> str:
    """The trash folder's ``cur/``, made (0700) if missing."""
    trash = folder(root)
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(trash, sub), mode=0o700, exist_ok=True)
    return os.path.join(trash, "cur")


def move(path: str, trash_cur: str, name: str) -> None:
    """Move one message file into the trash. A file of that name already there is the
    same message (names are unique), so the inbox's copy is just removed."""
    target = os.path.join(trash_cur, name)
    if os.path.lexists(target):
        os.unlink(path)
    else:
        os.rename(path, target)


def _trashed(root: str) -> tuple[str, dict[str, float], list[tuple[str, str]]]:
    trash = folder(root)
    record = maildir_times.read(trash, maildir_times.TRASHED)
    files: list[tuple[str, str]] = []
    for sub in ("cur", "new"):
        try:
            names = os.listdir(os.path.join(trash, sub))
        except FileNotFoundError:
            continue
        files.extend((sub, name) for name in names
                     if not name.startswith(".") and base_of(name) in record)
    return trash, record, files


def purge(root: str, before: float) -> int:
    """Unlink the messages trashed at or before `before`; how many."""
    trash, record, files = _trashed(root)
    gone: set[str] = set()
    for sub, name in files:
        base = base_of(name)
        if record[base] <= before:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(trash, sub, name))
            gone.add(base)
    maildir_times.forget(trash, gone, maildir_times.TRASHED)
    return len(gone)


def restore(root: str, since: float | None) -> int:
    """Move the messages trashed at or after `since` (all if None) back to ``cur/``,
    names unchanged; how many."""
    trash, record, files = _trashed(root)
    back: set[str] = set()
    for sub, name in files:
        base = base_of(name)
        if since is not None and record[base] < since:
            continue
        target = os.path.join(root, "cur", name)
        if os.path.lexists(target):  # never replace a file
            continue
        os.rename(os.path.join(trash, sub, name), target)
        back.add(base)
    maildir_times.forget(trash, back, maildir_times.TRASHED)
    return len(back)
