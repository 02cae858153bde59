"""Builds the configured password database, user database and mail store."""

from __future__ import annotations

from popbox.auth.passwd_file import PasswdFile
from popbox.config import Config
from popbox.server.context import Backends
from popbox.store.maildir import MaildirStore


def build(config: Config) -> Backends:
    users = PasswdFile(config.auth.passwd_file, config.auth.mail_location)
    store = MaildirStore(mark_seen=config.store.mark_seen, uidl_import=config.store.uidl_import)
    return Backends(passdb=users, userdb=users, store=store)
