"""One POP3 session: a router between the core, the transport and the two policies.

The session owns its sans-IO core (`proto.server.ServerConnection`): the transport
(`server.io.SessionIO`) hands it the bytes that arrive, and everything the core makes is
written back. Each command goes to the policy of its state: `Authorization` before
login (and CAPA's contents), `Transaction` after it; the session does what needs the
transport (STLS, flushing, streaming a message body) and keeps the budgets (bad
commands, login failures, timeouts).

The loop reads whatever the client sent, answers every complete command in order
(pipelining) and flushes the answers with one write. Message bodies are streamed chunk by
chunk with `drain()`, so a client that does not read is paused, not buffered, and is cut
off by the send timeout; a small message read whole (RETR) is queued in one piece, +OK
line, message and end, and goes out with the flush. While the loop waits for input, such
RETRs are answered as their bytes arrive, by the transport's callback (`_answer_now`):
the loop goes on waiting, unless something else came too (no task switch per RETR of a
client that retrieves one message after the other). Idle clients are logged out (RFC 1939
§3) after `limits.idle_timeout` of silence once logged in. Before login the limit is a deadline, not
an idle timer: `limits.login_timeout` from connect, so a client trickling one byte a
second cannot hold a connection slot for longer than that.

Only QUIT in the TRANSACTION state commits the maildrop. Every other way out (client
gone, timeout, too many errors, shutdown, an unexpected error) releases the lock and
changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import assert_never

from popbox.auth.names import normalize_username
from popbox.proto import events as ev
from popbox.proto.server import ServerConnection
from popbox.proto.types import State
from popbox.proto.wire import SizeCounter
from popbox.server import replies
from popbox.server.authorization import Authenticated, Authorization
from popbox.server.context import ServerContext
from popbox.server.io import SessionIO
from popbox.server.transaction import Body, Transaction, Whole
from popbox.server.userip import Slot
from popbox.store.base import Failure, StoreError
from popbox.store.last_login import LastLogin

log = logging.getLogger("popbox")

FLUSH_AT = 64 * 1024  # a message piece this big is sent before the next one is read


class Session:
    __slots__ = ("_fault", "_idle", "_limits_of", "_out", "authz", "bad", "bytes_sent", "conn",
                 "ctx", "io", "lang", "login_deadline", "peer", "record", "retr_count", "slot",
                 "txn", "utf8")

    def __init__(self, ctx: ServerContext, io: SessionIO) -> None:
        self.ctx = ctx
        self.io = io
        no_nuls = "outlook-no-nuls" in ctx.config.server.workarounds
        enabled = frozenset({"LAST"} if ctx.config.server.enable_last else ())
        self.conn = ServerConnection(no_nuls=no_nuls, enabled=enabled)
        io.received = self.conn.receive_data
        io.answer = self._answer_now
        self._fault: Exception | None = None  # raised by _answer_now, re-raised by _serve
        self.peer = io.peer
        self.authz = Authorization(ctx, self.peer, secure=io.secure)
        if io.secure:
            self.authz.tls_started(self._ssl_object())
        self.txn: Transaction | None = None
        self.slot: Slot | None = None  # of limits.max_connections_per_user_ip, once logged in
        self.bad = 0
        self.retr_count = 0
        self.bytes_sent = 0
        self._out: list[bytes] = []
        self.lang = replies.DEFAULT_LANGUAGE  # RFC 6856 §3: until LANG selects another
        self.utf8 = False  # RFC 6856 §2: after UTF8
        self.login_deadline = io.loop.time() + ctx.config.limits.login_timeout
        self._limits_of = ctx.config  # the configuration `_idle` was read from
        self._idle = ctx.config.limits.idle_timeout

    # --- the loop ---

    async def run(self) -> None:
        if not self.ctx.admit(self.peer):
            log.warning("connection refused ip=%s reason=connection-limit", self.peer)
            self.io.write(self.conn.send(replies.TOO_MANY_CONNECTIONS))
            self.io.close()
            return
        try:
            await self._run()
        finally:
            self.ctx.leave(self.peer)

    async def _run(self) -> None:
        log.info("connect ip=%s", self.peer)
        self.record = self.ctx.observe.connected(self, self.peer, self.io.transport,
                                                 self._ssl_object())
        reason = "disconnect"
        try:
            greeting = self.ctx.config.server.greeting
            if self.ctx.config.auth.apop:
                greeting = f"{greeting} {self.authz.timestamp}"
            self._emit(self.conn.send(ev.Ok(greeting)))
            reason = await self._serve()
        except asyncio.CancelledError:
            reason = "shutdown"
            if self.conn.replying:  # in the middle of a message: nothing more can be said
                self.conn.close()
            else:
                self._emit(self.conn.send(replies.SHUTTING_DOWN))
            self.io.write(b"".join(self._out))
            raise
        except (TimeoutError, ConnectionError) as exc:
            reason = "send-timeout" if isinstance(exc, TimeoutError) else "disconnect"
        except Exception:
            reason = "internal-error"
            log.exception("session error ip=%s", self.peer)
        finally:
            await self._end(reason)

    async def _serve(self) -> str:
        conn = self.conn
        while True:
            # Answer everything already received (pipelining), flush once, then wait.
            while (event := conn.next_event()) is not ev.NEED_DATA:
                assert not isinstance(event, ev.Sentinel), "a reply is missing"
                self.record.command(event)
                txn = self.txn
                # A RETR of a small message is answered here, without a coroutine.
                if (event.__class__ is ev.Retr and txn is not None
                        and (whole := txn.retr_whole(event.msg)) is not None):
                    if isinstance(whole, Whole):
                        self._send_whole(txn, whole)
                    else:
                        self._reply(whole)
                else:
                    await self._handle(event)
                if self.record.timing:
                    self.record.timed()
                if conn.state is State.CLOSED:
                    await self._flush()
                    return self._close_reason(event)
            if not self._send_out():  # (a coroutine only when the client lags)
                await self._flush()
            try:
                await self.io.receive(self._deadline())
            except TimeoutError:
                self._emit(conn.send(replies.IDLE_TIMEOUT))
                await self._flush()
                return "idle-timeout"
            if self._fault is not None:
                raise self._fault

    def _answer_now(self) -> float | None:
        """Called by the transport when bytes arrive while `_serve` waits for them: answer
        the RETRs among them that are answered whole (store.base.WholeSource, HeldWire),
        as `_serve` would, and send the answers. The new idle deadline when that was all
        (the session goes on waiting, no task switch); None to wake `_serve` for the rest
        (another command, a RETR it must stream, a client that lags)."""
        try:
            txn, conn = self.txn, self.conn
            if txn is None:
                return None
            record, answered = self.record, False
            while (event := conn.peek_retr()) is not None:
                if record.countdown == 1:  # the next command's time is sampled: _serve's
                    break
                whole = txn.retr_whole(event.msg)
                if whole is None:
                    break
                conn.next_event()  # (the same event: taken now)
                record.command(event)
                if isinstance(whole, Whole):
                    self._send_whole(txn, whole)
                else:
                    self._reply(whole)
                answered = True
            if not answered:
                return None
            if not self._send_out() or conn.has_input:
                return None
            return self._deadline()
        except Exception as exc:  # (in the transport's callback: _serve reports it)
            self._fault = exc
            return None

    def _close_reason(self, event: ev.Event) -> str:
        match event:
            case ev.Quit():
                return "quit"
            case ev.Invalid():
                return "bad-commands"
            case _ if self.authz.failures >= self.ctx.config.limits.max_auth_failures:
                return "auth-failures"
            case _:
                return "disconnect"

    def _deadline(self) -> float:
        """When the wait for the client's next bytes ends (on the loop's clock)."""
        if self.conn.state is State.TRANSACTION:
            config = self.ctx.config
            if config is not self._limits_of:  # reloaded: a new idle_timeout applies
                self._limits_of, self._idle = config, config.limits.idle_timeout
            return self.io.loop.time() + self._idle
        return self.login_deadline

    async def _end(self, reason: str) -> None:
        if self.txn is not None:
            await asyncio.shield(self.txn.maildrop.release())
        if self.slot is not None:
            self.ctx.user_ip.release(self.slot)
        self.ctx.observe.logout(
            self.record, reason, retr=self.retr_count, octets=self.bytes_sent,
            dele=len(self.txn.deleted) if self.txn is not None and reason == "quit" else 0)
        self.io.close()

    # --- output ---

    def _emit(self, data: bytes) -> None:
        self._out.append(data)

    def _reply(self, reply: ev.Ok | ev.Err | ev.Continuation | replies.Listing) -> None:
        conn = self.conn
        if reply.__class__ is ev.Err:
            self.record.failed()
        if self.lang != replies.DEFAULT_LANGUAGE and not isinstance(reply, ev.Continuation):
            reply = replies.localize(reply, self.lang)
        if isinstance(reply, replies.Listing):
            self._emit(conn.send(ev.Ok(reply.text)))
            self._emit(conn.send(ev.Lines(reply.lines)))
            self._emit(conn.send(ev.END))
        else:
            self._emit(conn.send(reply))

    def _send_out(self) -> bool:
        """Write what is queued, in one write; False if the client is not keeping up."""
        out = self._out
        if out:
            data = b"".join(out) if len(out) > 1 else out[0]
            out.clear()
            self.io.write(data)
        return self.io.writable

    async def _flush(self) -> None:
        if not self._send_out():  # the client is not keeping up: wait, but not forever
            async with asyncio.timeout(self.ctx.config.limits.send_timeout):
                await self.io.drain()

    # --- dispatch ---

    async def _handle(self, event: ev.Event) -> None:
        match event:  # the commands of a logged-in session first: most events are these
            case (ev.Retr() | ev.Stat() | ev.List() | ev.Uidl() | ev.Top() | ev.Dele() | ev.Noop()
                  | ev.Rset() | ev.Last()):
                assert self.txn is not None
                answer = await self.txn.handle(event)
                if isinstance(answer, Body):
                    await self._send_body(self.txn, answer)
                else:
                    self._reply(answer)
            case ev.ConnectionClosed():
                pass
            case ev.Invalid(problem, verb):
                self._invalid(problem, verb)
            case ev.Capa():
                caps = await self.authz.capabilities(self.conn.state)
                self._reply(replies.Listing("Capability list follows", caps))
            case ev.Quit():
                self._reply(await self.txn.quit() if self.txn else ev.Ok("Logging out."))
            case ev.Utf8():
                self.utf8 = self.authz.utf8 = True
                if self.txn is not None:
                    self.txn.utf8 = True
                self._reply(ev.Ok("UTF8 enabled"))
            case ev.Lang(tag):
                self._reply(self._lang(tag))
            case ev.Xtnd():
                self._reply(replies.XTND_UNSUPPORTED)
            case ev.Stls():
                await self._starttls()
            case (ev.User() | ev.Pass() | ev.Apop() | ev.Auth() | ev.SaslResponse()
                  | ev.SaslCancel()):
                verdict = await self.authz.handle(event)
                self._reply(await self._open(verdict) if isinstance(verdict, Authenticated)
                            else verdict)
                if self.authz.failures >= self.ctx.config.limits.max_auth_failures:
                    self.conn.close()  # enough guesses on one connection
            case _:
                assert_never(event)

    def _lang(self, tag: str | None) -> ev.Ok | ev.Err | replies.Listing:
        """RFC 6856 §3: list the languages, or select one. A language whose texts are not
        ASCII is selected only after UTF8 (§2: UTF-8 in responses needs UTF-8 mode)."""
        if tag is None:
            return replies.language_listing()
        lang = replies.choose_language(tag)
        if lang is None:
            return replies.LANG_UNSUPPORTED
        if not self.utf8 and not replies.language_is_ascii(lang):
            return replies.LANG_NEEDS_UTF8
        self.lang = lang
        return ev.Ok("Language changed.")

    async def _open(self, auth: Authenticated) -> ev.Ok | ev.Err:
        """Lock and list the maildrop of a client that has logged in."""
        assert self.ctx.mail is not None
        slot = self.ctx.user_ip.take(normalize_username(auth.user), self.peer,
                                     self.ctx.config.limits.max_connections_per_user_ip)
        if slot is None:
            return self.authz.limited(auth)
        self.slot = slot  # held until the session ends (given back at once if refused)
        maildrop = await self.ctx.mail.open(auth.info)
        refused = self.authz.opened(auth, maildrop)
        if refused is not None:
            self.ctx.user_ip.release(slot)
            self.slot = None
            return refused
        assert not isinstance(maildrop, Failure)
        if self.ctx.config.server.last_login:
            self.ctx.mail.note_login(auth.info, LastLogin(time.time(), self.peer))
        self.txn = Transaction(maildrop, auth.user, utf8=self.utf8 or (
            "8bit-headers" in self.ctx.config.server.workarounds),
            store_error=self.ctx.observe.store_error)
        count, size = self.txn.stat()
        return ev.Ok(f"Logged in. {count} messages ({size} octets).")

    async def _starttls(self) -> None:
        """RFC 2595 §4: +OK, then the TLS handshake; the core has dropped anything the
        client pipelined after STLS, and the session starts over in AUTHORIZATION."""
        tls = self.ctx.tls
        if tls is None:
            self._reply(replies.STLS_UNAVAILABLE)
            return
        if self.authz.secure:
            self._reply(replies.ALREADY_SECURE)
            return
        self._reply(ev.Ok("Begin TLS negotiation now."))
        await self._flush()
        self.ctx.observe.starttls(None)
        await self.io.start_tls(tls.context, self.ctx.config.tls.handshake_timeout)
        self.authz.tls_started(self._ssl_object())
        log.info("starttls ip=%s", self.peer)
        self.ctx.observe.starttls(self._ssl_object())

    def _invalid(self, problem: ev.Problem, verb: str) -> None:
        limits = self.ctx.config.limits
        self.bad += 1
        budget = (
            limits.bad_commands_after_login if self.txn else limits.bad_commands_before_login
        )
        if self.bad > budget:
            self._reply(replies.TOO_MANY_ERRORS)
            self.conn.close()
            return
        self._reply(replies.problem(problem, verb))

    def _ssl_object(self) -> ssl.SSLObject | None:
        transport = self.io.transport
        found = transport.get_extra_info("ssl_object") if transport is not None else None
        return found if isinstance(found, ssl.SSLObject) else None

    def _send_whole(self, txn: Transaction, whole: Whole) -> None:
        """RETR of a small message read whole: +OK, the message and the end in one piece,
        or -ERR if its size is not the one the snapshot promised. One held in wire form
        was written once with its size: nothing to check."""
        data = whole.data
        if whole.wire:
            self._out.append(self.conn.send_wire(whole.text, data))
            self.bytes_sent += len(data)  # as _send_body counts a body in wire form
            txn.sent(whole.index, retr=True)
            self.retr_count += 1
            return
        out = self.conn.send_message(whole.text, data, txn.size(whole.index))
        if out is None:
            txn.unsent(whole.index, "size changed")
            self._reply(replies.MESSAGE_CHANGED)
            return
        self._out.append(out)
        # the message's octets as sent, as _send_body counts them: not the +OK line (the
        # text, "+OK ", CRLF), not the end (".\r\n", and a line end the message lacked)
        self.bytes_sent += len(out) - len(whole.text) - 9 - (
            2 if data and data[-1:] != b"\n" else 0)
        txn.sent(whole.index, retr=True)
        self.retr_count += 1

    async def _send_body(self, txn: Transaction, body: Body) -> None:
        """RETR / TOP: +OK, the message (or its top) through the core, the end."""
        conn, emit = self.conn, self._out.append
        emit(conn.send(body.ok))
        reader, limit = body.reader, body.limit
        chunk, body.first = body.first, b""  # held only here: dropped once it is sent
        # A message longer than its first chunk is measured as it goes (the first was
        # checked before the +OK): a file changed after login must not end as a RETR.
        # A body in wire form was written once with its size: nothing to measure.
        wire = body.wire
        counter = SizeCounter() if limit is None and not reader.done and not wire else None
        try:
            while True:
                if counter is not None:
                    counter.feed(chunk)
                data = conn.send(ev.Data(limit.feed(chunk) if limit else chunk, wire))
                del chunk  # while the client is waited for, only the bytes sent are held
                big = len(data) >= FLUSH_AT
                if data:
                    self.bytes_sent += len(data)
                    emit(data)
                    del data
                if reader.done or (limit is not None and limit.done):
                    break
                if big:
                    # Send it and wait for the client if it lags, before reading more. A
                    # small message goes out in one write with its +OK line and terminator.
                    await self._flush()
                chunk = await reader.next()
        except StoreError:
            # Half a message is on the wire: the only honest thing left is to hang up.
            txn.unsent(body.index, "read failed mid-stream")
            self.ctx.observe.store_error(Failure.TEMPORARY)
            raise ConnectionError("store failed while streaming") from None
        finally:
            reader.close()
        if counter is not None and counter.finish() != txn.size(body.index):
            txn.unsent(body.index, "size changed mid-stream")
            raise ConnectionError("message changed while streaming")
        emit(conn.send(ev.END))
        txn.sent(body.index, retr=limit is None)
        if limit is None:
            self.retr_count += 1
