"""Transport glue between asyncio and one session: a `Protocol` that moves bytes and
pauses, with flow control both ways. Incoming bytes go straight to `received` (the
session's sans-IO core: no StreamReader copy); the session writes what its core makes.

Input is pulled: bytes that arrive while the session is busy stop the transport from
reading until the session asks for more (`receive()`), so a client that pipelines
megabytes of commands is held by TCP, not buffered here. (While the session waits for
input, reading goes on: a request-answer client never costs a pause and a resume, two
system calls per command.) What arrives while the session waits is first offered to
its `answer` hook, which answers what needs no coroutine and gives the new deadline to
wait for (the session's task is then not woken at all), or None to wake it. Output is
pushed with `write()`; `drain()` waits while the
transport's buffer is above its high-water mark, so a client that does not read is paused.

`receive(deadline)` raises TimeoutError once the loop's clock passes `deadline`. One timer
per session serves every wait: it is armed once and, when it fires early because the
deadline has moved on since, re-armed for the new one (no timer per command).

From `server.proxy_networks` the first bytes must be a PROXY protocol header (v1 or v2):
the session starts only once it is parsed, and sees the client's real address; a missing,
malformed or slow header closes the connection. A v2 header whose SSL TLV says the proxy
terminated TLS for the client (HAProxy `send-proxy-v2-ssl`) makes the session secure.
(The header precedes any TLS, so it is read on plain listeners: POP3S behind a proxy is
terminated by the proxy; STLS passes through it.)

STLS (RFC 2595 §4) goes through the public `loop.start_tls`: nothing can be received
between the +OK and the start of the handshake (both happen in one step of the loop),
and the core has already discarded whatever was pipelined after the STLS line.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from popbox.config import in_networks
from popbox.proto import proxy

log = logging.getLogger("popbox")


@dataclass(frozen=True, slots=True)
class _ProxyWait:
    """Waiting for a PROXY header: what came so far, and the timer that gives up."""

    buffered: bytes
    timer: asyncio.TimerHandle


def _drop(data: bytes) -> None:
    """Where bytes go before a session has taken the connection."""


class SessionIO(asyncio.Protocol):
    __slots__ = ("_closed", "_deadline", "_drain", "_input", "_paused", "_peer", "_proxied_tls",
                 "_proxy", "_proxy_from", "_reading", "_timer", "_upgrading", "answer", "loop",
                 "on_open", "received", "transport")

    def __init__(
        self, on_open: Callable[[SessionIO], None], proxy_networks: list[str] | None = None,
        proxy_timeout: float = 10.0,
    ) -> None:
        self.on_open = on_open
        self._proxy: _ProxyWait | None = None
        self._peer = "local"
        self.received: Callable[[bytes], None] = _drop  # set by the session: its core's input
        # set by the session: answers what it can at once while waiting (see data_received)
        self.answer: Callable[[], float | None] | None = None
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self._input: asyncio.Future[None] | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._reading = True  # a new transport reads until it is paused
        self._drain: asyncio.Future[None] | None = None
        self._paused = False
        self._closed = False
        self._upgrading = False
        self._proxy_from = (proxy_networks, proxy_timeout) if proxy_networks else None
        self._proxied_tls = False

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        name = transport.get_extra_info("peername")
        self._peer = str(name[0]) if isinstance(name, tuple) else "local"
        if self._proxy_from is not None and in_networks(self._peer, self._proxy_from[0]):
            timer = self.loop.call_later(self._proxy_from[1], self._proxy_fail)
            self._proxy = _ProxyWait(b"", timer)
            return
        self._stop_reading()  # until the session's first receive()
        self.on_open(self)

    def _proxy_fail(self, reason: str = "timeout") -> None:
        log.warning("proxy header refused ip=%s reason=%s", self._peer, reason.replace(" ", "-"))
        if self.transport is not None:
            self.transport.abort()

    def _proxy_data(self, wait: _ProxyWait, data: bytes) -> None:
        buffered = wait.buffered + data
        result = proxy.parse(buffered)
        if result is proxy.NEED_DATA:
            self._proxy = _ProxyWait(buffered, wait.timer)
            return
        wait.timer.cancel()
        self._proxy = None
        if isinstance(result, proxy.ProxyError):
            self._proxy_fail(result.reason)
            return
        assert isinstance(result, proxy.ProxyHeader) and self.transport is not None
        if result.source is not None:
            self._peer = result.source[0]
        self._proxied_tls = result.tls
        self._stop_reading()
        self.on_open(self)
        if result.rest:
            self.data_received(result.rest)

    def data_received(self, data: bytes) -> None:
        if self._proxy is not None:
            self._proxy_data(self._proxy, data)
            return
        self.received(data)
        waiter = self._input
        if waiter is not None and not waiter.done():
            # The session waits for input: what it can answer at once it answers here, and
            # goes on waiting, until the new deadline it gives (no task switch per command).
            answer = self.answer
            deadline = answer() if answer is not None else None
            if deadline is not None:
                self._deadline = deadline  # (the timer re-arms itself for a later one)
                return
            waiter.set_result(None)
        elif not self._upgrading:  # during STLS, self.transport is the raw one underneath TLS
            self._stop_reading()

    def eof_received(self) -> bool:
        self.received(b"")
        self._wake_input()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._proxy is not None:
            self._proxy.timer.cancel()
        self.received(b"")
        self._wake_input()
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("connection lost"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # --- for the session ---

    @property
    def peer(self) -> str:
        """The client's address: from the PROXY header when there was one."""
        return self._peer

    @property
    def secure(self) -> bool:
        """TLS here, or (PROXY v2 SSL TLV) between the client and the trusted proxy."""
        assert self.transport is not None
        return self._proxied_tls or self.transport.get_extra_info("sslcontext") is not None

    async def receive(self, deadline: float) -> None:
        """Wait until more bytes (or the end of input) have reached the core; raise
        TimeoutError if none have by `deadline` (on the loop's clock)."""
        if self._closed:
            return
        assert self.transport is not None
        self._deadline = deadline
        if self._timer is None or self._timer.when() > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(deadline, self._check_deadline)
        self._input = self.loop.create_future()
        if not self._reading:
            self._reading = True
            self.transport.resume_reading()
        try:
            await self._input
        finally:
            self._input = None

    def _check_deadline(self) -> None:
        self._timer = None
        waiter = self._input
        if waiter is None or waiter.done():
            return  # not waiting for input: the next receive() arms the timer again
        if self.loop.time() >= self._deadline:
            waiter.set_exception(TimeoutError())
        else:
            self._timer = self.loop.call_at(self._deadline, self._check_deadline)

    def _stop_reading(self) -> None:
        if self._reading and self.transport is not None:
            self._reading = False
            self.transport.pause_reading()

    def _wake_input(self) -> None:
        if self._input is not None and not self._input.done():
            self._input.set_result(None)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self._closed:
            self.transport.write(data)

    @property
    def writable(self) -> bool:
        """The transport's buffer is below its high-water mark: no need to wait."""
        return not self._paused and not self._closed

    async def drain(self) -> None:
        if self._closed:
            raise ConnectionResetError("connection lost")
        if not self._paused:
            return
        self._drain = self.loop.create_future()
        try:
            await self._drain
        finally:
            self._drain = None

    async def start_tls(self, context: ssl.SSLContext, handshake_timeout: float) -> None:
        assert self.transport is not None
        self._upgrading = True
        try:
            transport = await self.loop.start_tls(
                self.transport, self, context,
                server_side=True, ssl_handshake_timeout=handshake_timeout,
            )
        finally:
            self._upgrading = False
        self.transport = cast(asyncio.Transport, transport)
        self._reading = True
        self._stop_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
