"""`popbox fetch`: download mail from a POP3 server into a Maildir or an mbox, every
message exactly once, whatever interrupts a run (kill -9, a dropped connection, an -ERR).

A message is identified by its UIDL (RFC 1939 §7), which the server keeps for as long as
it keeps the message. For each session:

1. Settle any mbox append an earlier run left half done (`popbox.client.mbox.recover`).
2. Log in; UIDL lists the maildrop. UIDLs the state file knows but the server no longer
   lists are forgotten.
3. Messages whose UIDL is recorded as delivered are not fetched again; unless `keep`, they
   are DELE'd (an earlier run recorded them, but its QUIT never happened).
4. The others are fetched in batches: each message is streamed to the destination
   (Maildir: `tmp/`, fsync, link into `new/`; mbox: a spool file, fsync), then the batch is
   made durable and its UIDLs recorded in one atomic state write (`commit`). Only then,
   unless `keep`, the batch is DELE'd. A failure mid-batch commits what was complete.
5. QUIT makes the server remove the DELE'd messages (RFC 1939 §6). Without QUIT (crash,
   dropped connection) it removes nothing, and the next run DELEs them again (3).

So a message is DELE'd only after its delivery is recorded, and recorded only after it is
durable. What a crash can leave between "durable" and "recorded" is found again: in a
Maildir by the key in the file name (a hash of server, port, user and UIDL), in an mbox
by the pending append in the state file.

A server without UIDL: messages are fetched and deleted, and a crash between a delivery
and the QUIT that deletes it delivers that message again next time (at least once). With
`keep`, such a server is refused: old mail could not be told from new.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from popbox.client import errors as er
from popbox.client import mbox
from popbox.client.connection import PopClient, Tls, connect
from popbox.client.state import Journal, StateFile
from popbox.client.tokens import TokenSource
from popbox.proto.types import MsgNo, Uidl

AUTH_METHODS = ("auto", "user", "apop", "plain", "login", "cram-md5", "scram-sha-1",
                "scram-sha-256", "xoauth2", "oauthbearer")


class FetchRefused(er.PopUnsupportedError):
    """The server cannot be fetched from safely with these options."""


class Writer(Protocol):
    def write(self, data: bytes, /) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


class Destination(Protocol):
    def open(self) -> None: ...

    def has(self, key: str) -> bool: ...

    def writer(self, key: str) -> Writer: ...

    def commit(self, uidls: Sequence[str], journal: Journal) -> None: ...


@dataclass(frozen=True)
class Source:
    server: str
    port: int
    user: str
    password: str = field(repr=False)
    tls: Tls = "implicit"
    ssl_context: ssl.SSLContext | None = None
    timeout: float = 60.0
    auth: str = "auto"
    allow_plaintext: bool = False
    token: TokenSource | None = None  # an access token for OAUTHBEARER / XOAUTH2
    two_step: bool = False  # XOAUTH2's token answers a challenge (Microsoft 365)
    tls_fingerprint: str | None = None  # "sha256:AB:CD:...": the certificate pinned
    tls_min_version: str | None = None  # "1.2" or "1.3"


@dataclass(frozen=True)
class Options:
    keep: bool = False
    limit: int | None = None
    batch: int = 32


@dataclass
class Report:
    delivered: int = 0  # fetched and delivered now
    found: int = 0  # delivered by an interrupted run, recorded now
    deleted: int = 0  # DELE'd (removed by the server at QUIT)
    left: int = 0  # new messages not fetched because of the limit
    duplicates: int = 0  # messages whose UIDL another message has too (left alone)


def message_key(server: str, port: int, user: str, uidl: str) -> str:
    """The name a message carries in a Maildir: 128 bits of SHA-256."""
    data = "\0".join((server, str(port), user, uidl)).encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:32]


async def _login(pop: PopClient, source: Source) -> None:
    if source.token is not None and source.auth in ("auto", "xoauth2", "oauthbearer"):
        await _token_login(pop, source, source.token)
        return
    plain = source.allow_plaintext
    match source.auth:
        case "auto":
            await pop.login(source.user, source.password, allow_plaintext=plain)
        case "user":
            await pop.user_pass(source.user, source.password, allow_plaintext=plain)
        case "apop":
            await pop.apop(source.user, source.password)
        case name:
            await pop.auth(name.upper(), source.user, source.password, allow_plaintext=plain)


async def _token_login(pop: PopClient, source: Source, tokens: TokenSource) -> None:
    """Log in with the access token; a refused one is renewed once and tried again (it
    may have been revoked or have expired early). AUTH failing leaves the session in the
    AUTHORIZATION state (RFC 5034 §4), so the second try uses the same connection."""
    for renew in (False, True):
        token = await tokens.access_token(renew=renew)
        two_step = source.two_step or tokens.two_step
        try:
            if source.auth == "auto":
                await pop.login(source.user, source.password or None, token=token,
                                two_step=two_step, allow_plaintext=source.allow_plaintext)
            else:
                await pop.auth(source.auth.upper(), source.user, token=token,
                               two_step=two_step, allow_plaintext=source.allow_plaintext)
            return
        except er.PopAuthError:
            if renew or not tokens.renewable:
                raise


async def _uidls(pop: PopClient) -> dict[MsgNo, Uidl] | None:
    try:
        return await pop.uidl()
    except (er.PopTemporaryError, er.PopInUseError):
        raise
    except er.PopError:
        return None


T = TypeVar("T")


def _batches(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class Fetcher:
    def __init__(self, source: Source, destination: Destination, state: StateFile,
                 options: Options, log: Callable[[str], None] = lambda _: None) -> None:
        self.source = source
        self.destination = destination
        self.state = state
        self.options = options
        self.log = log
        self.report = Report()
        account = state.account(source.server, source.port, source.user)
        self.journal = Journal(state, account)

    def prepare(self) -> None:
        """Settle interrupted mbox appends (of every account in the state file), then
        open the destination."""
        for account in self.state.accounts():
            if account.pending is not None:
                path = account.pending.path
                outcome = mbox.recover(Journal(self.state, account), self.state.spool_dir)
                self.log(f"interrupted delivery to {path}: {outcome}")
        self.destination.open()

    async def run(self) -> Report:
        source = self.source
        async with await connect(source.server, source.port, tls=source.tls,
                                 ssl_context=source.ssl_context, timeout=source.timeout,
                                 tls_fingerprint=source.tls_fingerprint,
                                 tls_min_version=source.tls_min_version) as pop:
            await _login(pop, source)
            with contextlib.suppress(er.PopError):
                await pop.capa()  # PIPELINING and friends, as they are after login
            uidls = await _uidls(pop)
            if uidls is None:
                if self.options.keep:
                    raise FetchRefused("the server has no UIDL, so old mail cannot be told "
                                       "from new: fetching with --keep is refused")
                await self._without_uidl(pop)
            else:
                await self._with_uidl(pop, uidls)
        return self.report

    async def _with_uidl(self, pop: PopClient, uidls: dict[MsgNo, Uidl]) -> None:
        journal, keep = self.journal, self.options.keep
        before = len(journal.account.delivered)
        journal.forget_missing(set(uidls.values()))
        if len(journal.account.delivered) != before:
            await asyncio.to_thread(self.state.save)
        seen: set[str] = set()
        old: list[MsgNo] = []
        new: list[tuple[MsgNo, Uidl]] = []
        for msg in sorted(uidls):
            uidl = uidls[msg]
            if uidl in seen:
                self.report.duplicates += 1
                self.log(f"message {msg} has the same UIDL as an earlier one: left alone")
                continue
            seen.add(uidl)
            if journal.delivered(uidl):
                old.append(msg)
            else:
                new.append((msg, uidl))
        if self.options.limit is not None and len(new) > self.options.limit:
            self.report.left = len(new) - self.options.limit
            new = new[: self.options.limit]
        if old and not keep:
            await pop.dele_many(old)
            self.report.deleted += len(old)
        for batch in _batches(new, max(1, self.options.batch)):
            done = await self._fetch_batch(pop, batch)
            if not keep:
                await pop.dele_many(msg for msg, _ in batch)
                self.report.deleted += len(done)

    async def _fetch_batch(self, pop: PopClient, batch: Sequence[tuple[MsgNo, Uidl]]
                           ) -> list[str]:
        source = self.source
        done: list[str] = []
        try:
            for msg, uidl in batch:
                key = message_key(source.server, source.port, source.user, uidl)
                if self.destination.has(key):
                    self.log(f"message {msg} ({uidl}) was delivered by an interrupted run")
                    self.report.found += 1
                else:
                    await self._deliver(pop, msg, key)
                    self.log(f"message {msg} ({uidl}) delivered")
                    self.report.delivered += 1
                done.append(uidl)
        finally:
            if done:
                await asyncio.to_thread(self.destination.commit, done, self.journal)
        return done

    async def _deliver(self, pop: PopClient, msg: MsgNo, key: str) -> None:
        writer = self.destination.writer(key)
        try:
            await pop.retr_to(msg, writer)
            writer.finish()
        except BaseException:
            writer.abort()
            raise

    async def _without_uidl(self, pop: PopClient) -> None:
        numbers = sorted(await pop.list())
        if self.options.limit is not None and len(numbers) > self.options.limit:
            self.report.left = len(numbers) - self.options.limit
            numbers = numbers[: self.options.limit]
        for batch in _batches(numbers, max(1, self.options.batch)):
            done: list[MsgNo] = []
            try:
                for msg in batch:
                    await self._deliver(pop, msg, secrets.token_hex(16))
                    self.log(f"message {msg} delivered")
                    self.report.delivered += 1
                    done.append(msg)
            finally:
                if done:
                    await asyncio.to_thread(self.destination.commit, [], self.journal)
            await pop.dele_many(done)
            self.report.deleted += len(done)
