"""The client's wire: one `ClientConnection` core over asyncio streams, with timeouts.

`send()` writes commands (pipelined when given several) and waits while the server does
not read; `event()` feeds the core until it has a reply event. Every read and write has
a timeout. A timeout, a protocol error, a broken or closed connection, or a command the
core refuses end here as the client's own exceptions (`client.errors`): after the first
three the connection is aborted, because the reply stream cannot be trusted any more.
Nothing from `proto` or asyncio escapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncGenerator

from popbox.client import errors as er
from popbox.proto import events as ev
from popbox.proto.client import ClientConnection
from popbox.proto.commands import verb

READ_SIZE = 65536


class Channel:
    __slots__ = ("_core", "_dead", "_reader", "_writer", "timeout")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float) -> None:
        self._reader = reader
        self._writer = writer
        self.timeout = timeout
        self._core = ClientConnection()
        self._dead: str | None = None

    @property
    def closed(self) -> bool:
        return self._dead is not None

    @property
    def writer(self) -> asyncio.StreamWriter:
        return self._writer

    def peer_is_loopback(self) -> bool:
        peer = self._writer.get_extra_info("peername")
        try:
            address = ipaddress.ip_address(peer[0]) if peer else None
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return address is not None and address.is_loopback

    def close(self, why: str = "closed") -> None:
        """Drop the connection at once (no QUIT)."""
        if self._dead is None:
            self._dead = why
        self._writer.transport.abort()

    def broken(self, exc: er.PopClientError) -> er.PopClientError:
        self._dead = str(exc)
        self._writer.transport.abort()
        return exc

    async def finish(self) -> None:
        """After QUIT: close and wait (within the timeout) for the close to complete."""
        if self._dead is None:
            self._dead = "quit"
        self._writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.timeout):
                await self._writer.wait_closed()

    def tls_started(self) -> None:
        self._core.tls_started()

    async def _read(self) -> bytes:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._reader.read(READ_SIZE)
        except TimeoutError:
            raise self.broken(er.PopTimeoutError(
                f"no answer from the server within {self.timeout:g}s")) from None
        except OSError as exc:
            raise self.broken(er.PopConnectionError(
                f"connection lost: {exc.strerror or exc}")) from None

    async def send(self, *commands: ev.Command) -> None:
        if self._dead is not None:
            raise er.PopConnectionError(f"the connection is closed ({self._dead})")
        try:
            data = b"".join([self._core.send(c) for c in commands])
        except ev.LocalProtocolError as exc:
            raise er.PopUsageError(str(exc)) from None
        self._writer.write(data)
        try:
            async with asyncio.timeout(self.timeout):
                await self._writer.drain()
        except TimeoutError:
            raise self.broken(er.PopTimeoutError("the server does not read")) from None
        except OSError as exc:
            raise self.broken(er.PopConnectionError(
                f"connection lost: {exc.strerror or exc}")) from None

    async def event(self) -> ev.Reply:
        while True:
            event = self._core.next_event()
            if isinstance(event, ev.Sentinel):
                self._core.receive_data(await self._read())
                continue
            match event:
                case ev.ProtocolError(reason):
                    raise self.broken(er.PopProtocolError(reason))
                case ev.Closed():
                    raise self.broken(er.PopConnectionError("the server closed the connection"))
                case _:
                    return event

    def unexpected(self, event: ev.Reply) -> er.PopClientError:
        return self.broken(er.PopProtocolError(f"unexpected {type(event).__name__}"))

    async def status(self) -> ev.Ok:
        """The next status line; -ERR is raised as the `PopError` its code says."""
        event = await self.event()
        match event:
            case ev.Ok():
                return event
            case ev.Err(command=command):
                raise er.error_for(event, "greeting" if command is None else verb(command))
            case _:
                raise self.unexpected(event)

    async def lines(self) -> list[str]:
        """The lines of a multi-line listing, after its +OK."""
        lines: list[str] = []
        while True:
            event = await self.event()
            match event:
                case ev.Lines(more):
                    lines.extend(more)
                case ev.End():
                    return lines
                case _:
                    raise self.unexpected(event)

    async def body(self) -> AsyncGenerator[bytes, None]:
        """A message (RETR, TOP) after its +OK, piece by piece. Left before its end, the
        connection is closed: the rest would still be coming."""
        await self.status()
        done = False
        try:
            while True:
                event = await self.event()
                match event:
                    case ev.Data(data):
                        if data:
                            yield data
                    case ev.End():
                        done = True
                        return
                    case _:
                        raise self.unexpected(event)
        finally:
            if not done and self._dead is None:
                self.broken(er.PopConnectionError("a message was not read to its end"))
