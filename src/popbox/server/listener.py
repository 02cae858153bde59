"""Listening sockets, the session tasks and an orderly shutdown.

SIGTERM/SIGINT: stop accepting, give running sessions `limits.shutdown_grace` seconds to
finish, then cancel the rest; a cancelled session says `-ERR [SYS/TEMP]`, releases its
maildrop lock and commits nothing.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable

from popbox.server.context import ServerContext
from popbox.server.session import Session

log = logging.getLogger("popbox")

Address = tuple[str, int]


class Listener:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._servers: list[asyncio.Server] = []

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.ctx.sessions.add(task)
        try:
            await Session(self.ctx, reader, writer).run()
        finally:
            self.ctx.sessions.discard(task)

    async def start(self) -> list[Address]:
        """Bind every configured address; return the bound (host, port) pairs."""
        bound: list[Address] = []
        for host, port in self.ctx.config.addresses:
            server = await asyncio.start_server(
                self._client, host or None, port,
                reuse_address=True, reuse_port=self.ctx.config.server.workers > 1,
            )
            self._servers.append(server)
            for sock in server.sockets:
                name = sock.getsockname()
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    bound.append((name[0], name[1]))
        for host, port in bound:
            log.info("listening on %s:%d", host, port)
        return bound

    async def shutdown(self) -> None:
        for server in self._servers:
            server.close()
        sessions = set(self.ctx.sessions)
        if sessions:
            log.info("shutdown: waiting up to %.0fs for %d sessions",
                     self.ctx.config.limits.shutdown_grace, len(sessions))
            _, pending = await asyncio.wait(sessions, timeout=self.ctx.config.limits.shutdown_grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for server in self._servers:
            await server.wait_closed()
        log.info("shutdown complete")


async def serve(ctx: ServerContext, ready: Callable[[list[Address]], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    listener = Listener(ctx)
    bound = await listener.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready(bound)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await listener.shutdown()
