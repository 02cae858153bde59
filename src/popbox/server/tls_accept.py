"""POP3S listeners (RFC 8314 §3.3): accept, run the TLS handshake, then start the session.

`loop.create_server(ssl=...)` runs the handshake inside asyncio, and one that fails
(garbage instead of a ClientHello, a protocol version or cipher the server refuses, a
client that rejects the certificate, a timeout, a client gone mid-way) ends there without
a word to the application: it could be neither logged nor counted. So popbox accepts these
connections itself (`loop.sock_accept`) and hands each socket to
`loop.connect_accepted_socket(ssl=...)`, which raises when the handshake fails. (Upgrading
a plain connection with `loop.start_tls` cannot be used: uvloop starts reading a new
connection after `connection_made` whatever the protocol asked, so the ClientHello would
reach the protocol instead of the TLS layer.)

A successful handshake gives the protocol the same TLS transport `create_server` would
have. The sockets are made the way asyncio makes them: one per address `host` resolves
to (an empty host: every interface, IPv4 and IPv6), SO_REUSEADDR, SO_REUSEPORT with
several workers, IPv6 sockets IPv6-only.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable

log = logging.getLogger("popbox")

BACKLOG = 100  # asyncio's default
ACCEPT_RETRY = 1.0  # seconds to wait after running out of file descriptors (as asyncio)


def failure_reason(exc: BaseException) -> str:
    """A short reason for a failed handshake, for the log line (no spaces)."""
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.__class__.__name__).lower().replace("_", "-")
    if isinstance(exc, (TimeoutError, ConnectionAbortedError)):
        return "timeout"
    return "disconnect"


def bind(host: str, port: int, reuse_port: bool) -> list[socket.socket]:
    """Listening sockets for host:port (all or none: OSError closes what was opened)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(exc.errno, f"error while attempting to bind on address "
                                         f"{address!r}: {exc.strerror}") from None
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class TlsServer:
    """What `Listener` needs of a server (`sockets`, `close`, `wait_closed`), for POP3S."""

    def __init__(self, sockets: list[socket.socket], factory: Callable[[], asyncio.Protocol],
                 context: Callable[[], ssl.SSLContext], timeout: float,
                 failed: Callable[[str, str], None]) -> None:
        self.sockets = sockets
        self._factory = factory
        self._context = context
        self._timeout = timeout
        self._failed = failed
        loop = asyncio.get_running_loop()
        self._accepting = [loop.create_task(self._accept(sock)) for sock in sockets]
        self._handshakes: set[asyncio.Task[None]] = set()

    async def _accept(self, sock: socket.socket) -> None:
        try:
            await self._accept_loop(sock)
        finally:
            sock.close()  # after the loop has stopped watching it

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    continue  # the client went away before the accept (ECONNABORTED)
                log.warning("accept failed: %s; trying again in %.0fs", exc.strerror,
                            ACCEPT_RETRY)
                await asyncio.sleep(ACCEPT_RETRY)
                continue
            peer = str(address[0]) if isinstance(address, tuple) else "local"
            task = loop.create_task(self._handshake(conn, peer))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: socket.socket, peer: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                self._factory, conn, ssl=self._context(), ssl_handshake_timeout=self._timeout)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            conn.close()
            self._failed(peer, failure_reason(exc))
        except asyncio.CancelledError:
            conn.close()
            raise

    def close(self) -> None:
        """Stop accepting and abandon the handshakes still running; sessions go on."""
        for task in self._accepting:
            task.cancel()
        for task in list(self._handshakes):
            task.cancel()

    async def wait_closed(self) -> None:
        pending = self._accepting + list(self._handshakes)
        if pending:
            await asyncio.wait(pending)
