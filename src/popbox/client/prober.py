"""`popbox probe`'s conversation with a server: collects the `Observations` that
`popbox.client.probe.evaluate` judges. Read-only: it never sends DELE, sends RSET before
a logged-in session's QUIT (RFC 1939 §5), reads at most `max_messages` messages (the
smallest first, none over `max_octets`), and stops reading a reply that runs past its
bound.

The sessions run on `popbox.client` (`open_streams` reads the greeting; `stls`, `login`
with the strongest method CAPA offers, `rset`, `quit`). What the probe must see as it came
off the wire (CAPA, STAT, the LIST and UIDL listings with their line ends, message bodies
before they are un-stuffed, the status lines of `LIST n`, of message 0 and of a number past
the last) goes through `_Raw`: a few lines over the same streams, between the library's
commands, when the library has no reply outstanding.

The sessions: the first one does everything; while it is logged in a second login shows
whether the server locks the maildrop ([IN-USE], RFC 2449 §8.1.1); a third session, or the
second if the server let it in, lists the UIDLs again to see that they are stable.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

from popbox.client import PopClient, Tls, open_streams
from popbox.client import errors as er
from popbox.client.probe import (
    TOP_ALL,
    Certificate,
    Observations,
    Reply,
    Sample,
    TlsInfo,
    fingerprint,
    sizes,
)

LINE_LIMIT = 65536  # a longer line ends the probe (RFC 2449 §4 allows 512)


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    tls: Tls
    user: str | None = None
    password: str | None = None
    ssl_context: ssl.SSLContext | None = None  # None: the system's CAs
    insecure: bool = False  # log in even though the certificate does not verify
    allow_plaintext: bool = False
    timeout: float = 30.0
    max_messages: int = 3
    max_octets: int = 1 << 20
    top_lines: int = 2


class ProbeError(Exception):
    """The probe could not go on (the reason is in the message)."""


class _Raw:
    """Commands whose replies the probe needs as sent."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float) -> None:
        self.reader, self.writer, self.timeout = reader, writer, timeout

    async def _line(self) -> bytes:
        try:
            async with asyncio.timeout(self.timeout):
                line = await self.reader.readline()
        except TimeoutError:
            raise ProbeError(f"no answer within {self.timeout:g}s") from None
        except ValueError:  # asyncio.LimitOverrunError inside: a line past LINE_LIMIT
            raise ProbeError(f"a line longer than {LINE_LIMIT} octets") from None
        except OSError as exc:
            raise ProbeError(f"connection lost: {exc.strerror or exc}") from None
        if not line:
            raise ProbeError("the server closed the connection")
        return line

    async def status(self, command: str) -> str:
        self.writer.write(command.encode() + b"\r\n")
        return (await self._line()).decode("utf-8", "replace").rstrip("\r\n")

    async def reply(self, command: str, limit: int) -> Reply:
        """A multi-line command: its status line, and its lines unless -ERR. More than
        `limit` octets end the probe (the server may not be framing the reply)."""
        status = await self.status(command)
        if not status.startswith("+OK"):
            return Reply(status)
        lines: list[bytes] = []
        total = 0
        while True:
            line = await self._line()
            if line in (b".\r\n", b".\n"):
                return Reply(status, lines, bare_end=line == b".\n")
            total += len(line)
            if total > limit:
                raise ProbeError(f"{command}: more than {limit} octets without an end")
            lines.append(line)


def _tls_info(writer: asyncio.StreamWriter, how: str, verify_error: str | None) -> TlsInfo:
    obj = writer.get_extra_info("ssl_object")
    assert obj is not None
    name, _, bits = obj.cipher() or ("?", "", 0)
    leaf = obj.getpeercert(binary_form=True) or b""
    return TlsInfo(how=how, version=obj.version() or "?", cipher=name, bits=bits or 0,
                   fingerprint=fingerprint(leaf), chain=_chain(obj, leaf),
                   verify_error=verify_error)


def _chain(obj: ssl.SSLObject, leaf: bytes) -> tuple[Certificate, ...]:
    """The certificates the server sent. Python 3.13 has `get_unverified_chain`; before,
    the same method sits on the underlying `_ssl` object."""
    from cryptography import x509

    getter = getattr(obj, "get_unverified_chain", None) or getattr(
        getattr(obj, "_sslobj", None), "get_unverified_chain", None)
    ders: list[bytes] = [leaf]
    if getter is not None:
        with contextlib.suppress(Exception):
            ders = [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
                    for c in getter() or []] or [leaf]
    out = []
    for der in ders:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            continue
        out.append(Certificate(cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(),
                               cert.not_valid_after_utc.isoformat()))
    return tuple(out)


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class _Session:
    def __init__(self, pop: PopClient, raw: _Raw, writer: asyncio.StreamWriter) -> None:
        self.pop, self.raw, self.writer = pop, raw, writer
        self.logged_in = False

    async def close(self) -> None:
        """RSET, then QUIT: nothing this session did is kept (it DELE'd nothing anyway)."""
        if self.pop.closed:
            return
        if self.logged_in:
            try:
                await self.pop.rset()
            except er.PopError:
                pass
            except er.PopClientError:
                return
        with contextlib.suppress(er.PopClientError):
            await self.pop.quit()


async def _open(target: Target, context: ssl.SSLContext | None, obs: Observations | None
                ) -> _Session:
    """Connect, read the greeting, and (starttls) CAPA and STLS, noting what is seen
    in `obs` when given."""
    tls, where = target.tls, f"{target.host}:{target.port}"
    try:
        async with asyncio.timeout(target.timeout):
            reader, writer = await asyncio.open_connection(
                target.host, target.port, limit=LINE_LIMIT,
                ssl=context if tls == "implicit" else None,
                server_hostname=target.host if tls == "implicit" else None)
    except ssl.SSLCertVerificationError:
        raise
    except ssl.SSLError as exc:
        raise ProbeError(f"TLS with {where} failed: {exc}") from None
    except TimeoutError:
        raise ProbeError(f"connecting to {where} timed out") from None
    except OSError as exc:
        raise ProbeError(f"cannot connect to {where}: {exc.strerror or exc}") from None
    try:
        pop = await open_streams(reader, writer, server_hostname=target.host,
                                 timeout=target.timeout, secure=tls == "implicit")
    except er.PopError as exc:
        writer.transport.abort()
        if obs is not None:
            obs.greeting = str(exc).removeprefix("greeting: ")
        raise ProbeError(f"the server refused the session: {exc}") from None
    except er.PopClientError as exc:
        writer.transport.abort()
        raise ProbeError(f"no greeting: {exc}") from None
    session = _Session(pop, _Raw(reader, writer, target.timeout), writer)
    if obs is not None:
        obs.greeting = "+OK " + pop.greeting if pop.greeting else "+OK"
    if tls == "starttls":
        if obs is not None:
            obs.capa_clear = await session.raw.reply("CAPA", LINE_LIMIT)
        assert context is not None
        try:
            await pop.stls(context)
        except er.PopTlsError as exc:
            if isinstance(exc.__context__, ssl.SSLCertVerificationError):
                raise exc.__context__ from None
            if obs is not None:
                obs.stls = str(exc)
            raise ProbeError(str(exc)) from None
        if obs is not None:
            obs.stls = "+OK (TLS started)"
    return session


async def _connect(target: Target, obs: Observations | None) -> tuple[_Session, str | None]:
    """A session; if the certificate does not verify, a second try without verifying
    (the error is returned: the probe reports it and logs in only if told to)."""
    context = None if target.tls == "none" else (target.ssl_context
                                                 or ssl.create_default_context())
    try:
        return await _open(target, context, obs), None
    except ssl.SSLCertVerificationError as exc:
        error = exc.verify_message or str(exc)
    return await _open(target, _unverified(), obs), error


async def probe(target: Target) -> Observations:
    obs = Observations(target.host, target.port, top_lines=target.top_lines)
    try:
        await _probe(target, obs)
    except (ProbeError, er.PopClientError) as exc:
        obs.problems.append(str(exc))
    return obs


async def _probe(target: Target, obs: Observations) -> None:
    session, verify_error = await _connect(target, obs)
    try:
        if target.tls != "none":
            obs.tls = _tls_info(session.writer, target.tls, verify_error)
        capa = await session.raw.reply("CAPA", LINE_LIMIT)
        if target.tls == "none":
            obs.capa_clear = capa
        else:
            obs.capa_auth = capa
        if target.user is None or target.password is None:
            obs.login_skipped = "no --user and password: the checks after login were skipped"
            return
        if verify_error is not None and not target.insecure:
            obs.login_skipped = ("the certificate does not verify: no password sent "
                                 "(--insecure logs in anyway)")
            return
        if not await _login(session, target, obs):
            return
        obs.capa_trans = await session.raw.reply("CAPA", LINE_LIMIT)
        await _transaction(session, target, obs)
        again = await _second(target, obs)
    finally:
        await session.close()
    if again is None and obs.concurrent is not None and not obs.concurrent.startswith("+OK"):
        third, _ = await _connect(target, None)
        try:
            if await _login(third, target, None):
                obs.uidl_again = await third.raw.reply("UIDL", target.max_octets)
        finally:
            await third.close()


async def _login(session: _Session, target: Target, obs: Observations | None) -> bool:
    assert target.user is not None and target.password is not None
    try:
        method = await session.pop.login(target.user, target.password,
                                         allow_plaintext=target.allow_plaintext)
    except er.PopError as exc:
        if obs is not None:
            obs.login = f"-ERR {'[' + exc.code + '] ' if exc.code else ''}{exc.text}"
        return False
    except (er.PopPlaintextRefused, er.PopUnsupportedError) as exc:
        if obs is not None:
            obs.login_skipped = str(exc)
        return False
    except er.PopClientError as exc:
        raise ProbeError(f"the login broke the session: {exc}") from None
    session.logged_in = True
    if obs is not None:
        obs.login, obs.logged_in = method, True
    return True


async def _transaction(session: _Session, target: Target, obs: Observations) -> None:
    raw = session.raw
    obs.stat = await raw.status("STAT")
    obs.list_all = await raw.reply("LIST", target.max_octets)
    obs.uidl_all = await raw.reply("UIDL", target.max_octets)
    listed = sizes(obs.list_all)
    small = sorted((size, msg) for msg, size in listed.items() if size <= target.max_octets)
    limit = 2 * target.max_octets + LINE_LIMIT  # a reply this long is not the message
    for size, msg in small[: target.max_messages]:
        sample = Sample(msg, size, await raw.reply(f"RETR {msg}", limit))
        sample.top0 = await raw.reply(f"TOP {msg} 0", limit)
        sample.topk = await raw.reply(f"TOP {msg} {target.top_lines}", limit)
        sample.top_all = await raw.reply(f"TOP {msg} {TOP_ALL}", limit)
        sample.list_n = await raw.status(f"LIST {msg}")
        sample.uidl_n = await raw.status(f"UIDL {msg}")
        obs.samples.append(sample)
    past = max(listed, default=0) + 1
    for command in ("LIST 0", "UIDL 0", f"LIST {past}", f"UIDL {past}"):
        obs.edges[command] = await raw.status(command)


async def _second(target: Target, obs: Observations) -> Reply | None:
    """A login while the first session is in: the server's answer, and if it let the
    second session in, that session's UIDL listing."""
    try:
        session, _ = await _connect(target, None)
    except ProbeError as exc:
        obs.concurrent = f"(no second session: {exc})"
        return None
    try:
        try:
            method = await session.pop.login(target.user or "", target.password or "",
                                             allow_plaintext=target.allow_plaintext)
        except er.PopError as exc:
            obs.concurrent = f"-ERR {'[' + exc.code + '] ' if exc.code else ''}{exc.text}"
            return None
        session.logged_in = True
        obs.concurrent = f"+OK (logged in with {method})"
        obs.uidl_again = await session.raw.reply("UIDL", target.max_octets)
        return obs.uidl_again
    finally:
        await session.close()
