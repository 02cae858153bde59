"""Listening sockets, the session tasks and an orderly shutdown.

SIGTERM/SIGINT: stop accepting, give running sessions `limits.shutdown_grace` seconds to
finish, then cancel the rest; a cancelled session says `-ERR [SYS/TEMP]`, releases its
maildrop lock and commits nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from popbox import logs, sdnotify
from popbox.config import parse_address
from popbox.server import control
from popbox.server.admin import RELOADED, WORKER_DIR_ENV, WorkerAdmin
from popbox.server.context import ServerContext
from popbox.server.io import SessionIO
from popbox.server.session import Session
from popbox.server.tls_accept import TlsServer, bind

log = logging.getLogger("popbox")

Address = tuple[str, int]


def _format(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


Key = tuple[str, int, bool]  # host, port, implicit TLS
Server = asyncio.Server | TlsServer


class Listener:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._servers: list[Server] = []  # every one ever opened, for shutdown
        self._open_now: dict[Key, tuple[Server, list[Address]]] = {}

    def _open(self, io: SessionIO) -> None:
        task = asyncio.get_running_loop().create_task(Session(self.ctx, io).run())
        self.ctx.sessions.add(task)
        task.add_done_callback(self.ctx.sessions.discard)

    def _protocol(self) -> SessionIO:
        config = self.ctx.config
        return SessionIO(self._open, config.server.proxy_networks, config.limits.login_timeout)

    def _tls_context(self) -> ssl.SSLContext:
        assert self.ctx.tls is not None
        return self.ctx.tls.context

    async def _bind(self, host: str, port: int, secure: bool) -> list[Address]:
        """Listen on host:port, POP3S if `secure` (server.tls_accept: so that a failed
        handshake is logged and counted)."""
        if (host, port, secure) in self._open_now:
            return self._open_now[host, port, secure][1]
        reuse_port = self.ctx.config.server.workers > 1
        server: Server
        if secure:
            server = TlsServer(bind(host, port, reuse_port), self._protocol, self._tls_context,
                               self.ctx.config.tls.handshake_timeout, self.ctx.observe.tls_failed)
        else:
            server = await asyncio.get_running_loop().create_server(
                self._protocol, host or None, port, reuse_address=True, reuse_port=reuse_port)
        self._servers.append(server)
        bound = []
        for sock in server.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                name = sock.getsockname()
                bound.append((name[0], name[1]))
                log.info("listening on %s:%d%s", name[0], name[1], " (TLS)" if secure else "")
        self._open_now[host, port, secure] = (server, bound)
        return bound

    async def rebind(self, listen: list[str], implicit: list[str]) -> tuple[list[str], list[str]]:
        """Listen on exactly these addresses: open the new ones (all or none: an address
        that cannot be bound raises OSError and nothing changes), stop listening on the
        others; sessions go on. An address with port 0 that the running server listens on
        already stays as it is. Returns the addresses as now bound (host:port)."""
        wanted: list[Key] = []
        for items, secure in ((listen, False), (implicit, True)):
            for item in items:
                host, port = parse_address(item)
                if port == 0:
                    port = next((p for (h, p, s) in self._open_now if h == host and s == secure),
                                0)
                wanted.append((host, port, secure))
        added: list[Key] = []
        try:
            for host, port, secure in wanted:
                if (host, port, secure) not in self._open_now:
                    await self._bind(host, port, secure)
                    added.append((host, port, secure))
        except OSError:
            for key in added:
                self._open_now.pop(key)[0].close()
            raise
        for key in list(self._open_now):
            if key not in wanted:
                server, bound = self._open_now.pop(key)
                server.close()
                for host, port in bound:
                    log.info("stopped listening on %s:%d%s", host, port,
                             " (TLS)" if key[2] else "")
        plain = [_format(h, p) for (h, p, s) in wanted if not s]
        secure_items = [_format(h, p) for (h, p, s) in wanted if s]
        return plain, secure_items

    async def start(self) -> tuple[list[Address], list[Address]]:
        """Bind every configured address: (plain POP3 addresses, POP3S addresses)."""
        plain: list[Address] = []
        implicit: list[Address] = []
        for host, port in self.ctx.config.addresses:
            plain += await self._bind(host, port, False)
        if self.ctx.tls is not None:
            for host, port in self.ctx.config.tls_addresses:
                implicit += await self._bind(host, port, True)
        return plain, implicit

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


async def serve(
    ctx: ServerContext, ready: Callable[[list[Address], list[Address]], None] | None = None
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully. SIGHUP reloads the TLS
    certificates (new handshakes use them; running sessions go on); SIGUSR1 reopens the
    log file."""
    listener = Listener(ctx)
    plain, implicit = await listener.start()
    ctx.rebind = listener.rebind
    admin = admin_socket(ctx)
    if admin is not None:
        await admin.start()
        folder = os.environ.get(WORKER_DIR_ENV)
        if folder and (Path(folder) / RELOADED).exists():
            await control.reload(ctx)  # a worker started after a reload catches up
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, ctx.reload_tls)
    loop.add_signal_handler(signal.SIGUSR1, logs.reopen)
    if ready is not None:
        ready(plain, implicit)
    try:
        await stop.wait()
        sdnotify.notify("STOPPING=1")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
        if admin is not None:
            await admin.close()
        await listener.shutdown()


def admin_socket(ctx: ServerContext) -> WorkerAdmin | None:
    """This process's admin socket: the configured one, or with several workers one in
    the supervisor's folder (see server.admin)."""
    section = ctx.config.admin
    if section.socket is None:
        return None
    folder = os.environ.get(WORKER_DIR_ENV)
    if folder:
        path, group = Path(folder) / f"{os.getpid()}.sock", None
    else:
        path, group = section.socket, section.group
    return WorkerAdmin(path, group, lambda request: control.handle(ctx, request))
