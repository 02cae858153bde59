"""A blocking POP3 client for scripts that would otherwise use `poplib`: the methods of
`popbox.client.PopClient` (RFC 1939, RFC 2449, RFC 2595, RFC 5034) without `await`.

    from popbox.client import sync

    with sync.connect("pop.example.org", tls="implicit") as pop:
        pop.login("alice", password)
        for msg, uidl in pop.uidl().items():
            data = pop.retr(msg)

Each client owns a private event loop (`asyncio.Runner`) in the calling thread; every
method runs the asyncio method to completion on it. The errors are those of
`popbox.client` (`PopAuthError`, `PopTimeoutError`, ...). Leaving the `with` block
normally sends QUIT (RFC 1939 §6: DELEs are committed); leaving it with an exception
closes the connection without QUIT, so nothing is deleted.

Called from code that runs in an event loop (a coroutine, a callback), a blocking client
would stall that loop; `connect` refuses with `SyncInLoopError` and the asyncio client is
the one to use there. A client is for one thread.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Coroutine, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar, overload

from popbox import client as aio
from popbox.client import Capabilities, Sink, Tls
from popbox.client import errors as er
from popbox.proto.types import MsgNo, Uidl

T = TypeVar("T")


class SyncInLoopError(RuntimeError):
    """The blocking client was used where an event loop is running."""


def _refuse_in_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise SyncInLoopError("popbox.client.sync blocks, and an event loop is running in this "
                          "thread: use popbox.client (await client.connect(...)) here")


class PopClient:
    """One POP3 session, blocking. Made by `connect`."""

    def __init__(self, runner: asyncio.Runner, pop: aio.PopClient) -> None:
        self._runner = runner
        self._pop = pop
        self._ended = False

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._ended:
            coro.close()
            raise er.PopConnectionError("the connection is closed")
        try:
            _refuse_in_loop()
        except SyncInLoopError:
            coro.close()
            raise
        return self._runner.run(coro)

    # --- what the session knows ---

    @property
    def greeting(self) -> str:
        return self._pop.greeting

    @property
    def timestamp(self) -> str | None:
        return self._pop.timestamp

    @property
    def secure(self) -> bool:
        return self._pop.secure

    @property
    def capabilities(self) -> Capabilities | None:
        return self._pop.capabilities

    @property
    def closed(self) -> bool:
        return self._pop.closed

    # --- the end ---

    def __enter__(self) -> PopClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is None and not self._pop.closed:
                self.quit()
        finally:
            self.close()

    def close(self) -> None:
        """Drop the connection without QUIT (nothing is deleted) and end the loop."""
        if self._ended:
            return
        self._ended = True
        self._pop.close()
        self._runner.run(asyncio.sleep(0))  # let the transport finish closing
        self._runner.close()

    def quit(self) -> str:
        """QUIT (RFC 1939 §6): the server removes the DELE'd messages."""
        try:
            return self._run(self._pop.quit())
        finally:
            self.close()

    # --- TLS and login ---

    def stls(self, context: ssl.SSLContext | None = None) -> None:
        self._run(self._pop.stls(context))

    def capa(self) -> Capabilities:
        return self._run(self._pop.capa())

    def login(self, user: str, password: str, *, allow_plaintext: bool = False) -> str:
        return self._run(self._pop.login(user, password, allow_plaintext=allow_plaintext))

    def user_pass(self, user: str, password: str, *, allow_plaintext: bool = False) -> str:
        return self._run(self._pop.user_pass(user, password, allow_plaintext=allow_plaintext))

    def apop(self, user: str, secret: str) -> str:
        return self._run(self._pop.apop(user, secret))

    def auth(self, mechanism: str, user: str, password: str, *, authzid: str = "",
             allow_plaintext: bool = False) -> str:
        return self._run(self._pop.auth(mechanism, user, password, authzid=authzid,
                                        allow_plaintext=allow_plaintext))

    # --- transaction ---

    def stat(self) -> tuple[int, int]:
        return self._run(self._pop.stat())

    @overload
    def list(self) -> dict[MsgNo, int]: ...

    @overload
    def list(self, msg: int) -> int: ...

    def list(self, msg: int | None = None) -> dict[MsgNo, int] | int:
        if msg is None:
            return self._run(self._pop.list())
        return self._run(self._pop.list(msg))

    @overload
    def uidl(self) -> dict[MsgNo, Uidl]: ...

    @overload
    def uidl(self, msg: int) -> Uidl: ...

    def uidl(self, msg: int | None = None) -> dict[MsgNo, Uidl] | Uidl:
        if msg is None:
            return self._run(self._pop.uidl())
        return self._run(self._pop.uidl(msg))

    def list_and_uidl(self) -> tuple[dict[MsgNo, int], dict[MsgNo, Uidl]]:
        return self._run(self._pop.list_and_uidl())

    def retr(self, msg: int) -> bytes:
        """The message, un-stuffed, with CRLF line ends (`popbox.client.to_lf` for LF)."""
        return self._run(self._pop.retr(msg))

    def retr_iter(self, msg: int) -> Iterator[bytes]:
        """RETR piece by piece; leaving the loop early closes the connection."""
        pieces = self._pop.retr_iter(msg)
        try:
            while True:
                try:
                    yield self._run(anext(pieces))
                except StopAsyncIteration:
                    return
        finally:
            if not self._ended:
                self._runner.run(pieces.aclose())

    def retr_to(self, msg: int, sink: Sink) -> int:
        """RETR into `sink` (a file, a BytesIO: its `write` is called with each piece)."""
        return self._run(self._pop.retr_to(msg, sink))

    def top(self, msg: int, lines: int) -> bytes:
        return self._run(self._pop.top(msg, lines))

    def dele(self, msg: int) -> str:
        return self._run(self._pop.dele(msg))

    def dele_many(self, msgs: Iterable[int]) -> None:
        self._run(self._pop.dele_many(msgs))

    def rset(self) -> str:
        return self._run(self._pop.rset())

    def noop(self) -> str:
        return self._run(self._pop.noop())


def connect(host: str, port: int | None = None, *, tls: Tls = "implicit",
            ssl_context: ssl.SSLContext | None = None, timeout: float = 60.0,
            server_hostname: str | None = None) -> PopClient:
    """As `popbox.client.connect`, blocking: connect, read the greeting, STLS if asked."""
    _refuse_in_loop()
    async def session() -> aio.PopClient:
        return await aio.connect(host, port, tls=tls, ssl_context=ssl_context,
                                 timeout=timeout, server_hostname=server_hostname)

    runner = asyncio.Runner()
    try:
        pop = runner.run(session())
    except BaseException:
        runner.close()
        raise
    return PopClient(runner, pop)
