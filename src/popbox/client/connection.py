"""The asyncio POP3 client: a session's commands on the sans-IO core in
`popbox.proto.client`, over a `client.channel.Channel`.

    async with connect("pop.example.org", tls="implicit") as pop:
        await pop.login("alice", password)
        for msg, uidl in (await pop.uidl()).items():
            data = await pop.retr(msg)

Replies are read by the core and their contents by its pure functions (STAT, LIST, UIDL,
CAPA); the login strategy is `client.login.choose`. Every read has a timeout; a timeout,
a protocol error or a broken connection closes the connection (the reply stream cannot
be trusted after that) and raises. Everything raised is from `client.errors`. Leaving
the `async with` block normally sends QUIT, which commits DELEs (RFC 1939 §6); leaving
it with an exception closes the connection without QUIT, so nothing is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import ssl
from collections.abc import AsyncGenerator, Generator, Iterable
from types import TracebackType
from typing import Literal, Protocol, TypeVar, overload

from popbox.client import errors as er
from popbox.client import login as strategy
from popbox.client.channel import Channel
from popbox.proto import apop as apop_digest
from popbox.proto import client as core
from popbox.proto import events as ev
from popbox.proto.sasl_client import mechanism
from popbox.proto.types import MsgNo, Uidl

Tls = Literal["implicit", "starttls", "none"]
Capabilities = dict[str, list[str]]
T = TypeVar("T")


class Sink(Protocol):
    """Where `retr_to` writes: a file, a BytesIO, or anything whose `write` may be async."""

    def write(self, data: bytes, /) -> object: ...


def _parsed(value: T | None, what: str, text: object) -> T:
    if value is None:
        raise er.PopProtocolError(f"{what}: malformed reply {str(text)[:60]!r}")
    return value


class PopClient:
    """One POP3 session. Methods may not run concurrently; a lock serialises them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 server_hostname: str, timeout: float, secure: bool) -> None:
        self._ch = Channel(reader, writer, timeout)
        self._server_hostname = server_hostname
        self._secure = secure
        self._lock = asyncio.Lock()
        self._capabilities: Capabilities | None = None
        self.greeting = ""

    @property
    def timeout(self) -> float:
        return self._ch.timeout

    @property
    def secure(self) -> bool:
        """True when the connection is encrypted (implicit TLS, or after STLS)."""
        return self._secure

    @property
    def timestamp(self) -> str | None:
        """The APOP timestamp in the greeting, if any (RFC 1939 §7)."""
        return core.apop_timestamp(self.greeting)

    @property
    def capabilities(self) -> Capabilities | None:
        """What the last CAPA said (None: not asked since the last change of state)."""
        return self._capabilities

    @property
    def closed(self) -> bool:
        return self._ch.closed

    def peer_is_loopback(self) -> bool:
        return self._ch.peer_is_loopback()

    async def __aenter__(self) -> PopClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None and not self.closed:
            await self.quit()
        else:
            self.close()

    def close(self) -> None:
        """Drop the connection without QUIT: nothing is deleted (RFC 1939 §6)."""
        self._ch.close()

    async def _simple(self, command: ev.Command) -> str:
        async with self._lock:
            await self._ch.send(command)
            return (await self._ch.status()).text

    async def _listing(self, command: ev.Command) -> list[str]:
        async with self._lock:
            await self._ch.send(command)
            await self._ch.status()
            return await self._ch.lines()

    # --- greeting, TLS, capabilities ---

    async def read_greeting(self) -> None:
        try:
            self.greeting = (await self._ch.status()).text
        except er.PopError:
            self.close()
            raise

    async def stls(self, context: ssl.SSLContext | None = None) -> None:
        """STLS (RFC 2595 §4), then the TLS handshake; cached capabilities are forgotten."""
        context = context or ssl.create_default_context()
        try:
            await self._simple(ev.Stls())
        except er.PopError as exc:
            raise er.PopTlsError(f"the server refused STLS: {exc.text}") from None
        try:
            async with asyncio.timeout(self.timeout):
                await self._ch.writer.start_tls(context, server_hostname=self._server_hostname)
        except (TimeoutError, ssl.SSLError, OSError) as exc:
            raise self._ch.broken(er.PopTlsError(f"TLS handshake failed: {_reason(exc)}")) from None
        self._ch.tls_started()
        self._secure = True
        self._capabilities = None

    async def capa(self) -> Capabilities:
        """CAPA (RFC 2449 §5): capability name (upper case) -> its arguments."""
        self._capabilities = core.capabilities(await self._listing(ev.Capa()))
        return self._capabilities

    async def known_capabilities(self) -> Capabilities:
        """The capabilities CAPA gave, asked once per state; {} from a server without CAPA."""
        if self._capabilities is None:
            try:
                await self.capa()
            except er.PopError:  # an RFC 1939 server without CAPA
                self._capabilities = {}
        assert self._capabilities is not None
        return self._capabilities

    # --- login ---

    def _plaintext_ok(self, allow: bool) -> bool:
        return allow or self._secure or self.peer_is_loopback()

    async def user_pass(self, user: str, password: str, *, allow_plaintext: bool = False) -> str:
        """USER and PASS (RFC 1939 §7)."""
        if not self._plaintext_ok(allow_plaintext):
            raise strategy.plaintext_refused("USER/PASS", self._server_hostname)
        async with self._lock:
            await self._ch.send(ev.User(user))
            await self._ch.status()
            await self._ch.send(ev.Pass(password.encode("utf-8")))
            text = (await self._ch.status()).text
        self._capabilities = None
        return text

    async def apop(self, user: str, secret: str) -> str:
        """APOP (RFC 1939 §7) with the greeting's timestamp."""
        stamp = self.timestamp
        if stamp is None:
            raise er.PopUnsupportedError("the greeting has no APOP timestamp")
        text = await self._simple(ev.Apop(user, apop_digest.digest(stamp, secret.encode())))
        self._capabilities = None
        return text

    async def auth(self, mechanism_name: str, user: str, password: str, *,
                   authzid: str = "", allow_plaintext: bool = False) -> str:
        """AUTH (RFC 5034) with PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-1 or SCRAM-SHA-256."""
        try:
            mech = mechanism(mechanism_name, user, password, authzid)
        except ValueError as exc:
            raise er.PopUnsupportedError(str(exc)) from None
        if mech.cleartext and not self._plaintext_ok(allow_plaintext):
            raise strategy.plaintext_refused(f"AUTH {mech.name}", self._server_hostname)
        async with self._lock:
            text = await strategy.sasl_exchange(self._ch, mech)
        self._capabilities = None
        return text

    async def login(self, user: str, password: str, *, allow_plaintext: bool = False) -> str:
        """Log in with the strongest method CAPA offers (`client.login.choose`). Returns
        the method used: the SASL mechanism's name, or "USER"."""
        method = strategy.choose(await self.known_capabilities(),
                                 plaintext_ok=self._plaintext_ok(allow_plaintext),
                                 server=self._server_hostname)
        if method == strategy.USER_PASS:
            await self.user_pass(user, password, allow_plaintext=True)
        else:
            await self.auth(method, user, password, allow_plaintext=True)
        return method

    # --- transaction ---

    async def stat(self) -> tuple[int, int]:
        """STAT (RFC 1939 §5): (number of messages, total octets)."""
        text = await self._simple(ev.Stat())
        return _parsed(core.numbers(text), "STAT", text)

    @overload
    async def list(self) -> dict[MsgNo, int]: ...

    @overload
    async def list(self, msg: int) -> int: ...

    async def list(self, msg: int | None = None) -> dict[MsgNo, int] | int:
        """LIST (RFC 1939 §5): every message's size, or one message's."""
        if msg is not None:
            text = await self._simple(ev.List(MsgNo(msg)))
            return _parsed(core.numbers(text), "LIST", text)[1]
        lines = await self._listing(ev.List(None))
        return _parsed(core.listing(lines), "LIST", lines)

    @overload
    async def uidl(self) -> dict[MsgNo, Uidl]: ...

    @overload
    async def uidl(self, msg: int) -> Uidl: ...

    async def uidl(self, msg: int | None = None) -> dict[MsgNo, Uidl] | Uidl:
        """UIDL (RFC 1939 §7): every message's unique-id, or one message's."""
        if msg is not None:
            text = await self._simple(ev.Uidl(MsgNo(msg)))
            return _parsed(core.uidl_line(text), "UIDL", text)[1]
        lines = await self._listing(ev.Uidl(None))
        return _parsed(core.uidl_listing(lines), "UIDL", lines)

    async def list_and_uidl(self) -> tuple[dict[MsgNo, int], dict[MsgNo, Uidl]]:
        """LIST and UIDL, in one round trip when the server announced PIPELINING
        (RFC 2449 §6.6). A -ERR to either is raised after both replies were read."""
        if "PIPELINING" not in (self._capabilities or {}):
            return await self.list(), await self.uidl()
        async with self._lock:
            await self._ch.send(ev.List(None), ev.Uidl(None))
            results: list[list[str] | er.PopError] = []
            for _ in range(2):
                try:
                    await self._ch.status()
                    results.append(await self._ch.lines())
                except er.PopError as exc:
                    results.append(exc)
        sizes, uidls = results
        if isinstance(sizes, er.PopError):
            raise sizes
        if isinstance(uidls, er.PopError):
            raise uidls
        return (_parsed(core.listing(sizes), "LIST", sizes),
                _parsed(core.uidl_listing(uidls), "UIDL", uidls))

    async def retr_iter(self, msg: int) -> AsyncGenerator[bytes, None]:
        """RETR as it arrives: pieces of the message, un-stuffed, CRLF line ends. Leaving
        the loop before the end closes the connection (the rest would still be coming);
        wrap the iterator in `contextlib.aclosing` to have that happen at once."""
        async with self._lock:
            await self._ch.send(ev.Retr(MsgNo(msg)))
            async with contextlib.aclosing(self._ch.body()) as body:
                async for chunk in body:
                    yield chunk

    async def retr_to(self, msg: int, sink: Sink) -> int:
        """RETR into `sink` (its `write` may be a coroutine); returns the octets written."""
        size = 0
        async for chunk in self.retr_iter(msg):
            result = sink.write(chunk)
            if inspect.isawaitable(result):
                await result
            size += len(chunk)
        return size

    async def retr(self, msg: int) -> bytes:
        """RETR (RFC 1939 §5): the message as sent, un-stuffed, with CRLF line ends."""
        return b"".join([chunk async for chunk in self.retr_iter(msg)])

    async def top(self, msg: int, lines: int) -> bytes:
        """TOP (RFC 1939 §7): the headers, the blank line and `lines` lines of the body."""
        async with self._lock:
            await self._ch.send(ev.Top(MsgNo(msg), lines))
            async with contextlib.aclosing(self._ch.body()) as body:
                return b"".join([chunk async for chunk in body])

    async def dele(self, msg: int) -> str:
        """DELE (RFC 1939 §5): marked now, removed only after QUIT."""
        return await self._simple(ev.Dele(MsgNo(msg)))

    async def dele_many(self, msgs: Iterable[int]) -> None:
        """DELE each message: pipelined when the server announced PIPELINING. The first
        -ERR is raised after every reply was read."""
        numbers = [MsgNo(m) for m in msgs]
        batch = 64 if "PIPELINING" in (self._capabilities or {}) else 1
        failure: er.PopError | None = None
        async with self._lock:
            for start in range(0, len(numbers), batch):
                group = numbers[start : start + batch]
                await self._ch.send(*(ev.Dele(n) for n in group))
                for _ in group:
                    try:
                        await self._ch.status()
                    except er.PopError as exc:
                        failure = failure or exc
        if failure is not None:
            raise failure

    async def rset(self) -> str:
        return await self._simple(ev.Rset())

    async def noop(self) -> str:
        return await self._simple(ev.Noop())

    async def quit(self) -> str:
        """QUIT (RFC 1939 §6): the server removes the DELE'd messages, then we close."""
        try:
            return await self._simple(ev.Quit())
        finally:
            await self._ch.finish()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message or exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


async def open_streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                       server_hostname: str, timeout: float = 60.0,  # noqa: ASYNC109
                       secure: bool = False) -> PopClient:
    """A session on streams already connected to a POP3 server (through a proxy, say):
    reads the greeting. `secure`: the streams are encrypted."""
    client = PopClient(reader, writer, server_hostname=server_hostname, timeout=timeout,
                       secure=secure)
    try:
        await client.read_greeting()
    except BaseException:
        client.close()
        raise
    return client


class Connecting:
    """What `connect()` returns: `async with connect(...) as pop:` (QUIT at the end), or
    `pop = await connect(...)` for a client to manage by hand."""

    __slots__ = ("_client", "_opening")

    def __init__(self, opening: Generator[object, None, PopClient]) -> None:
        self._opening = opening
        self._client: PopClient | None = None

    def __await__(self) -> Generator[object, None, PopClient]:
        return self._opening

    async def __aenter__(self) -> PopClient:
        self._client = await self
        return self._client

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._client is not None
        await self._client.__aexit__(exc_type, exc, tb)


def connect(host: str, port: int | None = None, *, tls: Tls = "implicit",
            ssl_context: ssl.SSLContext | None = None,
            timeout: float = 60.0, server_hostname: str | None = None) -> Connecting:
    """Connect, read the greeting and, with `tls="starttls"`, do STLS. `port` defaults to
    995 for implicit TLS (RFC 8314 §3.3), else 110. `ssl_context` defaults to the
    system's trusted CAs with host name checking. `timeout` bounds each step (connecting,
    the handshake, and every later read and write), not the whole session."""
    return Connecting(_connect(host, port, tls, ssl_context, timeout, server_hostname)
                      .__await__())


async def _connect(host: str, port: int | None, tls: Tls, ssl_context: ssl.SSLContext | None,
                   timeout: float, server_hostname: str | None) -> PopClient:  # noqa: ASYNC109
    if tls not in ("implicit", "starttls", "none"):
        raise ValueError(f"tls must be implicit, starttls or none, not {tls!r}")
    port = port or (995 if tls == "implicit" else 110)
    hostname = server_hostname or host
    context = None if tls == "none" else ssl_context or ssl.create_default_context()
    where = f"{host}:{port}"
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context if tls == "implicit" else None,
                server_hostname=hostname if tls == "implicit" else None)
    except ssl.SSLError as exc:
        raise er.PopTlsError(f"TLS with {where} failed: {_reason(exc)}") from None
    except TimeoutError:
        raise er.PopTimeoutError(f"connecting to {where} timed out") from None
    except OSError as exc:
        raise er.PopConnectionError(f"cannot connect to {where}: {_reason(exc)}") from None
    client = await open_streams(reader, writer, server_hostname=hostname, timeout=timeout,
                                secure=tls == "implicit")
    try:
        if tls == "starttls":
            caps = await client.known_capabilities()
            if caps and "STLS" not in caps:
                raise er.PopTlsError(f"{where} does not offer STLS")
            assert context is not None
            await client.stls(context)
    except BaseException:
        client.close()
        raise
    return client
