"""`server.workers = N`: N processes serving the same listening ports, so every core works.

The supervisor resolves any port 0 first (a bound, never listening SO_REUSEPORT socket
holds the number), then forks the workers; each binds its own SO_REUSEPORT sockets, so the
kernel spreads new connections across them. Maildrop locks work across processes, so a
user still gets one session at a time. SIGTERM/SIGINT are passed on to every worker,
which shut down gracefully, and so is SIGUSR1 (reopen the log file); a worker that dies
on its own is started again (at most once a second), so one crash does not take the
service down.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence

from popbox import logs, sdnotify
from popbox.config import Config, parse_address

log = logging.getLogger("popbox")


def _format(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def resolve_ports(config: Config) -> tuple[Config, list[socket.socket]]:
    """Replace port 0 by a real port number, reserved by a socket the caller keeps open."""
    reserved: list[socket.socket] = []

    def fix(items: list[str]) -> list[str]:
        out = []
        for item in items:
            host, port = parse_address(item)
            if port == 0:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0))
                port = sock.getsockname()[1]
                reserved.append(sock)
            out.append(_format(host, port))
        return out

    server = config.server.model_copy(update={"listen": fix(config.server.listen)})
    tls = config.tls.model_copy(update={"implicit": fix(config.tls.implicit)})
    return config.model_copy(update={"server": server, "tls": tls}), reserved


Notify = Callable[[], None]


def _watchdog(healthy: Callable[[], bool]) -> None:
    """systemd's watchdog: ping from a thread while `healthy()` (every worker is running)."""
    interval = sdnotify.watchdog_interval()
    if interval is None:
        return

    def run() -> None:
        while True:
            if healthy():
                sdnotify.notify("WATCHDOG=1")
            time.sleep(interval)

    threading.Thread(target=run, name="watchdog", daemon=True).start()


def supervise(
    config: Config,
    run_worker: Callable[[Config, Notify], int],
    ready: Callable[[Config], None],
    *,
    not_inherited: Sequence[socket.socket] = (),
    exited: Callable[[int], None] | None = None,
) -> int:
    """Run `config.server.workers` copies of `run_worker(config, notify)`; call
    `ready(config)` once every worker has called `notify()` (it is listening); return when
    all have exited after SIGTERM/SIGINT. Workers close the sockets of `not_inherited`
    (the supervisor's own); `exited(pid)` is called for every worker that is gone."""
    config, reserved = resolve_ports(config)
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False
    ready_r, ready_w = os.pipe()

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            for sock in (*reserved, *not_inherited):
                sock.close()
            if ready_r >= 0:  # closed already when a worker is started again
                os.close(ready_r)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGUSR1, lambda _signum, _frame: logs.reopen())
            code = 1

            def notify() -> None:
                if ready_w >= 0:
                    os.write(ready_w, b".")
                    os.close(ready_w)

            try:
                code = run_worker(config, notify)
            finally:
                os._exit(code)
        children[pid] = index

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        if not stopping:
            sdnotify.notify("STOPPING=1")
        stopping = True
        for pid in children:
            os.kill(pid, signal.SIGTERM)

    def reopen(signum: int, _frame: object) -> None:
        logs.reopen()
        for pid in children:
            os.kill(pid, signal.SIGUSR1)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, reopen)
    for index in range(config.server.workers):
        spawn(index)
    os.close(ready_w)
    ready_w = -1  # workers started later (restarts) need not report
    started = 0
    while started < config.server.workers:
        got = os.read(ready_r, config.server.workers)
        if not got:  # every worker is gone before all were ready
            break
        started += len(got)
    os.close(ready_r)
    ready_r = -1
    if started == config.server.workers:
        ready(config)
        _watchdog(lambda: not stopping and len(children) == config.server.workers)
    status = 0
    last_restart = 0.0
    while children:
        pid, wait_status = os.wait()
        if pid not in children:
            continue
        index = children.pop(pid)
        if exited is not None:
            exited(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if stopping:
            status = status or (code if code > 0 else 0)
            continue
        if code == 2:  # a configuration or privilege problem: restarting cannot help
            stop(signal.SIGTERM, None)
            status = 2
            continue
        log.error("worker %d (pid %d) exited with %d; starting it again", index, pid, code)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - last_restart)))
        last_restart = time.monotonic()
        spawn(index)
    for sock in reserved:
        sock.close()
    return status
