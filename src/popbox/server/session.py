"""One POP3 session: reads bytes, feeds the core, answers each event, writes bytes.

The loop reads whatever the client sent, answers every complete command in order
(pipelining) and flushes the answers with one write. Message bodies are streamed chunk by
chunk with `drain()`, so a client that does not read is paused, not buffered, and is cut
off by the send timeout. Idle clients are logged out (RFC 1939 §3) after
`limits.idle_timeout` of silence once logged in. Before login the limit is a deadline, not
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
from typing import assert_never

from popbox import __version__
from popbox.proto import events as ev
from popbox.proto.types import State
from popbox.proto.wire import MessageEncoder, TopFilter
from popbox.server import replies
from popbox.server.context import ServerContext
from popbox.server.io import SessionIO
from popbox.server.login import Login
from popbox.server.transaction import Transaction
from popbox.store.base import Failure, MessageGone, StoreError

log = logging.getLogger("popbox")

FLUSH_AT = 64 * 1024  # a message piece this big is sent before the next one is read


class Session:
    __slots__ = ("_out", "bad", "bytes_sent", "conn", "ctx", "io", "login", "login_deadline",
                 "peer", "record", "retr_count", "txn")

    def __init__(self, ctx: ServerContext, io: SessionIO) -> None:
        self.ctx = ctx
        self.io = io
        self.conn = io.conn
        self.peer = io.peer
        self.login = Login(ctx, self.peer, secure=io.secure)
        if io.secure:
            self.login.tls_started(self._ssl_object())
        self.txn: Transaction | None = None
        self.bad = 0
        self.retr_count = 0
        self.bytes_sent = 0
        self._out: list[bytes] = []
        self.login_deadline = io.loop.time() + ctx.config.limits.login_timeout

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
                greeting = f"{greeting} {self.login.timestamp}"
            self._emit(self.conn.send(ev.Ok(greeting)))
            reason = await self._serve()
        except asyncio.CancelledError:
            reason = "shutdown"
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
                await self._handle(event)
                if self.record.timing:
                    self.record.timed()
                if conn.state is State.CLOSED:
                    await self._flush()
                    return self._close_reason(event)
            await self._flush()
            try:
                await self.io.receive(self._deadline())
            except TimeoutError:
                self._emit(conn.send(replies.IDLE_TIMEOUT))
                await self._flush()
                return "idle-timeout"

    def _close_reason(self, event: ev.Event) -> str:
        match event:
            case ev.Quit():
                return "quit"
            case ev.Invalid():
                return "bad-commands"
            case _ if self.login.failures >= self.ctx.config.limits.max_auth_failures:
                return "auth-failures"
            case _:
                return "disconnect"

    def _deadline(self) -> float:
        """When the wait for the client's next bytes ends (on the loop's clock)."""
        if self.conn.state is State.TRANSACTION:
            return self.io.loop.time() + self.ctx.config.limits.idle_timeout
        return self.login_deadline

    async def _end(self, reason: str) -> None:
        if self.txn is not None:
            await asyncio.shield(self.txn.maildrop.release())
        self.ctx.observe.logout(
            self.record, reason, retr=self.retr_count, octets=self.bytes_sent,
            dele=len(self.txn.deleted) if self.txn is not None and reason == "quit" else 0)
        self.io.close()

    # --- output ---

    def _emit(self, data: bytes) -> None:
        self._out.append(data)

    def _reply(self, reply: ev.Reply) -> None:
        if reply.__class__ is ev.Err:
            self.record.failed()
        self._emit(self.conn.send(reply))

    async def _flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self.io.write(data)
        if not self.io.writable:  # the client is not keeping up: wait, but not forever
            async with asyncio.timeout(self.ctx.config.limits.send_timeout):
                await self.io.drain()

    # --- dispatch ---

    async def _handle(self, event: ev.Event) -> None:
        match event:  # the commands of a logged-in session first: most events are these
            case (ev.Stat() | ev.List() | ev.Uidl() | ev.Retr() | ev.Top() | ev.Dele() | ev.Noop()
                  | ev.Rset()):
                assert self.txn is not None
                await self._transaction(self.txn, event)
            case ev.ConnectionClosed():
                pass
            case ev.Invalid(problem, verb):
                self._invalid(problem, verb)
            case ev.Capa():
                self._reply(ev.MultiLine("Capability list follows", await self._capabilities()))
            case ev.Quit():
                await self._quit()
            case ev.Utf8():
                self._reply(ev.Ok("UTF8 enabled"))
            case ev.Stls():
                await self._starttls()
            case (ev.User() | ev.Pass() | ev.Apop() | ev.Auth() | ev.SaslResponse()
                  | ev.SaslCancel()):
                reply = await self.login.handle(event)
                if isinstance(reply, Transaction):
                    self.txn = reply
                    count, size = reply.stat()
                    reply = ev.Ok(f"Logged in. {count} messages ({size} octets).")
                self._reply(reply)
                if self.login.failures >= self.ctx.config.limits.max_auth_failures:
                    self.conn.close()  # enough guesses on one connection
            case _:
                assert_never(event)

    async def _starttls(self) -> None:
        """RFC 2595 §4: +OK, then the TLS handshake; the core has dropped anything the
        client pipelined after STLS, and the session starts over in AUTHORIZATION."""
        tls = self.ctx.tls
        if tls is None:
            self._reply(replies.STLS_UNAVAILABLE)
            return
        if self.login.secure:
            self._reply(replies.ALREADY_SECURE)
            return
        self._reply(ev.Ok("Begin TLS negotiation now."))
        await self._flush()
        self.ctx.observe.starttls(None)
        await self.io.start_tls(tls.context, self.ctx.config.tls.handshake_timeout)
        self.login.tls_started(self._ssl_object())
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

    async def _capabilities(self) -> tuple[str, ...]:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "UTF8 USER"]
        if self.conn.state is State.AUTHORIZATION:
            if self.ctx.tls is not None and not self.login.secure:
                caps.append("STLS")
            if self.login.cleartext_allowed:
                caps.append("USER")
            sasl_mechanisms = await self.login.mechanisms()
            if sasl_mechanisms:  # SCRAM and CRAM-MD5 may be offered without TLS
                caps.append("SASL " + " ".join(sasl_mechanisms))
        caps += [
            "EXPIRE NEVER",
            # RFC 2449 §6.8: the global value before login, the user's own after it.
            f"LOGIN-DELAY {self.login.login_delay}",
            f"IMPLEMENTATION popbox-{__version__}",
        ]
        return tuple(caps)

    async def _quit(self) -> None:
        txn = self.txn
        if txn is None:
            self._reply(ev.Ok("Logging out."))
            return
        # RFC 1939 §6: the UPDATE state. Shielded: a shutdown must not cut a commit in half.
        seen = txn.retrieved - txn.deleted
        result = await asyncio.shield(txn.maildrop.commit(txn.deleted, seen))
        if isinstance(result, Failure):
            self.ctx.observe.store_error(result)
            self._reply(replies.failure(result))
            return
        self._reply(ev.Ok(f"Logging out, {result.deleted} messages deleted."))

    # --- TRANSACTION (RFC 1939 §5) ---

    async def _transaction(self, txn: Transaction, event: ev.Command) -> None:
        match event:
            case ev.Stat():
                count, size = txn.stat()
                self._reply(ev.Ok(f"{count} {size}"))
            case ev.List(None):
                count, size = txn.stat()
                lines = txn.lines(list(map(str, txn.maildrop.messages.sizes)))
                self._reply(ev.MultiLine(f"{count} messages ({size} octets)", lines))
            case ev.Uidl(None):
                lines = txn.lines(txn.maildrop.messages.uidls)
                self._reply(ev.MultiLine("Unique-ID listing follows", lines))
            case ev.List(msg) | ev.Uidl(msg) | ev.Dele(msg) if msg is not None:
                index = txn.index(msg)
                if isinstance(index, ev.Err):
                    self._reply(index)
                elif isinstance(event, ev.List):
                    self._reply(ev.Ok(f"{msg} {txn.size(index)}"))
                elif isinstance(event, ev.Uidl):
                    self._reply(ev.Ok(f"{msg} {txn.uidl(index)}"))
                else:
                    txn.deleted.add(index)
                    self._reply(ev.Ok(f"Message {msg} deleted."))
            case ev.Retr(msg) | ev.Top(msg):
                index = txn.index(msg)
                if isinstance(index, ev.Err):
                    self._reply(index)
                    return
                top = event.lines if isinstance(event, ev.Top) else None
                await self._send_message(txn, index, top)
            case ev.Noop():
                self._reply(ev.Ok())
            case ev.Rset():
                txn.rset()
                count, size = txn.stat()
                self._reply(ev.Ok(f"Maildrop has {count} messages ({size} octets)."))
            case _:
                raise AssertionError(f"not a transaction command: {event!r}")

    async def _send_message(self, txn: Transaction, index: int, top: int | None) -> None:
        """RETR / TOP: +OK, the byte-stuffed message (or its top), the terminator."""
        chunks = txn.maildrop.read(index)
        chunk: bytes | None
        try:
            chunk = await anext(chunks, b"")
        except MessageGone:
            self.ctx.observe.store_error(Failure.GONE)
            self._reply(replies.MESSAGE_GONE)
            return
        except StoreError as exc:
            self.ctx.observe.store_error(exc.failure)
            self._reply(replies.failure(exc.failure))
            return
        size = txn.size(index)
        self._reply(ev.Ok(f"{size} octets" if top is None else "Top of message follows"))
        encoder = MessageEncoder(no_nuls="outlook-no-nuls" in self.ctx.config.server.workarounds)
        limit = TopFilter(top) if top is not None else None
        try:
            while chunk is not None:
                data = encoder.feed(limit.feed(chunk) if limit else chunk)
                del chunk  # while the client is waited for, only the bytes sent are held
                big = len(data) >= FLUSH_AT
                if data:
                    self.bytes_sent += len(data)
                    self._emit(data)
                    del data
                if limit is not None and limit.done:
                    break
                if big:
                    # Send it and wait for the client if it lags, before reading more. A
                    # small message goes out in one write with its +OK line and terminator.
                    await self._flush()
                chunk = await anext(chunks, None)
        except StoreError:
            # Half a message is on the wire: the only honest thing left is to hang up.
            log.error("message read failed mid-stream ip=%s index=%d", self.peer, index)
            self.ctx.observe.store_error(Failure.TEMPORARY)
            raise ConnectionError("store failed while streaming") from None
        finally:
            await chunks.aclose()
        self._emit(encoder.finish())
        if top is None:
            txn.retrieved.add(index)
            self.retr_count += 1
