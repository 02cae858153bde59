"""A session without a socket: the part of asyncio.Transport a `SessionIO` uses, in memory.

The test plays the client: `send(line)` hands the session a command line, `reply()`
waits for one complete reply (a status line, or a multi-line reply up to its ".").
Everything else — the session loop, its core, its policies, the real store and password
file — runs as in `popbox serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from popbox.server.context import ServerContext
from popbox.server.io import SessionIO
from popbox.server.session import Session


class MemoryTransport:
    """Collects what the session writes; `close()` ends the session as a hang-up does."""

    def __init__(self, protocol: SessionIO) -> None:
        self.protocol = protocol
        self.loop = asyncio.get_running_loop()
        self.buffer = bytearray()
        self.wrote = asyncio.Event()
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.protocol.connection_lost, None)
            self.wrote.set()

    abort = close

    def write(self, data: bytes) -> None:
        self.buffer += data
        self.wrote.set()

    # --- the client's side ---

    def send(self, line: bytes) -> None:
        self.protocol.data_received(line + b"\r\n")

    async def reply(self, *, multi: bool = False) -> bytes:
        """The next reply; `multi`: a multi-line one after +OK (through CRLF "." CRLF)."""
        while True:
            end = self._end(multi)
            if end:
                data = bytes(self.buffer[:end])
                del self.buffer[:end]
                return data
            if self.closing:
                raise ConnectionError(f"closed; unfinished reply {bytes(self.buffer)!r}")
            self.wrote.clear()
            await asyncio.wait_for(self.wrote.wait(), 10)

    def _end(self, multi: bool) -> int:
        line = self.buffer.find(b"\r\n")
        if line < 0:
            return 0
        if not multi or not self.buffer.startswith(b"+OK"):
            return line + 2
        if self.buffer[line + 2 :].startswith(b".\r\n"):
            return line + 5
        found = self.buffer.find(b"\r\n.\r\n", line)
        return found + 5 if found >= 0 else 0


@contextlib.asynccontextmanager
async def memory_session(ctx: ServerContext) -> AsyncIterator[MemoryTransport]:
    """A running session on `ctx` with its greeting read; ended (and awaited) on exit."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []

    def start(io: SessionIO) -> None:
        tasks.append(loop.create_task(Session(ctx, io).run()))

    io = SessionIO(start)
    transport = MemoryTransport(io)
    io.connection_made(transport)  # type: ignore[arg-type]
    greeting = await transport.reply()
    assert greeting.startswith(b"+OK"), greeting
    try:
        yield transport
    finally:
        transport.close()
        await asyncio.gather(*tasks)
