"""Retention: which messages a maildrop no longer keeps, and one expiry pass over it.

RFC 2449 §6.7 EXPIRE tells clients the shortest time the server keeps a message after
it was retrieved; popbox keeps that promise with `popbox expire` (one pass, for a
timer). The policy of a user is `days`: the user's own (userdb field `expire_days`) or
`store.expire_days`; None means NEVER. A message is expired when it was first retrieved
(a RETR sent to its end, committed at QUIT: `Times.retrieved`) at least `days` days
before `now`. A message never retrieved is kept, unless `unretrieved` is set: then it is
expired `days` days after its delivery.

The pass takes the maildrop like a session does (so it waits for nobody: a maildrop in
use is skipped, `Failure.IN_USE`, and taken at the next pass), decides from the
snapshot's times and deletes through the ordinary commit, so an expiry is as safe as a
client's DELE + QUIT. Time comes in as `now`; nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from popbox.proto.types import Index
from popbox.store.base import Dated, Failure, MailStore, StoreError, Times

DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class Policy:
    days: int | None  # retrieved messages are kept this many days; None: never expired
    unretrieved: bool = False  # also expire unretrieved messages, counted from delivery


def user_days(extra: Mapping[str, str], default: int | None) -> int | None:
    """The user's own retention (userdb field `expire_days`), else `default`."""
    value = extra.get("expire_days", "")
    return int(value) if value.isascii() and value.isdigit() else default


def capability(days: int | None) -> str:
    """The EXPIRE argument (RFC 2449 §6.7): days, or NEVER."""
    return "NEVER" if days is None else str(days)


def expired(times: Sequence[Times], now: float, policy: Policy) -> set[Index]:
    """The snapshot indexes `policy` no longer keeps at `now`."""
    if policy.days is None:
        return set()
    cutoff = now - policy.days * DAY
    doomed: set[Index] = set()
    for index, (delivered, retrieved) in enumerate(times):
        since = retrieved if retrieved is not None else (
            delivered if policy.unretrieved else None)
        if since is not None and since <= cutoff:
            doomed.add(Index(index))
    return doomed


@dataclass(frozen=True, slots=True)
class Outcome:
    messages: int  # in the maildrop
    expired: int  # deleted (or, in a dry run, that would be)


async def expire(
    store: MailStore, location: str, policy: Policy, now: float, *, dry_run: bool = False
) -> Outcome | Failure:
    """One pass over the maildrop at `location`."""
    if policy.days is None:
        return Outcome(0, 0)
    drop = await store.open(location)
    if isinstance(drop, Failure):
        return drop
    if not isinstance(drop, Dated):
        await drop.release()
        return Failure.PERMANENT
    try:
        doomed = expired(await drop.times(), now, policy)
    except StoreError as exc:
        await drop.release()
        return exc.failure
    except BaseException:
        await drop.release()
        raise
    if dry_run or not doomed:
        await drop.release()
        return Outcome(len(drop.messages), len(doomed))
    result = await drop.commit(doomed, frozenset())
    if isinstance(result, Failure):
        return result
    return Outcome(len(drop.messages), result.deleted)
