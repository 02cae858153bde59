"""Whose identity a user's mail is read and written with (popbox.mailproc).

The userdb may give a user a uid and gid (system users, per-domain owners). `owner_of`
says whether that names the running process itself (the virtual `vmail` case: no uid,
or the process's own uid and gid), another `Owner`, or an identity that may never touch
mail (`Refused`): as Dovecot's `first_valid_uid`/`first_valid_gid`, uid 0, gid 0 and
the ids below those limits (system accounts). `become` takes on an `Owner` for good, in
a fresh mail process forked as root (with `store.mail_privileged_group`'s gid kept as
the saved set-group-ID, as Dovecot's `mail_privileged_group`).
"""

from __future__ import annotations

import enum
import grp
import logging
import os
import pwd
from dataclasses import dataclass

from popbox.auth.base import UserInfo
from popbox.config import Config

log = logging.getLogger("popbox")


@dataclass(frozen=True, slots=True)
class Owner:
    """The identity a user's mail is read with."""

    uid: int
    gid: int


class Refused(enum.Enum):
    """Why a user's mail is not read at all."""

    SYSTEM_ACCOUNT = "uid or gid below auth.first_valid_uid/first_valid_gid"
    NOT_ROOT = "popbox was not started as root, so it cannot take on the mail's owner"
    NO_GID = "the userdb gives a uid without a gid, and no account has that uid"


def check_owner(owner: Owner, first_uid: int, first_gid: int) -> Refused | None:
    """Dovecot's first_valid_uid/gid: uid 0, gid 0 and system accounts never read mail."""
    if owner.uid == 0 or owner.gid == 0 or owner.uid < first_uid or owner.gid < first_gid:
        return Refused.SYSTEM_ACCOUNT
    return None


def owner_of(info: UserInfo, config: Config) -> Owner | Refused | None:
    """Whose identity reads `info`'s mail: None for the front's own (no uid in the userdb,
    or the front's own uid and gid), else an `Owner`, or why it is refused."""
    if info.uid is None:
        return None
    gid = info.gid
    if gid is None:
        try:
            gid = pwd.getpwuid(info.uid).pw_gid
        except KeyError:
            return Refused.NO_GID
    owner = Owner(info.uid, gid)
    refused = check_owner(owner, config.auth.first_valid_uid, config.auth.first_valid_gid)
    if refused is not None:
        return refused
    if owner.uid == os.geteuid() and owner.gid in (os.getegid(), *os.getgroups()):
        return None
    return owner


def privileged_group(config: Config) -> int | None:
    """The gid of `store.mail_privileged_group` (None: not set, or no such group, which
    is logged: the dotlocks that need it then fail as they would without it)."""
    name = config.store.mail_privileged_group
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        log.error("store.mail_privileged_group: no such group %r", name)
        return None


def become(owner: Owner, privileged_gid: int | None = None) -> None:
    """Take on `owner` for good: its groups (those of the account with that uid, else the
    gid alone), gid and uid; called as root in a fresh mail process. `privileged_gid`
    (store.mail_privileged_group) is kept as the saved set-group-ID only, for
    popbox.store.privgroup: the real, effective and filesystem gids are the owner's."""
    try:
        entry: pwd.struct_passwd | None = pwd.getpwuid(owner.uid)
    except KeyError:
        entry = None
    groups = os.getgrouplist(entry.pw_name, owner.gid) if entry is not None else [owner.gid]
    os.setgroups(groups)
    saved = owner.gid if privileged_gid is None else privileged_gid
    os.setresgid(owner.gid, owner.gid, saved)
    os.setresuid(owner.uid, owner.uid, owner.uid)
    if os.getresuid() != (owner.uid,) * 3 or os.getresgid() != (owner.gid, owner.gid, saved):
        raise PermissionError("could not take on the mail owner's identity")
    os.umask(0o077)
    if entry is not None:
        os.environ["HOME"] = entry.pw_dir
        os.environ["USER"] = os.environ["LOGNAME"] = entry.pw_name
