"""Prometheus metrics (prometheus-client), served over HTTP at `[metrics] listen`.

One `Metrics` object per process holds every metric in its own registry. Sessions do not
touch it per command: a session counts its commands, RETR octets and deletions in plain
integers and folds them in at logout (`server.observe`); the only per-event calls are the
rare ones (connect, login, penalty, TLS handshake, store error, logout).

With `server.workers > 1` the workers are separate processes, so a counter in one is
invisible to the others. prometheus-client's multiprocess mode solves exactly this: each
process writes its values to memory-mapped files in one directory, and a scrape adds them
up. The supervisor makes a fresh directory per run (removed when it exits), names it in
`PROMETHEUS_MULTIPROC_DIR` before prometheus-client is imported, serves `/metrics` itself
from a `MultiProcessCollector`, and marks a dead worker's live gauges gone. With one
worker the process serves its own registry. Either way the HTTP server is
prometheus-client's, on a thread of its own, so a scrape never waits for the event loop.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from wsgiref.simple_server import WSGIServer

from popbox import __version__
from popbox.config import parse_address

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds: POP3 commands take from microseconds (NOOP) to seconds (RETR of a big message).
COMMAND_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PENALTY_BUCKETS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)


def multiprocess() -> bool:
    return MULTIPROC_ENV in os.environ


class Metrics:
    """Every popbox metric (names and labels as documented in the README)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Counter(
            "popbox_connections", "Accepted connections", ["listener", "tls"], registry=r)
        self.sessions = Gauge(
            "popbox_sessions", "Sessions now open, by POP3 state", ["state"], registry=r,
            multiprocess_mode="livesum")
        self.logins = Counter(
            "popbox_logins", "Login attempts by mechanism and result", ["mechanism", "result"],
            registry=r)
        self.penalty = Histogram(
            "popbox_login_penalty_seconds", "Delays imposed on failed logins",
            buckets=PENALTY_BUCKETS, registry=r)
        self.commands = Counter(
            "popbox_commands", "POP3 commands by result (ok: +OK or data, err: -ERR)",
            ["command", "result"], registry=r)
        self.command_seconds = Histogram(
            "popbox_command_seconds", "Time from a command to its reply being queued "
            "(one command in COMMAND_SAMPLE is timed)", ["command"], buckets=COMMAND_BUCKETS,
            registry=r)
        self.retr_bytes = Counter(
            "popbox_retr_bytes", "Octets of message data sent by RETR and TOP", registry=r)
        self.retr_messages = Counter(
            "popbox_retr_messages", "Messages retrieved with RETR", registry=r)
        self.deleted = Counter(
            "popbox_deleted_messages", "Messages deleted at QUIT", registry=r)
        self.in_use = Counter(
            "popbox_maildrop_in_use", "Logins refused because the maildrop was locked",
            registry=r)
        self.store_errors = Counter(
            "popbox_store_errors", "Store operations that failed, by kind", ["kind"],
            registry=r)
        self.tls_handshakes = Counter(
            "popbox_tls_handshakes", "TLS handshakes (implicit TLS and STLS)",
            ["version", "result"], registry=r)
        self.lmtp_deliveries = Counter(
            "popbox_lmtp_deliveries", "LMTP deliveries by result", ["result"], registry=r)
        if not multiprocess():  # an Info is not supported across processes
            Info("popbox_build", "popbox version", registry=r).info({"version": __version__})
        else:
            Gauge("popbox_build_info", "popbox version", ["version"], registry=r,
                  multiprocess_mode="max").labels(__version__).set(1)


def scrape_registry() -> object:
    """The registry a supervisor serves: the sum over every worker's files."""
    from prometheus_client import CollectorRegistry
    from prometheus_client import multiprocess as mp

    registry = CollectorRegistry()
    mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


class MetricsServer:
    """`/metrics` over HTTP on a thread; `close()` stops it."""

    def __init__(self, listen: str, registry: object) -> None:
        from prometheus_client import start_http_server

        host, port = parse_address(listen)
        self._server: WSGIServer
        self._server, self._thread = start_http_server(
            port, host or "0.0.0.0", registry=registry,  # type: ignore[arg-type]
        )
        self.port: int = self._server.server_port

    @property
    def socket(self) -> socket.socket:
        return self._server.socket

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@contextmanager
def multiprocess_directory() -> Iterator[str]:
    """A fresh directory for this run's worker files, named in the environment."""
    path = tempfile.mkdtemp(prefix="popbox-metrics-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def worker_gone(pid: int) -> None:
    """A worker exited: its live gauges (open sessions) no longer count."""
    from prometheus_client import multiprocess as mp

    mp.mark_process_dead(pid)  # type: ignore[no-untyped-call]

