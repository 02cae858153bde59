"""What the server tells its operators: metrics, the logout summary, and the table of live
sessions that `popbox who` lists and `popbox kick` ends.

The `Observer` is the one object the session code reports to, at the points where it
already logs: a connection opened, a login's result, a penalty, a TLS handshake, a store
error, the logout. Each session gets a `SessionRecord`; the session calls its `command()`
before every command, `failed()` for every -ERR and `timed()` after a command being
timed. They do no more than plain integer arithmetic: the counts are folded into the
Prometheus counters at logout, so a 10 KB RETR costs no metric call (measured with
`bench.instructions`: one Python call per command is most of what this costs).
`popbox_command_seconds` is sampled: every session times one command in `COMMAND_SAMPLE`,
from its dispatch to its reply being queued for the client (a RETR: the whole message).
Each new session starts at the next phase of that cycle, so sessions shorter than the
cycle are sampled too, and every kind of command in proportion to how often it is used.

Kicking a session cancels its task: the session answers `-ERR [SYS/TEMP]`, releases its
maildrop lock and commits nothing (the same path as a shutdown), and its logout reason is
`kicked`. Records are looked up by the session's task, so hooks in code that has no
reference to the session (the login policy) find it with `asyncio.current_task()`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from typing import Protocol

from popbox.config import Config
from popbox.metrics import Metrics
from popbox.proto import events as ev
from popbox.server.logfmt import quote
from popbox.store.base import Failure

log = logging.getLogger("popbox")

COMMAND_SAMPLE = 16

NAMES: dict[type, str] = {
    ev.User: "USER", ev.Pass: "PASS", ev.Apop: "APOP", ev.Auth: "AUTH",
    ev.SaslResponse: "AUTH-RESPONSE", ev.SaslCancel: "AUTH-CANCEL", ev.Stat: "STAT",
    ev.List: "LIST", ev.Uidl: "UIDL", ev.Retr: "RETR", ev.Top: "TOP", ev.Dele: "DELE",
    ev.Noop: "NOOP", ev.Rset: "RSET", ev.Quit: "QUIT", ev.Capa: "CAPA", ev.Stls: "STLS",
    ev.Utf8: "UTF8", ev.Invalid: "invalid",
}

# Login results as metric labels: the reasons the login policy logs, a bounded set.
LOGIN_RESULTS = frozenset({
    "ok", "rejected", "temporary", "in-use", "permanent", "login-delay", "userdb-missing",
    "userdb-temporary", "authzid-not-allowed", "disabled",
    "user-ip-limit",
})

class Observed(Protocol):
    """What the observer reads from a live session."""

    @property
    def bytes_sent(self) -> int: ...


class SessionRecord:
    __slots__ = ("_kind", "_observer", "_session", "_started", "commands", "countdown",
                 "errors", "kicked", "listener", "mechanism", "peer", "since", "task", "timing",
                 "tls", "tls_pending", "user")

    def __init__(self, observer: Observer, session: Observed, peer: str, listener: str,
                 task: asyncio.Task[object] | None, countdown: int = COMMAND_SAMPLE) -> None:
        self._observer = observer
        self.countdown = countdown  # commands until the next one timed
        self._session = session
        self.peer = peer
        self.listener = listener
        self.task = task
        self.since = time.time()
        self._started = time.monotonic()
        self.user: str | None = None
        self.mechanism = ""
        self.tls = ""  # the TLS version, once there is TLS
        self.tls_pending = False
        self.kicked = False
        self.commands: dict[type, int] = {}
        self.errors: dict[type, int] = {}
        self._kind: type = ev.Noop
        self.timing = 0.0  # when the command being timed started (perf_counter), or 0

    # --- per command: one call, plain arithmetic ---

    def command(self, event: ev.Event) -> None:
        """A command is about to be handled (the session then calls `timed()` when
        `timing` is set, `failed()` for each -ERR)."""
        kind = self._kind = event.__class__
        commands = self.commands
        commands[kind] = commands.get(kind, 0) + 1
        self.countdown -= 1
        if not self.countdown:
            self.countdown = COMMAND_SAMPLE
            self.timing = time.perf_counter()

    def failed(self) -> None:
        errors = self.errors
        errors[self._kind] = errors.get(self._kind, 0) + 1

    def timed(self) -> None:
        self._observer.timed(self._kind, time.perf_counter() - self.timing)
        self.timing = 0.0

    # --- for who ---

    @property
    def bytes_sent(self) -> int:
        return self._session.bytes_sent

    def describe(self) -> dict[str, object]:
        return {
            "user": self.user or "", "ip": self.peer, "since": round(self.since, 3),
            "state": "transaction" if self.user else "authorization", "tls": self.tls,
            "mechanism": self.mechanism, "bytes": self.bytes_sent, "listener": self.listener,
            "worker": os.getpid(),
        }


class Observer:
    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.sessions: dict[asyncio.Task[object] | None, SessionRecord] = {}
        self._phase = 0  # where in the sampling cycle the next session starts

    def _current(self) -> SessionRecord | None:
        return self.sessions.get(asyncio.current_task())

    # --- hooks ---

    def connected(self, session: Observed, peer: str, transport: object,
                  ssl_object: ssl.SSLObject | None) -> SessionRecord:
        task = asyncio.current_task()
        name = getattr(transport, "get_extra_info", lambda _: None)("sockname")
        listener = f"{name[0]}:{name[1]}" if isinstance(name, tuple) else "local"
        # Without metrics nothing is timed: the countdown does not run out.
        countdown = 1 << 62
        if self.metrics is not None:
            self._phase = self._phase % COMMAND_SAMPLE + 1
            countdown = self._phase
        record = SessionRecord(self, session, peer, listener, task, countdown)
        self.sessions[task] = record
        if ssl_object is not None:
            record.tls = ssl_object.version() or "unknown"
        metrics = self.metrics
        if metrics is not None:
            metrics.connections.labels(listener, "yes" if record.tls else "no").inc()
            metrics.sessions.labels("authorization").inc()
            if record.tls:
                metrics.tls_handshakes.labels(record.tls, "ok").inc()
        return record

    def login(self, user: str, mechanism: str, result: str) -> None:
        """A login attempt's outcome: "ok", or the reason it failed."""
        record = self._current()
        if result == "ok" and record is not None:
            record.user = user
            record.mechanism = mechanism
        metrics = self.metrics
        if metrics is not None:
            label = result if result in LOGIN_RESULTS else "failed"
            metrics.logins.labels(mechanism or "-", label).inc()
            if result == "ok" and record is not None:
                metrics.sessions.labels("authorization").dec()
                metrics.sessions.labels("transaction").inc()

    def penalty(self, delay: float) -> None:
        if self.metrics is not None:
            self.metrics.penalty.observe(delay)

    def starttls(self, ssl_object: ssl.SSLObject | None) -> None:
        """STLS: called before the handshake with None, after it with the TLS object."""
        record = self._current()
        if record is None:
            return
        if ssl_object is None:
            record.tls_pending = True
            return
        record.tls_pending = False
        record.tls = ssl_object.version() or "unknown"
        if self.metrics is not None:
            self.metrics.tls_handshakes.labels(record.tls, "ok").inc()

    def tls_failed(self, peer: str, reason: str) -> None:
        """An implicit-TLS handshake failed: no session was started."""
        log.info("tls handshake failed ip=%s reason=%s", peer, quote(reason))
        if self.metrics is not None:
            self.metrics.tls_handshakes.labels("unknown", "failed").inc()

    def store_error(self, failure: Failure) -> None:
        if self.metrics is None:
            return
        if failure is Failure.IN_USE:
            self.metrics.in_use.inc()
        else:
            self.metrics.store_errors.labels(failure.value).inc()

    def timed(self, kind: type, seconds: float) -> None:
        name = NAMES.get(kind)
        if self.metrics is not None and name is not None:
            self.metrics.command_seconds.labels(name).observe(seconds)

    def logout(self, record: SessionRecord, reason: str, *, retr: int, dele: int,
               octets: int) -> None:
        """The session is over: log its summary, fold its counts into the metrics."""
        self.sessions.pop(record.task, None)
        if record.kicked:
            reason = "kicked"
        top = record.commands.get(ev.Top, 0) - record.errors.get(ev.Top, 0)
        if record.user is not None:
            values = {
                "user": quote(record.user), "ip": record.peer, "reason": reason,
                "top": str(top), "retr": str(retr), "dele": str(dele), "bytes": str(octets),
                "duration": f"{time.monotonic() - record._started:.3f}",
                "mech": record.mechanism or "-", "tls": record.tls or "no",
                "commands": str(sum(record.commands.values())),
            }
            fields = " ".join(f"{key}={values[key]}" for key in self.config.log.logout_fields)
            log.info("logout %s", fields)
        else:
            log.info("disconnect ip=%s reason=%s", record.peer, reason)
        metrics = self.metrics
        if metrics is None:
            return
        metrics.sessions.labels("transaction" if record.user else "authorization").dec()
        if record.tls_pending:
            metrics.tls_handshakes.labels("unknown", "failed").inc()
        errors = record.errors
        for kind, count in record.commands.items():
            name = NAMES.get(kind)
            if name is None:
                continue
            failed = errors.get(kind, 0)
            if count > failed:
                metrics.commands.labels(name, "ok").inc(count - failed)
            if failed:
                metrics.commands.labels(name, "err").inc(failed)
        if octets:
            metrics.retr_bytes.inc(octets)
        if retr:
            metrics.retr_messages.inc(retr)
        if dele:
            metrics.deleted.inc(dele)

    # --- for the admin socket ---

    def who(self, user: str | None = None) -> list[dict[str, object]]:
        return [
            record.describe() for record in list(self.sessions.values())
            if user is None or record.user == user
        ]

    def kick(self, user: str | None = None, ip: str | None = None) -> int:
        """End the matching sessions without UPDATE; how many."""
        count = 0
        for record in list(self.sessions.values()):
            if (user is not None and record.user != user) or (ip is not None and record.peer != ip):
                continue
            if record.task is None or record.kicked:
                continue
            record.kicked = True
            record.task.cancel()
            count += 1
        return count
