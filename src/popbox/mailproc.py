"""Mail access as the mail's owner: per-uid mail processes.

When the userdb gives a user a uid (and gid), that user's mail is read and changed only by
a process running with exactly that uid, that gid and the supplementary groups of the
account that owns the uid, never as root and never as another uid (what Dovecot does with
its per-user mail processes). The process model:

* The **mail host** is forked by `popbox serve` (each worker), `popbox lmtp` and
  `popbox deliver` while they are still root, before the front drops its privileges and
  before any client is served. It does one thing: on request from its front, over a
  private socketpair, it checks the uid and gid (`auth.first_valid_uid`,
  `auth.first_valid_gid`; uid 0 and gid 0 always refused) and forks a **mail process**
  that takes on that identity, then hands the front one end of a new socketpair to it
  (SCM_RIGHTS). The host never opens a path; it reads no mail and no configuration file.
  With `store.mail_privileged_group` the mail process also keeps that group's gid as
  its saved set-group-ID, for the mbox dotlock only (popbox.store.privgroup).
* A **mail process** (one per uid and front, started on the first login of, or delivery
  to, that uid) does only store I/O: open a maildrop, open a message and read it in
  chunks, commit, release, and store a delivered message, over a small RPC on its
  socketpair (`_Op`). Every session of, and delivery to, that uid on that front
  shares it. When the front has had no use for the uid for `auth.mail_process_idle`
  seconds it closes the socket, and the mail process releases what it holds and exits.
* The **front** (TLS, parsing, authentication, limits, penalties) keeps the connection:
  TLS state cannot be passed with a descriptor, so the client's bytes never leave it; a
  remote maildrop (`RemoteMaildrop`) stands where the local store's would. The front
  decides who has logged in, so the host takes its word for which uid to start, within
  the first_valid limits: a front taken over could read any such user's mail, never
  root's or a system account's, and never without asking the host.

A user without a uid in the userdb, or whose uid and gid are the front's own (the virtual
`vmail` case), is served by the front's own store, in process, as before. A uid other
than the front's own when popbox was not started as root cannot be taken on: that login
is refused (``-ERR [SYS/PERM]``), and a delivery to that user too (popbox.lmtp.agent:
451 4.3.5), rather than reading or writing the mail as the wrong user.

Wire format of the RPC (both ends are popbox, on one machine): a frame is a 9-byte header
(length of what follows the length field, request id, operation or status) and a body.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import enum
import logging
import os
import resource
import signal
import socket
import struct
import threading
from collections.abc import Callable, Set
from dataclasses import dataclass, field

from popbox.auth.base import UserInfo
from popbox.config import Config
from popbox.mailowner import Owner, Refused, become, check_owner, owner_of, privileged_group
from popbox.proto.types import Index, Uidl
from popbox.store.base import (
    GONE,
    CommitReport,
    Failure,
    Gone,
    Maildrop,
    MailStore,
    Reader,
    Snapshot,
    StoreError,
)
from popbox.store.last_login import LastLogin, Recorded

log = logging.getLogger("popbox")

_HEADER = struct.Struct(">IIB")  # length (of id, op and body), request id, op or status
_U32 = struct.Struct(">I")
_MAX_FRAME = 256 * 1024 * 1024  # a snapshot of a very large maildrop fits


class _Op(enum.IntEnum):
    OPEN = 1  # location -> handle, snapshot
    MESSAGE = 2  # handle, index -> reader, done, first chunk
    NEXT = 3  # reader -> done, chunk
    CLOSE = 4  # reader (no answer)
    COMMIT = 5  # handle, deletions, seen -> report
    RELEASE = 6  # handle (answered once released)
    DELIVER = 7  # location, message -> nothing, or the failure (LMTP, `popbox deliver`)
    LOGIN = 8  # when, address and location: the last login record (no answer)


class _Status(enum.IntEnum):
    OK = 0
    FAILURE = 1  # body: the Failure's value
    GONE = 2
    STORE_ERROR = 3  # body: the Failure's value


# -- framing ------------------------------------------------------------------------


def _frame(request: int, code: int, *parts: bytes) -> bytes:
    size = _HEADER.size - 4 + sum(map(len, parts))
    return b"".join((_HEADER.pack(size, request, code), *parts))


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    head = await reader.readexactly(_HEADER.size)
    size, request, code = _HEADER.unpack(head)
    if not _HEADER.size - 4 <= size <= _MAX_FRAME:
        raise ConnectionError("bad frame from the other process")
    body = await reader.readexactly(size - (_HEADER.size - 4))
    return request, code, body


def _indexes(values: Set[Index]) -> bytes:
    return _U32.pack(len(values)) + array.array("I", sorted(values)).tobytes()


def _unpack_indexes(body: bytes, offset: int) -> tuple[frozenset[Index], int]:
    (count,) = _U32.unpack_from(body, offset)
    offset += 4
    column = array.array("I")
    column.frombytes(body[offset:offset + 4 * count])
    if len(column) != count:
        raise ValueError("short index list")
    return frozenset(Index(i) for i in column), offset + 4 * count


# -- the mail process ----------------------------------------------------------------


class _MailServer:
    """The mail process's side of the RPC: the store's calls, for one front."""

    def __init__(self, store: MailStore, writer: asyncio.StreamWriter) -> None:
        self.store = store
        self.writer = writer
        self.drops: dict[int, Maildrop] = {}
        self.readers: dict[int, Reader] = {}
        self.reading: set[int] = set()  # readers with a NEXT under way
        self.closing: set[int] = set()  # ...of which the front has given up: closed after it
        self.ids = 0

    def _id(self) -> int:
        self.ids += 1
        return self.ids

    async def answer(self, request: int, op: int, body: bytes) -> None:
        try:
            reply = await self._handle(op, body)
        except StoreError as exc:
            reply = (_Status.STORE_ERROR, exc.failure.value.encode())
        except (ValueError, KeyError, IndexError, struct.error, RuntimeError):
            log.error("mail process: bad request %d from the front", op)
            reply = (_Status.FAILURE, Failure.TEMPORARY.value.encode())
        except Exception:  # a store bug: the front gets an answer, never waits for good
            log.exception("mail process: operation %d failed", op)
            reply = (_Status.FAILURE, Failure.TEMPORARY.value.encode())
        if reply is not None:
            self.writer.write(_frame(request, reply[0], *reply[1:]))

    async def _handle(self, op: int, body: bytes) -> tuple[int, *tuple[bytes, ...]] | None:
        match op:
            case _Op.OPEN:
                drop = await self.store.open(body.decode())
                if isinstance(drop, Failure):
                    return _Status.FAILURE, drop.value.encode()
                handle = self._id()
                self.drops[handle] = drop
                snap = drop.messages
                sizes = array.array("q", snap.sizes).tobytes()
                uidls = "\n".join(snap.uidls).encode()
                return _Status.OK, _U32.pack(handle), _U32.pack(len(snap)), sizes, uidls
            case _Op.MESSAGE:
                handle, index = struct.unpack(">II", body)
                drop = self.drops[handle]
                if not 0 <= index < len(drop.messages):
                    raise IndexError(index)
                reader = await drop.open_message(Index(index))
                if isinstance(reader, Gone):
                    return (_Status.GONE,)
                try:
                    chunk = await reader.next()
                except BaseException:
                    reader.close()
                    raise
                rid = 0
                if reader.done:
                    reader.close()
                else:
                    rid = self._id()
                    self.readers[rid] = reader
                return _Status.OK, _U32.pack(rid), bytes((reader.done,)), chunk
            case _Op.NEXT:
                (rid,) = _U32.unpack(body)
                reader = self.readers[rid]
                self.reading.add(rid)
                try:
                    chunk = await reader.next()
                except StoreError:
                    self.closing.add(rid)
                    raise
                finally:
                    self.reading.discard(rid)
                    if reader.done or rid in self.closing:
                        self.closing.discard(rid)
                        self._close(rid)
                return _Status.OK, bytes((reader.done,)), chunk
            case _Op.CLOSE:
                (rid,) = _U32.unpack(body)
                if rid in self.reading:  # its file is being read: closed when that ends
                    self.closing.add(rid)
                else:
                    self._close(rid)
                return None
            case _Op.COMMIT:
                (handle,) = _U32.unpack_from(body)
                delete, offset = _unpack_indexes(body, 4)
                seen, _ = _unpack_indexes(body, offset)
                drop = self.drops.pop(handle)
                report = await drop.commit(delete, seen)
                if isinstance(report, Failure):
                    return _Status.FAILURE, report.value.encode()
                return _Status.OK, struct.pack(">III", report.deleted, report.missing,
                                               report.flagged)
            case _Op.LOGIN:
                (when,) = struct.unpack_from(">d", body)
                address, _, location = body[8:].decode().partition("\n")
                if isinstance(self.store, Recorded):
                    await self.store.record_login(location, LastLogin(when, address))
                return None
            case _Op.RELEASE:
                (handle,) = _U32.unpack(body)
                found_drop = self.drops.pop(handle, None)
                if found_drop is not None:
                    await found_drop.release()
                return (_Status.OK,)
            case _Op.DELIVER:
                (size,) = _U32.unpack_from(body)
                location = body[4:4 + size].decode()
                failure = await self.store.deliver(location, body[4 + size:])
                if failure is not None:
                    return _Status.FAILURE, failure.value.encode()
                return (_Status.OK,)
        raise ValueError(f"unknown operation {op}")

    def _close(self, rid: int) -> None:
        reader = self.readers.pop(rid, None)
        if reader is not None:
            reader.close()

    async def shutdown(self) -> None:
        for reader in self.readers.values():
            reader.close()
        for drop in self.drops.values():
            await drop.release()


async def _serve_front(sock: socket.socket, store: MailStore) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    server = _MailServer(store, writer)
    tasks: set[asyncio.Task[None]] = set()
    try:
        while True:
            try:
                request, op, body = await _read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break  # the front is gone or has no use for this process any more
            task = asyncio.create_task(server.answer(request, op, body))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if writer.transport.get_write_buffer_size() > 1024 * 1024:
                await writer.drain()  # a front that does not read is not buffered for
    finally:
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.shutdown()
        writer.close()


def _mail_process(sock: socket.socket, owner: Owner, make_store: Callable[[], MailStore],
                  privileged_gid: int | None) -> int:
    """The life of one mail process, forked as root by the host."""
    become(owner, privileged_gid)
    store = make_store()
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve_front(sock, store))
    else:
        uvloop.run(_serve_front(sock, store))
    return 0


# -- the mail host (root) -------------------------------------------------------------


def _host_loop(control: socket.socket, config: Config,
               make_store: Callable[[], MailStore]) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # mail processes are reaped by the kernel
    # The front decides when the host and the mail processes end (they see its socket
    # close): a signal to the whole group must not cut a commit in half.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    first_uid, first_gid = config.auth.first_valid_uid, config.auth.first_valid_gid
    privileged_gid = privileged_group(config)
    while True:
        try:
            request = control.recv(64)
        except InterruptedError:
            continue
        if not request:
            return  # the front has exited
        try:
            uid_text, gid_text = request.decode().split()
            owner = Owner(int(uid_text), int(gid_text))
        except ValueError:
            control.send(b"bad request")
            continue
        refused = check_owner(owner, first_uid, first_gid)
        if refused is not None:
            log.error("mail host: refusing uid=%d gid=%d: %s", owner.uid, owner.gid,
                      refused.value)
            control.send(b"refused")
            continue
        front_end, mail_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = os.fork()
        except OSError as exc:  # out of processes or memory: this login fails, not the host
            log.error("mail host: cannot start a mail process: %s", exc)
            front_end.close()
            mail_end.close()
            control.send(b"no process")
            continue
        if pid == 0:
            code = 1
            try:
                control.close()
                front_end.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                code = _mail_process(mail_end, owner, make_store, privileged_gid)
            except BaseException:
                log.exception("mail process for uid=%d failed", owner.uid)
            finally:
                os._exit(code)
        mail_end.close()
        try:
            socket.send_fds(control, [b"ok"], [front_end.fileno()])
        except OSError:
            return  # the front has exited; the new mail process sees its socket close
        finally:
            front_end.close()


class MailHost:
    """The front's handle on its privileged mail host: asks it for mail processes."""

    def __init__(self, control: socket.socket, pid: int) -> None:
        self.control = control
        self.pid = pid
        self._lock = threading.Lock()

    @classmethod
    def start(cls, config: Config, make_store: Callable[[], MailStore]) -> MailHost:
        """Fork the host; call as root, before any thread or event loop exists."""
        front, host = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                front.close()
                # Keep nothing of the front's but the log (stderr): no pipe a parent
                # waits on, no socket or file it opened.
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(null, 1)
                keep = host.fileno()
                os.closerange(3, keep)
                os.closerange(keep + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
                _host_loop(host, config, make_store)
            except BaseException:
                log.exception("mail host failed")
                code = 1
            finally:
                os._exit(code)
        host.close()
        return cls(front, pid)

    def spawn(self, owner: Owner) -> socket.socket | None:
        """A socket to a new mail process running as `owner` (blocking: run in a thread)."""
        with self._lock:
            try:
                self.control.send(f"{owner.uid} {owner.gid}".encode())
                message, fds, _flags, _addr = socket.recv_fds(self.control, 64, 1)
            except OSError as exc:
                log.error("mail host unreachable: %s", exc)
                return None
        if message != b"ok" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            return None
        return socket.socket(fileno=fds[0])

    def close(self) -> None:
        self.control.close()


# -- the front's side -----------------------------------------------------------------


class _Channel:
    """The front's connection to one mail process: requests matched to answers by id."""

    def __init__(self, owner: Owner, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.owner = owner
        self.writer = writer
        self.pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self.ids = 0
        self.users = 0
        self.alive = True
        self.idle: asyncio.TimerHandle | None = None
        self.task = asyncio.create_task(self._receive(reader))

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                request, status, body = await _read_frame(reader)
                future = self.pending.pop(request, None)
                if future is not None and not future.done():
                    future.set_result((status, body))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.alive = False
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("mail process exited"))
            self.pending.clear()

    def send(self, op: _Op, *parts: bytes) -> asyncio.Future[tuple[int, bytes]] | None:
        if not self.alive:
            return None
        self.ids = (self.ids + 1) & 0xFFFFFFFF
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self.pending[self.ids] = future
        self.writer.write(_frame(self.ids, op, *parts))
        return future

    async def call(self, op: _Op, *parts: bytes) -> tuple[int, bytes]:
        future = self.send(op, *parts)
        if future is None:
            raise ConnectionError("mail process exited")
        return await future

    def cast(self, op: _Op, *parts: bytes) -> None:
        future = self.send(op, *parts)
        if future is not None:
            self.pending.pop(self.ids, None)
            future.cancel()

    def close(self) -> None:
        self.alive = False
        self.writer.close()


def _failure(body: bytes) -> Failure:
    try:
        return Failure(body.decode())
    except ValueError:
        return Failure.TEMPORARY


class _RemoteReader:
    __slots__ = ("_channel", "_first", "_id", "done")

    def __init__(self, channel: _Channel, rid: int, done: bool, first: bytes) -> None:
        self._channel = channel
        self._id = rid
        self._first: bytes | None = first
        self.done = done

    async def next(self) -> bytes:
        if self._first is not None:
            chunk, self._first = self._first, None
            return chunk
        if self.done:
            return b""
        try:
            status, body = await self._channel.call(_Op.NEXT, _U32.pack(self._id))
        except ConnectionError:
            raise StoreError(Failure.TEMPORARY) from None
        if status != _Status.OK:
            self.done = True
            raise StoreError(_failure(body))
        self.done = bool(body[0])
        return body[1:]

    def close(self) -> None:
        if not self.done:
            self.done = True
            self._channel.cast(_Op.CLOSE, _U32.pack(self._id))


class RemoteMaildrop:
    """A maildrop opened by a mail process, seen from the front."""

    def __init__(self, pool: MailProcesses, channel: _Channel, handle: int,
                 messages: Snapshot) -> None:
        self._pool = pool
        self._channel = channel
        self._handle = handle
        self._messages = messages
        self._open = True

    @property
    def messages(self) -> Snapshot:
        return self._messages

    async def open_message(self, index: Index) -> Reader | Gone:
        try:
            status, body = await self._channel.call(
                _Op.MESSAGE, struct.pack(">II", self._handle, index))
        except ConnectionError:
            raise StoreError(Failure.TEMPORARY) from None
        if status == _Status.GONE:
            return GONE
        if status != _Status.OK:
            raise StoreError(_failure(body))
        (rid,) = _U32.unpack_from(body)
        return _RemoteReader(self._channel, rid, bool(body[4]), body[5:])

    async def commit(self, delete: Set[Index], seen: Set[Index]) -> CommitReport | Failure:
        if not self._open:
            raise RuntimeError("maildrop already committed or released")
        self._open = False
        try:
            status, body = await self._channel.call(
                _Op.COMMIT, _U32.pack(self._handle), _indexes(delete), _indexes(seen))
        except ConnectionError:
            return Failure.TEMPORARY
        finally:
            self._pool.done_with(self._channel)
        if status != _Status.OK:
            return _failure(body)
        deleted, missing, flagged = struct.unpack(">III", body)
        return CommitReport(deleted=deleted, missing=missing, flagged=flagged)

    async def release(self) -> None:
        if not self._open:
            return
        self._open = False
        try:
            with contextlib.suppress(ConnectionError):
                await self._channel.call(_Op.RELEASE, _U32.pack(self._handle))
        finally:
            self._pool.done_with(self._channel)


@dataclass(slots=True)
class MailProcesses:
    """The front's mail processes, one per owner, started through the host on demand
    and let go after `idle` seconds without a session."""

    host: MailHost | None
    idle: float
    channels: dict[Owner, _Channel] = field(default_factory=dict)

    async def open(self, owner: Owner, location: str) -> Maildrop | Failure:
        channel = await self._channel(owner)
        if channel is None:
            return Failure.TEMPORARY
        channel.users += 1
        try:
            status, body = await channel.call(_Op.OPEN, location.encode())
        except ConnectionError:
            self.done_with(channel)
            return Failure.TEMPORARY
        if status != _Status.OK:
            self.done_with(channel)
            return _failure(body)
        handle, count = struct.unpack_from(">II", body)
        sizes = array.array("q")
        sizes.frombytes(body[8:8 + 8 * count])
        text = body[8 + 8 * count:].decode()
        uidls = [Uidl(u) for u in text.split("\n")] if count else []
        return RemoteMaildrop(self, channel, handle, Snapshot(uidls, sizes.tolist()))

    async def deliver(self, owner: Owner, location: str, message: bytes) -> Failure | None:
        """Store one message at `location` by the mail process running as `owner`."""
        channel = await self._channel(owner)
        if channel is None:
            return Failure.TEMPORARY
        channel.users += 1
        try:
            where = location.encode()
            status, body = await channel.call(_Op.DELIVER, _U32.pack(len(where)), where,
                                              message)
        except ConnectionError:
            return Failure.TEMPORARY
        finally:
            self.done_with(channel)
        return None if status == _Status.OK else _failure(body)

    async def _channel(self, owner: Owner) -> _Channel | None:
        channel = self.channels.get(owner)
        if channel is not None and channel.alive:
            if channel.idle is not None:
                channel.idle.cancel()
                channel.idle = None
            return channel
        if self.host is None:
            return None
        sock = await asyncio.to_thread(self.host.spawn, owner)
        if sock is None:
            return None
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        channel = _Channel(owner, reader, writer)
        self.channels[owner] = channel
        return channel

    def done_with(self, channel: _Channel) -> None:
        channel.users -= 1
        if channel.users > 0:
            return
        if not channel.alive:
            if self.channels.get(channel.owner) is channel:
                del self.channels[channel.owner]
            channel.close()
            return
        channel.idle = asyncio.get_running_loop().call_later(
            self.idle, self._let_go, channel)

    def _let_go(self, channel: _Channel) -> None:
        if channel.users > 0:
            return
        if self.channels.get(channel.owner) is channel:
            del self.channels[channel.owner]
        channel.close()

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        self.channels.clear()


class MailAccess:
    """Opens a logged-in user's maildrop, and stores mail delivered to a user, with the
    right identity (see the module's docstring): in process for the front's own, through
    a mail process otherwise."""

    def __init__(self, config: Config, store: MailStore, host: MailHost | None = None) -> None:
        self.config = config
        self.store = store
        self.processes = MailProcesses(host, config.auth.mail_process_idle)
        self._writes: set[asyncio.Task[None]] = set()

    def note_login(self, info: UserInfo, login: LastLogin) -> None:
        """`record_login` in the background: the session does not wait for it."""
        task = asyncio.get_running_loop().create_task(self.record_login(info, login))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def route(self, info: UserInfo) -> Owner | Refused | None:
        """Who does `info`'s mail I/O: None for this process itself, an `Owner` for a
        mail process, or why nobody may."""
        owner = owner_of(info, self.config)
        if owner is None or self._in_database(info.mail_location):
            return None
        if isinstance(owner, Owner) and self.processes.host is None:
            return Refused.NOT_ROOT
        return owner

    async def open(self, info: UserInfo) -> Maildrop | Failure:
        owner = self.route(info)
        if owner is None:
            return await self.store.open(info.mail_location)
        if isinstance(owner, Refused):
            _refused(info, owner)
            return Failure.PERMANENT
        return await self.processes.open(owner, info.mail_location)

    async def deliver(self, info: UserInfo, message: bytes) -> Failure | Refused | None:
        """Store `message` for `info` durably: None when stored, else the failure, or why
        `info`'s mail may not be written at all (nothing is written then)."""
        owner = self.route(info)
        if owner is None:
            return await self.store.deliver(info.mail_location, message)
        if isinstance(owner, Refused):
            _refused(info, owner)
            return owner
        return await self.processes.deliver(owner, info.mail_location, message)

    def close(self) -> None:
        """Let every mail process go (they exit once they see their socket close)."""
        self.processes.close()

    async def record_login(self, info: UserInfo, login: LastLogin) -> None:
        """Write the user's last login record (popbox.store.last_login) where their mail
        is opened: in process, or by their mail process (which the session has open)."""
        owner = self.route(info)
        if owner is None:
            if isinstance(self.store, Recorded):
                await self.store.record_login(info.mail_location, login)
            return
        channel = self.processes.channels.get(owner) if isinstance(owner, Owner) else None
        if channel is not None:
            channel.cast(_Op.LOGIN, struct.pack(">d", login.when),
                         f"{login.address}\n{info.mail_location}".encode())

    def _in_database(self, location: str) -> bool:
        """Mail kept in PostgreSQL has no file owner: the front reads it itself."""
        kind, colon, _ = location.partition(":")
        return self.config.store.backend == "postgres" and not (
            colon and kind in ("maildir", "mbox"))


def _refused(info: UserInfo, why: Refused) -> None:
    log.error("mail access refused user=%s uid=%s gid=%s: %s", info.name, info.uid,
              info.gid, why.value)
