"""The asyncio POP3 client: a thin shell around `popbox.proto.client.ClientConnection`.

    async with await connect("pop.example.org", tls="implicit") as pop:
        await pop.login("alice", password)
        for msg, uidl in (await pop.uidl()).items():
            data = await pop.retr(msg)

Every read has a timeout; a timeout, a protocol error or a broken connection closes the
connection (the reply stream cannot be trusted after that) and raises. Leaving the
`async with` block normally sends QUIT, which commits DELEs (RFC 1939 §6); leaving it
with an exception closes the connection without QUIT, so nothing is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import os
import ssl
from collections.abc import AsyncGenerator, Iterable
from types import TracebackType
from typing import Literal, Protocol, overload

from popbox.client import errors as er
from popbox.proto import apop as apop_digest
from popbox.proto import events as ev
from popbox.proto.client import ClientConnection, apop_timestamp
from popbox.proto.commands import verb
from popbox.proto.sasl_client import MECHANISMS, ClientMechanism, SaslClientError, mechanism
from popbox.proto.types import MsgNo, Uidl

Tls = Literal["implicit", "starttls", "none"]
READ_SIZE = 65536
Capabilities = dict[str, list[str]]


class Sink(Protocol):
    """Where `retr_to` writes: a file, a BytesIO, or anything whose `write` may be async."""

    def write(self, data: bytes, /) -> object: ...


def _verb(command: ev.Command | None) -> str:
    return "greeting" if command is None else verb(command)


def _numbers(text: str, count: int, what: str) -> list[int]:
    parts = text.split()
    if len(parts) < count or not all(p.isdigit() for p in parts[:count]):
        raise er.PopProtocolError(f"{what}: malformed reply {text[:60]!r}")
    return [int(p) for p in parts[:count]]


def _uidl_line(text: str) -> tuple[MsgNo, Uidl]:
    parts = text.split()
    if len(parts) < 2 or not parts[0].isdigit():
        raise er.PopProtocolError(f"UIDL: malformed line {text[:60]!r}")
    return MsgNo(int(parts[0])), Uidl(parts[1])


class PopClient:
    """One POP3 session. Methods may not run concurrently; a lock serialises them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 server_hostname: str, timeout: float, secure: bool) -> None:
        self._reader = reader
        self._writer = writer
        self._server_hostname = server_hostname
        self.timeout = timeout
        self._secure = secure
        self._core = ClientConnection()
        self._lock = asyncio.Lock()
        self._dead: str | None = None
        self._capabilities: Capabilities | None = None
        self.greeting = ""

    # --- properties ---

    @property
    def secure(self) -> bool:
        """True when the connection is encrypted (implicit TLS, or after STLS)."""
        return self._secure

    @property
    def timestamp(self) -> str | None:
        """The APOP timestamp in the greeting, if any (RFC 1939 §7)."""
        return apop_timestamp(self.greeting)

    @property
    def capabilities(self) -> Capabilities | None:
        """What the last CAPA said (None: not asked since the last change of state)."""
        return self._capabilities

    @property
    def closed(self) -> bool:
        return self._dead is not None

    def peer_is_loopback(self) -> bool:
        peer = self._writer.get_extra_info("peername")
        try:
            address = ipaddress.ip_address(peer[0]) if peer else None
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return address is not None and address.is_loopback

    # --- context manager ---

    async def __aenter__(self) -> PopClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None and not self.closed:
            await self.quit()
        else:
            self.close()

    # --- transport ---

    def close(self) -> None:
        """Drop the connection without QUIT: nothing is deleted (RFC 1939 §6)."""
        if self._dead is None:
            self._dead = "closed"
        self._writer.transport.abort()

    def _broken(self, exc: er.PopClientError) -> er.PopClientError:
        self._dead = str(exc)
        self._writer.transport.abort()
        return exc

    def _check_open(self) -> None:
        if self._dead is not None:
            raise er.PopConnectionError(f"the connection is closed ({self._dead})")

    async def _read(self) -> bytes:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._reader.read(READ_SIZE)
        except TimeoutError:
            raise self._broken(er.PopTimeoutError(
                f"no answer from the server within {self.timeout:g}s")) from None
        except OSError as exc:
            raise self._broken(er.PopConnectionError(
                f"connection lost: {exc.strerror or exc}")) from None

    async def _send(self, *commands: ev.Command) -> None:
        self._check_open()
        self._writer.write(b"".join(self._core.send(c) for c in commands))
        try:
            async with asyncio.timeout(self.timeout):
                await self._writer.drain()
        except TimeoutError:
            raise self._broken(er.PopTimeoutError("the server does not read")) from None
        except OSError as exc:
            raise self._broken(er.PopConnectionError(
                f"connection lost: {exc.strerror or exc}")) from None

    async def _event(self) -> ev.ServerEvent:
        while True:
            event = self._core.next_event()
            if isinstance(event, ev.Sentinel):
                self._core.receive_data(await self._read())
                continue
            match event:
                case ev.ProtocolError(reason):
                    raise self._broken(er.PopProtocolError(reason))
                case ev.Closed():
                    raise self._broken(er.PopConnectionError(
                        "the server closed the connection"))
                case _:
                    return event

    def _unexpected(self, event: ev.ServerEvent) -> er.PopClientError:
        return self._broken(er.PopProtocolError(f"unexpected {type(event).__name__}"))

    async def _status(self) -> ev.Ok:
        event = await self._event()
        match event:
            case ev.Ok():
                return event
            case ev.Err(command=command):
                raise er.error_for(event, _verb(command))
            case _:
                raise self._unexpected(event)

    async def _lines(self) -> list[str]:
        """The lines of a multi-line listing, after its +OK."""
        lines: list[str] = []
        while True:
            event = await self._event()
            match event:
                case ev.Lines(more):
                    lines.extend(more)
                case ev.End():
                    return lines
                case _:
                    raise self._unexpected(event)

    async def _simple(self, command: ev.Command) -> str:
        async with self._lock:
            await self._send(command)
            return (await self._status()).text

    async def _listing(self, command: ev.Command) -> list[str]:
        async with self._lock:
            await self._send(command)
            await self._status()
            return await self._lines()

    # --- greeting, TLS, capabilities ---

    async def _read_greeting(self) -> None:
        event = await self._event()
        match event:
            case ev.Ok(text=text):
                self.greeting = text
            case ev.Err():
                error = er.error_for(event, "greeting")
                self.close()
                raise error
            case _:
                raise self._unexpected(event)

    async def stls(self, context: ssl.SSLContext | None = None) -> None:
        """STLS (RFC 2595 §4), then the TLS handshake; cached capabilities are forgotten."""
        context = context or ssl.create_default_context()
        try:
            await self._simple(ev.Stls())
        except er.PopError as exc:
            raise er.PopTlsError(f"the server refused STLS: {exc.text}") from None
        try:
            async with asyncio.timeout(self.timeout):
                await self._writer.start_tls(context, server_hostname=self._server_hostname)
        except (TimeoutError, ssl.SSLError, OSError) as exc:
            raise self._broken(er.PopTlsError(f"TLS handshake failed: {_reason(exc)}")) from None
        self._core.tls_started()
        self._secure = True
        self._capabilities = None

    async def capa(self) -> Capabilities:
        """CAPA (RFC 2449 §5): capability name (upper case) -> its arguments."""
        lines = await self._listing(ev.Capa())
        caps: Capabilities = {}
        for line in lines:
            name, *args = line.split() or [""]
            if name:
                caps[name.upper()] = args
        self._capabilities = caps
        return caps

    async def _known_capabilities(self) -> Capabilities:
        if self._capabilities is None:
            try:
                await self.capa()
            except er.PopError:  # an RFC 1939 server without CAPA
                self._capabilities = {}
        assert self._capabilities is not None
        return self._capabilities

    # --- login ---

    def _check_plaintext(self, allow: bool, what: str) -> None:
        if not (allow or self._secure or self.peer_is_loopback()):
            raise er.PopPlaintextRefused(
                f"{what} would send the password unencrypted to {self._server_hostname}; "
                "use TLS, or allow plaintext explicitly")

    async def user_pass(self, user: str, password: str, *, allow_plaintext: bool = False) -> str:
        """USER and PASS (RFC 1939 §7)."""
        self._check_plaintext(allow_plaintext, "USER/PASS")
        async with self._lock:
            await self._send(ev.User(user))
            await self._status()
            await self._send(ev.Pass(password.encode("utf-8")))
            text = (await self._status()).text
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
        if mech.cleartext:
            self._check_plaintext(allow_plaintext, f"AUTH {mech.name}")
        async with self._lock:
            text = await self._sasl(mech)
        self._capabilities = None
        return text

    async def _sasl(self, mech: ClientMechanism) -> str:
        await self._send(ev.Auth(mech.name, mech.initial()))
        while True:
            event = await self._event()
            match event:
                case ev.Continuation(data=challenge):
                    try:
                        response = mech.respond(challenge)
                    except SaslClientError as exc:
                        await self._send(ev.SaslCancel())
                        with contextlib.suppress(er.PopError):
                            await self._status()
                        raise er.PopProtocolError(str(exc)) from None
                    await self._send(ev.SaslResponse(response))
                case ev.Ok(text=text):
                    try:
                        mech.finish()
                    except SaslClientError as exc:
                        raise self._broken(er.PopProtocolError(str(exc))) from None
                    return text
                case ev.Err():
                    raise er.error_for(event, "AUTH")
                case _:
                    raise self._unexpected(event)

    async def login(self, user: str, password: str, *, allow_plaintext: bool = False) -> str:
        """Log in with the strongest method CAPA offers: SCRAM-SHA-256, SCRAM-SHA-1,
        CRAM-MD5, PLAIN, then USER/PASS. PLAIN and USER/PASS are used only over TLS, to
        a loopback address, or with `allow_plaintext`. Returns the method used."""
        caps = await self._known_capabilities()
        offered = {m.upper() for m in caps.get("SASL", [])}
        plaintext_ok = allow_plaintext or self._secure or self.peer_is_loopback()
        user_pass = "USER" in caps or not caps  # no CAPA at all: RFC 1939 USER/PASS
        for name in MECHANISMS:
            if name in offered and (plaintext_ok or not mechanism(name, "", "").cleartext):
                await self.auth(name, user, password, allow_plaintext=True)
                return name
        if user_pass and plaintext_ok:
            await self.user_pass(user, password, allow_plaintext=True)
            return "USER"
        if user_pass or offered & {"PLAIN", "LOGIN"}:
            self._check_plaintext(False, "the login")
        raise er.PopUnsupportedError("the server offers no login method this client knows")

    # --- transaction ---

    async def stat(self) -> tuple[int, int]:
        """STAT (RFC 1939 §5): (number of messages, total octets)."""
        count, size = _numbers(await self._simple(ev.Stat()), 2, "STAT")
        return count, size

    @overload
    async def list(self) -> dict[MsgNo, int]: ...

    @overload
    async def list(self, msg: int) -> int: ...

    async def list(self, msg: int | None = None) -> dict[MsgNo, int] | int:
        """LIST (RFC 1939 §5): every message's size, or one message's."""
        if msg is not None:
            return _numbers(await self._simple(ev.List(MsgNo(msg))), 2, "LIST")[1]
        return self._scan(await self._listing(ev.List(None)))

    @staticmethod
    def _scan(lines: Iterable[str]) -> dict[MsgNo, int]:
        pairs = (_numbers(line, 2, "LIST") for line in lines)
        return {MsgNo(n): size for n, size in pairs}

    @overload
    async def uidl(self) -> dict[MsgNo, Uidl]: ...

    @overload
    async def uidl(self, msg: int) -> Uidl: ...

    async def uidl(self, msg: int | None = None) -> dict[MsgNo, Uidl] | Uidl:
        """UIDL (RFC 1939 §7): every message's unique-id, or one message's."""
        if msg is not None:
            return _uidl_line(await self._simple(ev.Uidl(MsgNo(msg))))[1]
        return dict(_uidl_line(line) for line in await self._listing(ev.Uidl(None)))

    async def list_and_uidl(self) -> tuple[dict[MsgNo, int], dict[MsgNo, Uidl]]:
        """LIST and UIDL, in one round trip when the server announced PIPELINING
        (RFC 2449 §6.6). A -ERR to either is raised after both replies were read."""
        caps = self._capabilities or {}
        if "PIPELINING" not in caps:
            return await self.list(), await self.uidl()
        async with self._lock:
            await self._send(ev.List(None), ev.Uidl(None))
            results: list[list[str] | er.PopError] = []
            for _ in range(2):
                try:
                    await self._status()
                    results.append(await self._lines())
                except er.PopError as exc:
                    results.append(exc)
        for result in results:
            if isinstance(result, er.PopError):
                raise result
        sizes, uidls = (r for r in results if not isinstance(r, er.PopError))
        return self._scan(sizes), dict(map(_uidl_line, uidls))

    async def retr_iter(self, msg: int) -> AsyncGenerator[bytes, None]:
        """RETR as it arrives: pieces of the message, un-stuffed, CRLF line ends. Leaving
        the loop before the end closes the connection (the rest would still be coming);
        wrap the iterator in `contextlib.aclosing` to have that happen at once."""
        async with self._lock:
            await self._send(ev.Retr(MsgNo(msg)))
            async with contextlib.aclosing(self._body()) as body:
                async for chunk in body:
                    yield chunk

    async def _body(self) -> AsyncGenerator[bytes, None]:
        await self._status()
        done = False
        try:
            while True:
                event = await self._event()
                match event:
                    case ev.Data(data):
                        if data:
                            yield data
                    case ev.End():
                        done = True
                        return
                    case _:
                        raise self._unexpected(event)
        finally:
            if not done and self._dead is None:
                self._broken(er.PopConnectionError("a message was not read to its end"))

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
            await self._send(ev.Top(MsgNo(msg), lines))
            async with contextlib.aclosing(self._body()) as body:
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
                await self._send(*(ev.Dele(n) for n in group))
                for _ in group:
                    try:
                        await self._status()
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
            text = await self._simple(ev.Quit())
        finally:
            if self._dead is None:
                self._dead = "quit"
            self._writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timeout):
                    await self._writer.wait_closed()
        return text


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
        await client._read_greeting()
    except BaseException:
        client.close()
        raise
    return client


async def connect(host: str, port: int | None = None, *, tls: Tls = "implicit",
                  ssl_context: ssl.SSLContext | None = None,
                  timeout: float = 60.0,  # noqa: ASYNC109 - for each step, not overall
                  server_hostname: str | None = None) -> PopClient:
    """Connect, read the greeting and, with `tls="starttls"`, do STLS. `port` defaults to
    995 for implicit TLS (RFC 8314 §3.3), else 110. `ssl_context` defaults to the
    system's trusted CAs with host name checking. `timeout` bounds each step (connecting,
    the handshake, and every later read and write), not the whole session."""
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
            caps = await client._known_capabilities()
            if caps and "STLS" not in caps:
                raise er.PopTlsError(f"{where} does not offer STLS")
            assert context is not None
            await client.stls(context)
    except BaseException:
        client.close()
        raise
    return client
