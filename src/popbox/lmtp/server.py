"""The LMTP listener (RFC 2033): asyncio streams around popbox.lmtp.core.

Listens on TCP (`host:port`) and on Unix sockets (`/path`, mode `lmtp.socket_mode`; a
stale socket file left by a dead server is replaced). Each connection is one task that
feeds the core, answers recipients from the userdb (popbox.lmtp.agent) and, after the
data, delivers the message once per recipient (the copies at once, so a store that
commits concurrent deliveries together stores them in one transaction) and sends one
reply each (RFC 2033 §4.2), in RCPT order:

    250 2.1.5 (RCPT) / 250 2.0.0 (after DATA)  stored durably by the store
    550 5.1.1  no such user                     552 5.3.4  over lmtp.max_message_size
    451 4.3.0  userdb or store trouble (the MTA keeps the message and retries)
    451 4.3.5  (RCPT) no process here may write this user's mail: a uid or gid below
               auth.first_valid_uid/gid, or another uid without root (kept and retried)
    452 4.3.1  no space or quota left for the mailbox (ENOSPC, EDQUOT; retried likewise)
    550 5.2.0  the store refuses this mailbox for good

Replies to pipelined commands are written as they are made and flushed before reading
again (RFC 2920). A client silent for `lmtp.timeout` seconds is told 421 and closed
(RFC 5321 §4.5.3.2). Shutdown: stop accepting, give running deliveries `grace` seconds,
then cancel them; a cancelled delivery never answers 250, so the MTA retries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Callable

from popbox.auth.base import UserInfo
from popbox.config import LmtpSection, parse_address
from popbox.lmtp.agent import Agent, Outcome, trace_headers
from popbox.lmtp.core import LmtpCore, Message, Output, RcptTo, Reply

log = logging.getLogger("popbox")

READ_SIZE = 256 * 1024


def _rcpt_reply(address: str, found: UserInfo | Outcome) -> Reply:
    if isinstance(found, UserInfo):
        return Reply(250, "2.1.5", f"<{address}> Ok")
    if found is Outcome.NO_SUCH_USER:
        return Reply(550, "5.1.1", f"<{address}> User unknown")
    if found is Outcome.REFUSED:  # RFC 3463 §3.4: X.3.5 system incorrectly configured
        return Reply(451, "4.3.5", f"<{address}> Mailbox owner not permitted here")
    return Reply(451, "4.3.0", f"<{address}> Temporary lookup failure")


def _data_reply(address: str, outcome: Outcome) -> Reply:
    if outcome is Outcome.DELIVERED:
        return Reply(250, "2.0.0", f"<{address}> Saved")
    if outcome is Outcome.PERMANENT:
        return Reply(550, "5.2.0", f"<{address}> Mailbox unavailable")
    if outcome is Outcome.FULL:  # RFC 3463 §3.4: X.3.1 mail system full
        return Reply(452, "4.3.1", f"<{address}> Insufficient system storage")
    if outcome is Outcome.REFUSED:
        return Reply(451, "4.3.5", f"<{address}> Mailbox owner not permitted here")
    return Reply(451, "4.3.0", f"<{address}> Temporary failure, try again later")


class LmtpServer:
    def __init__(self, settings: LmtpSection, hostname: str, agent: Agent,
                 delivered: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.hostname = hostname
        self.agent = agent
        self.delivered = delivered or (lambda _status: None)  # each outcome, for metrics
        self._servers: list[asyncio.Server] = []
        self._sessions: set[asyncio.Task[None]] = set()

    async def start(self) -> list[str]:
        """Bind every `lmtp.listen` address; returns them as bound ("host:port", "/path")."""
        bound: list[str] = []
        for item in self.settings.listen:
            if item.startswith("/"):
                _remove_stale_socket(item)
                server = await asyncio.start_unix_server(self._accept, path=item)
                os.chmod(item, self.settings.socket_mode)
                bound.append(item)
            else:
                host, port = parse_address(item)
                server = await asyncio.start_server(
                    self._accept, host or None, port, reuse_address=True)
                for sock in server.sockets:
                    if sock.family in (socket.AF_INET, socket.AF_INET6):
                        name = sock.getsockname()
                        bound.append(f"{name[0]}:{name[1]}")
            self._servers.append(server)
        for address in bound:
            log.info("lmtp: listening on %s", address)
        return bound

    async def shutdown(self, grace: float) -> None:
        for server in self._servers:
            server.close()
        sessions = set(self._sessions)
        if sessions:
            _, pending = await asyncio.wait(sessions, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for server in self._servers:
            await server.wait_closed()
        for item in self.settings.listen:
            if item.startswith("/"):
                with contextlib.suppress(OSError):
                    os.unlink(item)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._sessions.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        core: LmtpCore[UserInfo] = LmtpCore(self.hostname, self.settings.max_message_size,
                        self.settings.max_recipients)
        # Replies are sent together when the core needs more input (RFC 2920 §3.1: a
        # pipelining client's group of commands gets its replies in one write).
        out = [core.greeting()]
        while not core.closed:
            event = core.next_event()
            if event is None:
                writer.write(b"".join(out))
                out.clear()
                await writer.drain()
                try:
                    async with asyncio.timeout(self.settings.timeout):  # no task per read
                        data = await reader.read(READ_SIZE)
                except TimeoutError:
                    writer.write(Reply(421, "4.4.2", "Timeout, closing").encode())
                    break
                if not data:
                    return
                core.feed(data)
                continue
            match event:
                case Output(data):
                    out.append(data)
                case RcptTo(address):
                    found = await self.agent.resolve(address)
                    user = found if isinstance(found, UserInfo) else None
                    out.append(core.recipient(_rcpt_reply(address, found), user))
                case Message():
                    out.append(core.delivered(await self._deliver(event)))
        writer.write(b"".join(out))
        await writer.drain()

    async def _deliver(self, message: Message[UserInfo]) -> list[Reply]:
        if message.data is None:
            log.info("lmtp: message refused: over %d octets", self.settings.max_message_size)
            self.delivered("too-big")
            return [Reply(552, "5.3.4", "Message too big for system")] * len(message.recipients)
        body = message.data
        # Every recipient's copy at once: a store that commits concurrent deliveries
        # together (popbox.store.pg_batch) then stores them in one transaction.
        copies = [trace_headers(message.sender, address) + body
                  for address, _ in message.recipients]
        if len(copies) == 1:
            outcomes = [await self.agent.deliver(message.recipients[0][1], copies[0])]
        else:
            outcomes = await asyncio.gather(*(
                self.agent.deliver(user, data)
                for (_, user), data in zip(message.recipients, copies, strict=True)))
        replies = []
        for (address, _), data, outcome in zip(message.recipients, copies, outcomes,
                                               strict=True):
            log.info("lmtp: to=<%s> size=%d status=%s", address, len(data), outcome.value)
            self.delivered(outcome.value)
            replies.append(_data_reply(address, outcome))
        return replies


def _remove_stale_socket(path: str) -> None:
    """A socket file left by a dead server would make bind() fail; anything else stays."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
    except OSError:
        pass
    else:
        raise OSError(f"{path}: another server is listening there")
    finally:
        probe.close()
