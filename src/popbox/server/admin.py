"""The admin socket (`[admin] socket`): `popbox who`, `kick`, `reload` and `stats`.

A unix stream socket; one request per connection, one JSON object a line each way:
`{"command": "who", "user": "alice"}` is answered by `{"ok": true, "sessions": [...]}`.
The socket is made mode 0600 (0660 and the `[admin] group` when one is set) in a folder
that others cannot write to; besides, every connection's peer is checked with
SO_PEERCRED and served only if it is root, the server's own user, or a member of the
admin group. Anyone else gets `permission denied` and a warning in the log.

With `server.workers > 1` each worker answers on a socket of its own in a private folder
the supervisor made, and the supervisor serves the configured socket: it passes every
request to every worker and adds the answers up (sessions listed together, kicks summed,
a reload refused if one worker refused it). Once a reload has succeeded, a worker started
later (after a crash) reloads the file itself before it serves. `stats` is answered by
whoever holds the sum of the metrics: the worker when there is one, otherwise the
supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import socket
import socketserver
import stat
import struct
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("popbox")

MAX_REQUEST = 4096
WORKER_DIR_ENV = "POPBOX_ADMIN_DIR"
RELOADED = "reloaded"  # in that folder once a reload succeeded: new workers reload too

Answer = dict[str, Any]


class AdminError(Exception):
    """The admin socket cannot be set up as configured; the message says why."""


def _peer_allowed(sock: socket.socket, group: str | None) -> tuple[bool, int]:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    if uid in (0, os.geteuid()):
        return True, uid
    if group is None:
        return False, uid
    try:
        wanted = grp.getgrnam(group).gr_gid
    except KeyError:
        return False, uid
    if gid == wanted:
        return True, uid
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False, uid
    for line in status.splitlines():
        if line.startswith("Groups:"):
            return str(wanted) in line.split()[1:], uid
    return False, uid


def prepare(path: Path, group: str | None) -> None:
    """Check the socket's folder and remove a stale socket; raise AdminError if unsafe."""
    folder = path.parent
    try:
        info = folder.stat()
    except OSError as exc:
        raise AdminError(f"admin.socket {path}: folder {folder}: {exc.strerror}") from None
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise AdminError(f"admin.socket {path}: folder {folder} is writable by anyone")
    if group is not None:
        try:
            grp.getgrnam(group)
        except KeyError:
            raise AdminError(f"admin.group {group!r}: no such group") from None
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise AdminError(f"admin.socket {path}: exists and is not a socket")
        path.unlink()


def secure(path: Path, group: str | None) -> None:
    """Mode 0600, or 0660 with the admin group."""
    if group is None:
        os.chmod(path, 0o600)
    else:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
        os.chmod(path, 0o660)


def _bind_unix(path: Path, group: str | None) -> socket.socket:
    prepare(path, group)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # never, even for a moment, open to others
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    secure(path, group)
    sock.listen(16)
    return sock


def decode(line: bytes) -> Answer | None:
    try:
        request = json.loads(line)
    except ValueError:
        return None
    if isinstance(request, dict) and isinstance(request.get("command"), str):
        return request
    return None


def encode(answer: Answer) -> bytes:
    return json.dumps(answer).encode() + b"\n"


# --- in a worker (or the only process) ---


class WorkerAdmin:
    """The admin socket of one serving process, on its event loop."""

    def __init__(self, path: Path, group: str | None,
                 handle: Callable[[Answer], Awaitable[Answer]]) -> None:
        self.path = path
        self.group = group
        self._handle = handle
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        sock = _bind_unix(self.path, self.group)
        self._server = await asyncio.start_unix_server(self._client, sock=sock)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(OSError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            allowed, uid = _peer_allowed(sock, self.group)
            if not allowed:
                log.warning("admin: refused uid=%d", uid)
                writer.write(encode({"ok": False, "error": "permission denied"}))
                return
            line = await asyncio.wait_for(reader.readline(), 10)
            request = decode(line[:MAX_REQUEST])
            if request is None:
                answer: Answer = {"ok": False, "error": "not a request"}
            else:
                answer = await self._handle(request)
            writer.write(encode(answer))
            await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()


def ask(path: Path, request: Answer, timeout: float = 30) -> Answer:
    """Send one request to an admin socket and return its answer (blocking)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(encode(request))
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = decode_answer(data)
    if answer is None:
        raise OSError(f"{path}: no answer")
    return answer


def decode_answer(data: bytes) -> Answer | None:
    try:
        answer = json.loads(data)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


# --- in the supervisor of several workers ---


def merge(command: str, answers: list[Answer]) -> Answer:
    """One answer from every worker's."""
    if not answers:
        return {"ok": False, "error": "no worker answered"}
    failed = [a for a in answers if not a.get("ok")]
    match command:
        case "who":
            sessions = [s for a in answers for s in a.get("sessions", [])]
            return {"ok": not failed, "sessions": sessions}
        case "kick":
            return {"ok": not failed, "kicked": sum(int(a.get("kicked", 0)) for a in answers)}
        case "reload":
            notes = sorted({n for a in answers for n in a.get("restart", [])})
            errors = sorted({str(a.get("error")) for a in failed})
            out: Answer = {"ok": not failed, "workers": len(answers), "restart": notes}
            if errors:
                out["error"] = "; ".join(errors)
            return out
        case _:
            return failed[0] if failed else answers[0]


class Relay:
    """The configured socket, served by the supervisor on a thread: each request goes to
    every worker socket in `folder`; `local(request)` may answer instead (stats), and
    `after(request, answer)` sees the merged answer (the supervisor's own reload)."""

    def __init__(self, path: Path, group: str | None, folder: Path,
                 local: Callable[[Answer], Answer | None],
                 after: Callable[[Answer, Answer], None]) -> None:
        self.path = path
        self.group = group
        self.folder = folder
        self.local = local
        self.after = after
        sock = _bind_unix(path, group)
        relay = self

        class Handle(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                relay._serve(self.connection, self.rfile, self.wfile)

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self._server = Server(str(path), Handle, bind_and_activate=False)
        self._server.socket.close()
        self._server.socket = sock
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def listening(self) -> socket.socket:
        return self._server.socket

    def _serve(self, sock: socket.socket, rfile: Any, wfile: Any) -> None:
        allowed, uid = _peer_allowed(sock, self.group)
        if not allowed:
            log.warning("admin: refused uid=%d", uid)
            wfile.write(encode({"ok": False, "error": "permission denied"}))
            return
        sock.settimeout(60)
        request = decode(rfile.readline(MAX_REQUEST))
        if request is None:
            wfile.write(encode({"ok": False, "error": "not a request"}))
            return
        answer = self.local(request)
        if answer is None:
            answers = []
            for worker in sorted(self.folder.glob("*.sock")):
                try:
                    answers.append(ask(worker, request))
                except OSError as exc:
                    log.warning("admin: worker socket %s: %s", worker.name, exc)
            answer = merge(request["command"], answers)
            self.after(request, answer)
        wfile.write(encode(answer))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with contextlib.suppress(OSError):
            self.path.unlink()
