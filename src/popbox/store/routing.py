"""One MailStore in front of several: each location goes to the store its type names.

A location from the userdb may start with a type (``mbox:/var/mail/alice``,
``maildir:~/Maildir``, as Dovecot's ``mail_location`` does, popbox.auth.names); the
router takes the prefix off and hands the path to that type's store. A location without
a known prefix goes to the default store unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from popbox.store.base import Failure, Maildrop, MailStore, Trash
from popbox.store.last_login import LastLogin, Recorded


class LocationRouter:
    def __init__(self, default: MailStore, by_type: Mapping[str, MailStore]) -> None:
        self.default = default
        self.by_type = dict(by_type)

    def pick(self, location: str) -> tuple[MailStore, str]:
        kind, colon, path = location.partition(":")
        store = self.by_type.get(kind) if colon else None
        return (store, path) if store is not None else (self.default, location)

    async def open(self, location: str) -> Maildrop | Failure:
        store, path = self.pick(location)
        return await store.open(path)

    async def deliver(self, location: str, message: bytes) -> Failure | None:
        store, path = self.pick(location)
        return await store.deliver(path, message)

    async def purge(self, location: str, before: float) -> int | Failure:
        """The trash of the store serving `location` (popbox.store.base.Trash); nothing
        for a store that keeps no trash."""
        store, path = self.pick(location)
        return await store.purge(path, before) if isinstance(store, Trash) else 0

    async def undelete(self, location: str, since: float | None) -> int | Failure:
        """Failure.PERMANENT for a store that keeps no deleted messages (an mbox spool)."""
        store, path = self.pick(location)
        if not isinstance(store, Trash):
            return Failure.PERMANENT
        return await store.undelete(path, since)

    async def record_login(self, location: str, login: LastLogin) -> Failure | None:
        """Nothing for a store that keeps no records (popbox.store.last_login)."""
        store, path = self.pick(location)
        return await store.record_login(path, login) if isinstance(store, Recorded) else None

    async def last_login(self, location: str) -> LastLogin | Failure | None:
        store, path = self.pick(location)
        return await store.last_login(path) if isinstance(store, Recorded) else None

    async def aclose(self) -> None:
        """Close each store behind the router once."""
        closed: list[MailStore] = []
        for store in (self.default, *self.by_type.values()):
            if not any(store is done for done in closed):
                closed.append(store)
                await store.aclose()


def default_store(store: MailStore) -> MailStore:
    """The store behind a router that serves locations without a type prefix."""
    return store.default if isinstance(store, LocationRouter) else store


if TYPE_CHECKING:  # mypy proves the class implements the contract

    def _conforms(router: LocationRouter) -> MailStore:
        return router

