"""`popbox fetch`: download mail from a POP3 server into a Maildir, an mbox, a mail
delivery agent, an LMTP server or an SMTP server, applying the account's retention rules.
Maildir and mbox deliveries are exactly once, whatever interrupts a run (kill -9, a dropped
connection, an -ERR); MDA, LMTP and SMTP deliveries are at least once.

A message is identified by its UIDL (RFC 1939 §7), which the server keeps for as long as
it keeps the message. For each session:

1. Settle any mbox append an earlier run left half done (`popbox.client.mbox.recover`).
2. Log in; CAPA (RFC 2449 §5), then LIST and UIDL list the maildrop. UIDLs the state file
   knows but the server no longer lists are forgotten.
3. Messages whose UIDL is recorded as delivered are not fetched again; those the retention
   rule says are due are DELE'd (an earlier run recorded them, but its QUIT never happened,
   or their `keep_days` are over).
4. The size rule: a new message over `max_size` is left and reported once (`skip`), DELE'd
   unread (`delete`), or stood in for by its headers (`headers`: `TOP n 0`, RFC 1939 §7,
   plus a short note, recorded as `"headers " + UIDL` so that the stand-in is delivered
   once; the message itself stays on the server, as it was never delivered).
5. The others (at most `limit`) are fetched in batches: each message is streamed to the
   destination (Maildir: `tmp/`, fsync, link into `new/`; mbox: a spool file, fsync; MDA,
   LMTP, SMTP: a spool file, then handed over whole), and its UIDL is recorded in an atomic
   state write: for Maildir and mbox once per batch (`commit`: made durable, then recorded),
   for the others right after each success reply (`records_each`). Only then are the
   batch's messages DELE'd, those the retention rule says are due. A failure mid-batch
   commits what was complete.
6. QUIT makes the server remove the DELE'd messages (RFC 1939 §6). Without QUIT (crash,
   dropped connection) it removes nothing, and the next run DELEs them again (3).

So a message is DELE'd only after its delivery is recorded, and recorded only after it is
durable (or acknowledged). What a crash can leave between "durable" and "recorded" is
found again: in a Maildir by the key in the file name (a hash of server, port, user and
UIDL), in an mbox by the pending append in the state file. A program or a server cannot be
asked what it was given, so a kill between its success reply and the record delivers that
one message again next time; it never loses one.

Outcomes of a delivery: `DeliveryFailed` (the destination refused that message for good)
leaves it on the server, counts it in `Report.failed` with a line in `Report.notes`, and
the run goes on; `DeliveryDeferred` (a temporary refusal) ends the run like `stop()`: what
is recorded is DELE'd, QUIT is sent, and then `run` raises it (the counts so far are in
`Fetcher.report`).

Retention (RFC 2449 §6.7 for EXPIRE): by default a message is DELE'd once recorded; with
`keep`, never; with `keep_days`, once that many days have passed since it was first
recorded (the state file keeps the time; a record older than that field counts from the
first run that sees it). When the server announces `EXPIRE n` (after login: the user's own
value) with n below `keep_days`, n wins, and `Report.notes` says so; with `keep`, a finite
EXPIRE is reported (the server deletes the mail anyway).

A server without UIDL: messages are fetched and deleted, and a crash between a delivery
and the QUIT that deletes it delivers that message again next time (at least once). With
`keep` or `keep_days`, such a server is refused: old mail could not be told from new.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

from popbox.client import errors as er
from popbox.client import mbox
from popbox.client.connection import Capabilities, PopClient, Tls, connect
from popbox.client.retention import Retention, server_expire, stand_in
from popbox.client.state import HEADERS, Journal, StateFile
from popbox.proto.types import MsgNo, Uidl

AUTH_METHODS = ("auto", "user", "apop", "plain", "login", "cram-md5", "scram-sha-1",
                "scram-sha-256")


class FetchRefused(er.PopUnsupportedError):
    """The server cannot be fetched from safely with these options."""


class DeliveryDeferred(Exception):
    """The destination could not take a message now (an MDA's exit status 75 or a signal,
    an LMTP/SMTP 4xx reply): it was not delivered, and the run ends; the next run tries it
    again."""


class DeliveryFailed(Exception):
    """The destination refused a message for good (another MDA exit status, a 5xx reply):
    it is left on the server and reported; the run goes on with the next message."""


class Writer(Protocol):
    def write(self, data: bytes, /) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


class Progress(Protocol):
    """What a display is told while an account is fetched."""

    def begin(self, messages: int, octets: int) -> None:
        """`messages` new messages (their LIST sizes add up to `octets`) will be fetched."""

    def advance(self, octets: int) -> None:
        """`octets` more of message data arrived."""

    def done_message(self) -> None:
        """One more message was delivered (or found delivered)."""


class Destination(Protocol):
    """Where messages go. `writer(key, uidl)` takes one message; its `finish` (run in a
    worker thread) delivers it or raises `DeliveryDeferred`/`DeliveryFailed`; `commit`
    records finished ones. `has(key)`: delivered already by an interrupted run.
    `records_each`: each delivery is final when `finish` returns, so it is recorded at
    once rather than per batch. `close` ends the destination's side of the run."""

    records_each: bool

    def open(self) -> None: ...

    def has(self, key: str) -> bool: ...

    def writer(self, key: str, uidl: str) -> Writer: ...

    def commit(self, uidls: Sequence[str], journal: Journal) -> None: ...

    def close(self) -> None: ...


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


Oversize = Literal["skip", "delete", "headers"]


@dataclass(frozen=True)
class Options:
    keep: bool = False  # never DELE
    limit: int | None = None  # new messages fetched per run at most
    batch: int = 32  # messages recorded (Maildir, mbox) and DELE'd together
    keep_days: float | None = None  # DELE this many days after the first delivery
    max_size: int | None = None  # messages larger than this (LIST octets) are `oversize`
    oversize: Oversize = "skip"
    clock: Callable[[], float] = time.time  # wall-clock seconds

    def __post_init__(self) -> None:
        if self.keep_days is not None and not self.keep_days >= 0:
            raise ValueError("keep_days must be a number of days, 0 or more")
        if self.max_size is not None and self.max_size < 0:
            raise ValueError("max_size must be a number of octets, 0 or more")
        if self.oversize not in ("skip", "delete", "headers"):
            raise ValueError(f"oversize must be skip, delete or headers, not {self.oversize!r}")


@dataclass
class Report:
    new: int = 0  # messages on the server not delivered before this run
    delivered: int = 0  # fetched and delivered now
    found: int = 0  # delivered by an interrupted run, recorded now
    deleted: int = 0  # DELE'd (removed by the server at QUIT)
    left: int = 0  # new messages not fetched because of the limit
    duplicates: int = 0  # messages whose UIDL another message has too (left alone)
    skipped: int = 0  # new messages left on the server on purpose (the limit included)
    failed: int = 0  # messages the destination refused for good (left on the server)
    octets: int = 0  # message data received
    stopped: bool = False  # `stop()` ended the run early
    notes: list[str] = field(default_factory=list)  # per-message problems, for the report


class _Counting:
    """Passes pieces on to a writer, counting them for the report and the display."""

    def __init__(self, writer: Writer, report: Report, progress: Progress | None) -> None:
        self._writer = writer
        self._report = report
        self._progress = progress

    def write(self, data: bytes) -> None:
        self._writer.write(data)
        self._report.octets += len(data)
        if self._progress is not None:
            self._progress.advance(len(data))


def message_key(server: str, port: int, user: str, uidl: str) -> str:
    """The name a message carries in a Maildir: 128 bits of SHA-256."""
    data = "\0".join((server, str(port), user, uidl)).encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:32]


async def _login(pop: PopClient, source: Source) -> None:
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


@dataclass(frozen=True)
class _Item:
    """One delivery: message `msg` itself, or (`headers`) its stand-in."""

    msg: MsgNo
    uidl: Uidl
    headers: bool = False

    @property
    def record(self) -> str:
        return HEADERS + self.uidl if self.headers else self.uidl


class Fetcher:
    def __init__(self, source: Source, destination: Destination, state: StateFile,
                 options: Options, log: Callable[[str], None] = lambda _: None,
                 progress: Progress | None = None) -> None:
        self.source = source
        self.destination = destination
        self.state = state
        self.options = options
        self.log = log
        self.progress = progress
        self.report = Report()
        self._stopping = False
        self._deferred: DeliveryDeferred | None = None
        self._sizes: dict[MsgNo, int] = {}
        self.capabilities: Capabilities | None = None  # the server's, after login
        account = state.account(source.server, source.port, source.user)
        self.journal = Journal(state, account, options.clock)

    def prepare(self) -> None:
        """Settle interrupted mbox appends (of every account in the state file), then
        open the destination."""
        for account in self.state.accounts():
            if account.pending is not None:
                path = account.pending.path
                outcome = mbox.recover(Journal(self.state, account, self.options.clock),
                                       self.state.spool_dir)
                self.log(f"interrupted delivery to {path}: {outcome}")
        self.destination.open()

    def stop(self) -> None:
        """End the run after the message in flight: it is delivered and recorded, what is
        recorded is DELE'd (unless `keep`), and the session ends with QUIT."""
        self._stopping = True

    def _note(self, text: str) -> None:
        self.report.notes.append(text)
        self.log(text)

    async def run(self) -> Report:
        """One session. Raises `DeliveryDeferred` after QUIT if the destination deferred a
        message (`self.report` has the counts)."""
        source = self.source
        try:
            async with await connect(source.server, source.port, tls=source.tls,
                                     ssl_context=source.ssl_context,
                                     timeout=source.timeout) as pop:
                await _login(pop, source)
                with contextlib.suppress(er.PopError):
                    await pop.capa()  # PIPELINING, EXPIRE and friends, as after login
                self.capabilities = pop.capabilities
                self._sizes = sizes = await pop.list()
                uidls = await _uidls(pop)
                if uidls is None:
                    if self.options.keep or self.options.keep_days is not None:
                        raise FetchRefused("the server has no UIDL, so old mail cannot be "
                                           "told from new: keeping mail on it is refused")
                    await self._without_uidl(pop, sizes)
                else:
                    await self._with_uidl(pop, uidls, sizes)
        finally:
            await asyncio.to_thread(self.destination.close)
        if self._deferred is not None:
            raise self._deferred
        return self.report

    def _begin(self, msgs: Sequence[MsgNo], sizes: dict[MsgNo, int], stand_ins: int = 0
               ) -> None:
        """Tell the display what is coming (a stand-in's octets are not known ahead)."""
        if self.progress is not None:
            self.progress.begin(len(msgs) + stand_ins, sum(sizes.get(msg, 0) for msg in msgs))

    def _done_message(self) -> None:
        if self.progress is not None:
            self.progress.done_message()

    async def _with_uidl(self, pop: PopClient, uidls: dict[MsgNo, Uidl],
                         sizes: dict[MsgNo, int]) -> None:
        journal, options, report = self.journal, self.options, self.report
        account = journal.account
        changed = journal.forget_missing(set(uidls.values()))
        rule, note = Retention.of(options.keep, options.keep_days, server_expire(pop.capabilities))
        if note is not None:
            self._note(note)
        now = options.clock()
        if rule.counts_days:  # records from before times were kept count from now
            for uidl in account.delivered - account.delivered_at.keys():
                if not uidl.startswith(HEADERS):
                    account.delivered_at[uidl] = now
                    changed = True
        seen: set[str] = set()
        old: list[MsgNo] = []
        items: list[_Item] = []
        unread: list[MsgNo] = []  # over max_size, DELE'd without fetching
        for msg in sorted(uidls):
            uidl = uidls[msg]
            if uidl in seen:
                report.duplicates += 1
                self.log(f"message {msg} has the same UIDL as an earlier one: left alone")
                continue
            seen.add(uidl)
            if journal.delivered(uidl):
                if rule.due(account.delivered_at.get(uidl), now):
                    old.append(msg)
                continue
            report.new += 1
            size = sizes.get(msg, 0)
            if options.max_size is None or size <= options.max_size:
                items.append(_Item(msg, uidl))
                continue
            what = f"message {msg} ({uidl}) is {size} octets, over max_size {options.max_size}"
            match options.oversize:
                case "delete":
                    unread.append(msg)
                    self._note(f"{what}: deleted on the server without being fetched")
                case "headers" if not journal.delivered(HEADERS + uidl):
                    items.append(_Item(msg, uidl, headers=True))
                case _:
                    report.skipped += 1
                    if uidl not in account.oversize_reported:
                        account.oversize_reported.add(uidl)
                        changed = True
                        self._note(f"{what}: left on the server" + (
                            " (its headers were delivered)" if options.oversize == "headers"
                            else ""))
        if changed:
            await asyncio.to_thread(self.state.save)
        if options.limit is not None and len(items) > options.limit:
            report.left = len(items) - options.limit
            report.skipped += report.left
            items = items[: options.limit]
        if old or unread:
            await pop.dele_many(sorted(old + unread))
            report.deleted += len(old) + len(unread)
        self._begin([item.msg for item in items if not item.headers], sizes,
                    sum(item.headers for item in items))
        for batch in _batches(items, max(1, options.batch)):
            done = await self._fetch_batch(pop, batch)
            due = [item.msg for item in done if not item.headers
                   and rule.due(account.delivered_at.get(item.uidl), options.clock())]
            if due:
                await pop.dele_many(due)
                report.deleted += len(due)
            if self._stopping:
                report.stopped = self._deferred is None
                break

    async def _fetch_batch(self, pop: PopClient, batch: Sequence[_Item]) -> list[_Item]:
        """Deliver `batch`; the items delivered and recorded (in order)."""
        source, destination = self.source, self.destination
        done: list[_Item] = []
        unrecorded: list[str] = []
        try:
            for item in batch:
                if self._stopping:
                    break
                key = message_key(source.server, source.port, source.user, item.record)
                what = f"message {item.msg} ({item.uidl})" + (
                    " headers" if item.headers else "")
                if destination.has(key):
                    self.log(f"{what} was delivered by an interrupted run")
                    self.report.found += 1
                else:
                    try:
                        await self._deliver(pop, item, key)
                    except DeliveryFailed as exc:
                        self.report.failed += 1
                        self._note(f"{what} was refused, left on the server: {exc}")
                        continue
                    except DeliveryDeferred as exc:
                        self._deferred = exc
                        self._stopping = True
                        self._note(f"{what} could not be delivered now, the run ends: {exc}")
                        break
                    self.log(f"{what} delivered")
                    if item.headers:
                        self.report.skipped += 1
                        self.journal.account.oversize_reported.add(item.uidl)
                        self._note(f"{what}: over max_size, its headers were delivered")
                    else:
                        self.report.delivered += 1
                if destination.records_each:
                    await asyncio.to_thread(destination.commit, [item.record], self.journal)
                else:
                    unrecorded.append(item.record)
                done.append(item)
                self._done_message()
        finally:
            if unrecorded:
                await asyncio.to_thread(destination.commit, unrecorded, self.journal)
        return done

    async def _deliver(self, pop: PopClient, item: _Item, key: str) -> None:
        writer = self.destination.writer(key, item.uidl)
        try:
            if item.headers:
                top = await pop.top(item.msg, 0)
                self.report.octets += len(top)
                if self.progress is not None:
                    self.progress.advance(len(top))
                assert self.options.max_size is not None
                writer.write(stand_in(top, self._sizes.get(item.msg, 0), self.options.max_size,
                                      self.source.server, item.uidl))
            else:
                await pop.retr_to(item.msg, _Counting(writer, self.report, self.progress))
        except BaseException:
            writer.abort()
            raise
        await asyncio.to_thread(writer.finish)

    async def _without_uidl(self, pop: PopClient, sizes: dict[MsgNo, int]) -> None:
        options, report = self.options, self.report
        numbers: list[MsgNo] = []
        unread: list[MsgNo] = []
        for msg in sorted(sizes):
            if options.max_size is not None and sizes[msg] > options.max_size:
                what = f"message {msg} is {sizes[msg]} octets, over max_size {options.max_size}"
                if options.oversize == "delete":
                    unread.append(msg)
                    self._note(f"{what}: deleted on the server without being fetched")
                else:  # without a UIDL no stand-in could be told from the next run's
                    report.skipped += 1
                    self._note(f"{what}: left on the server")
            else:
                numbers.append(msg)
        report.new = len(numbers) + len(unread) + report.skipped
        if options.limit is not None and len(numbers) > options.limit:
            report.left = len(numbers) - options.limit
            report.skipped += report.left
            numbers = numbers[: options.limit]
        if unread:
            await pop.dele_many(unread)
            report.deleted += len(unread)
        self._begin(numbers, sizes)
        for batch in _batches(numbers, max(1, options.batch)):
            done: list[MsgNo] = []
            try:
                for msg in batch:
                    if self._stopping:
                        break
                    try:
                        await self._deliver(pop, _Item(msg, Uidl("")), secrets.token_hex(16))
                    except DeliveryFailed as exc:
                        report.failed += 1
                        self._note(f"message {msg} was refused, left on the server: {exc}")
                        continue
                    except DeliveryDeferred as exc:
                        self._deferred = exc
                        self._stopping = True
                        self._note(f"message {msg} could not be delivered now, the run "
                                   f"ends: {exc}")
                        break
                    self.log(f"message {msg} delivered")
                    report.delivered += 1
                    done.append(msg)
                    self._done_message()
            finally:
                if done:
                    await asyncio.to_thread(self.destination.commit, [], self.journal)
            await pop.dele_many(done)
            report.deleted += len(done)
            if self._stopping:
                report.stopped = self._deferred is None
                break
