"""Dropping root after binding the privileged ports (110, 995).

Started as root, popbox binds its sockets, then becomes `server.user` (and its group, or
`server.group`) with no supplementary groups other than that user's, before it serves a
single client, with HOME and USER set to that user's. Serving as root is refused unless
`server.allow_root` is set. Files popbox creates are private to it (umask 077).
"""

from __future__ import annotations

import grp
import os
import pwd


class PrivilegeError(Exception):
    """The configured identity cannot be taken on; the message is for the operator."""


def drop(user: str | None, group: str | None, allow_root: bool) -> None:
    os.umask(0o077)
    if os.geteuid() != 0:
        if user is not None and pwd.getpwuid(os.geteuid()).pw_name != user:
            raise PrivilegeError(f"server.user is {user!r} but popbox was not started as root")
        return
    if user is None:
        if allow_root:
            return
        raise PrivilegeError(
            "refusing to serve as root: set server.user (or server.allow_root = true)"
        )
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"server.user: no such user {user!r}") from None
    gid = entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise PrivilegeError(f"server.group: no such group {group!r}") from None
    os.initgroups(user, gid)
    os.setgid(gid)
    os.setuid(entry.pw_uid)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise PrivilegeError("could not give up root")
    # Libraries look in $HOME (e.g. libpq's ~/.postgresql/): make it the new user's, not
    # root's, which the new user cannot read.
    os.environ["HOME"] = entry.pw_dir
    os.environ["USER"] = os.environ["LOGNAME"] = user
