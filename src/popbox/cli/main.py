"""The `popbox` command: `serve` (the POP3 server, here), `check-config` and `demo`, and
the subcommands other modules add: `user` and `pw` (popbox.cli.user), `db`
(popbox.cli.db), `fetch` (popbox.cli.fetch), `lmtp` and `deliver` (popbox.cli.lmtp),
`import` (popbox.cli.importer), `migrate` and `uidl` (popbox.cli.migrate), `probe`
(popbox.cli.probe), `expire` and `undelete` (popbox.cli.expire), `last`
(popbox.cli.last), `who`, `kick`, `reload` and `stats` (popbox.cli.admin)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import resource
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from popbox import __version__
from popbox.cli.common import DEFAULT_CONFIG, setup_logging, use_uvloop
from popbox.config import Config, ConfigError, load
from popbox.server.admin import AdminError


def run_server(config: Config, announce: bool = False, config_path: Path | None = None) -> int:
    if config.server.workers > 1:
        from popbox.server import userip
        from popbox.server.workers import supervise

        setup_logging(config.log)
        userip.shared_fd()  # inherited by every worker: one count of sessions per user+ip

        def report(resolved: Config) -> None:
            from popbox import sdnotify

            sdnotify.notify("READY=1", f"MAINPID={os.getpid()}")
            if announce:
                for host, port in resolved.addresses:
                    print(f"popbox: listening on {host or '0.0.0.0'}:{port}", flush=True)
                for host, port in resolved.tls_addresses:
                    print(f"popbox: listening on {host or '0.0.0.0'}:{port} (TLS)", flush=True)
                if metrics_port:
                    print(f"popbox: metrics on port {metrics_port}", flush=True)

        metrics_port = 0

        def worker(cfg: Config, notify: Callable[[], None]) -> int:
            return _run_one(cfg, False, notify, config_path)

        if config.metrics.listen is None and config.admin.socket is None:
            return supervise(config, worker, report)
        try:
            with contextlib.ExitStack() as stack:
                inherited, exited = _supervisor_services(config, config_path, stack)
                metrics_port = inherited[0][1] if inherited and inherited[0][1] else 0
                own = [sock for sock, _ in inherited]
                return supervise(config, worker, report, not_inherited=own, exited=exited)
        except (OSError, AdminError) as exc:
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            print(f"popbox: {text}", file=sys.stderr)
            return 2 if isinstance(exc, AdminError) else 1
    return _run_one(config, announce, config_path=config_path)


def _supervisor_services(
    config: Config, config_path: Path | None, stack: contextlib.ExitStack
) -> tuple[list[tuple[socket.socket, int]], Callable[[int], None]]:
    """What the supervisor of several workers serves itself: /metrics (the sum of every
    worker's) and the admin socket (passed on to every worker's). Returns the sockets the
    workers must not inherit (the metrics one first, with its port) and what to do when a
    worker exits."""
    from popbox import logs, metrics, sdnotify
    from popbox.server import admin

    stack.enter_context(metrics.multiprocess_directory())  # before prometheus-client loads
    sockets: list[tuple[socket.socket, int]] = []
    if config.metrics.listen is not None:
        server = metrics.MetricsServer(config.metrics.listen, metrics.scrape_registry())
        stack.callback(server.close)
        sockets.append((server.socket, server.port))
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="popbox-admin-")))
    os.environ[admin.WORKER_DIR_ENV] = str(folder)
    stack.callback(os.environ.pop, admin.WORKER_DIR_ENV, None)

    def local(request: admin.Answer) -> admin.Answer | None:
        if request.get("command") == "reload":
            sdnotify.reloading()
        if request.get("command") != "stats":
            return None
        from prometheus_client import generate_latest

        registry = metrics.scrape_registry()
        return {"ok": True, "text": generate_latest(registry).decode()}  # type: ignore[arg-type]

    def after(request: admin.Answer, answer: admin.Answer) -> None:
        """The workers took a reload: the supervisor's own log lines follow it."""
        if request.get("command") != "reload":
            return
        if answer.get("ok") and config_path:
            (folder / admin.RELOADED).touch()
            with contextlib.suppress(ConfigError, OSError):
                logs.setup(load(config_path).log)
        sdnotify.notify("READY=1")
    if config.admin.socket is not None:
        relay = admin.Relay(config.admin.socket, config.admin.group, folder, local, after)
        stack.callback(relay.close)
        sockets.append((relay.listening, 0))

    def exited(pid: int) -> None:
        metrics.worker_gone(pid)
        (folder / f"{pid}.sock").unlink(missing_ok=True)

    return sockets, exited


def _run_one(
    config: Config, announce: bool, notify: Callable[[], None] | None = None,
    config_path: Path | None = None,
) -> int:
    from popbox import logs, metrics, privileges, sdnotify
    from popbox.backends import build, file_store
    from popbox.mailproc import MailHost
    from popbox.server.context import ServerContext
    from popbox.server.listener import Address, serve

    if not logs.configured():
        setup_logging(config.log)
    # Started as root: a privileged host that starts the per-uid mail processes, forked
    # now, before there is any thread, event loop or client.
    host = MailHost.start(config, lambda: file_store(config)) if os.geteuid() == 0 else None
    use_uvloop()
    ctx = ServerContext.create(config, build(config), mail_host=host)
    ctx.config_path = config_path
    metrics_server = None
    if ctx.observe.metrics is not None and config.metrics.listen and not metrics.multiprocess():
        try:
            metrics_server = metrics.MetricsServer(
                config.metrics.listen, ctx.observe.metrics.registry)
        except OSError as exc:
            print(f"popbox: cannot serve metrics: {exc.strerror or exc}", file=sys.stderr)
            if host is not None:
                host.close()
            return 1
    if config.auth.cleartext == "always":
        logging.getLogger("popbox").warning(
            "auth.cleartext = \"always\": passwords may cross the network unencrypted")

    def ready(plain: list[Address], implicit: list[Address]) -> None:
        server = config.server
        privileges.drop(server.user, server.group, server.allow_root)
        if notify is not None:
            notify()
        else:  # the only process: it is what systemd waits for and watches
            sdnotify.notify("READY=1", f"MAINPID={os.getpid()}")
            interval = sdnotify.watchdog_interval()
            if interval is not None:
                loop = asyncio.get_running_loop()

                def ping() -> None:
                    sdnotify.notify("WATCHDOG=1")
                    loop.call_later(interval, ping)

                ping()
        if announce:
            for host, port in plain:
                print(f"popbox: listening on {host}:{port}", flush=True)
            for host, port in implicit:
                print(f"popbox: listening on {host}:{port} (TLS)", flush=True)
            if metrics_server is not None:
                print(f"popbox: metrics on port {metrics_server.port}", flush=True)

    # Every session holds a socket, and a logged-in one a maildrop lock: allow as many
    # descriptors as the hard limit lets us (the soft limit is often 1024).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Long-lived objects made at start-up are never garbage; and a login to a big maildrop
    # makes hundreds of thousands of short-lived ones: collect young objects less often
    # (measured: the default thresholds cost a third of such a login).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    _reuse_big_buffers()
    try:
        asyncio.run(serve(ctx, ready))
    except (privileges.PrivilegeError, AdminError) as exc:
        print(f"popbox: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"popbox: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        if host is not None:
            host.close()  # the host and its mail processes see the end and exit
        if metrics_server is not None:
            metrics_server.close()
    return 0


def _reuse_big_buffers() -> None:
    """Let glibc's malloc reuse freed message buffers instead of mapping fresh pages.

    A RETR makes buffers of up to a few hundred KB (a chunk, its CRLF and stuffed copy).
    By default glibc maps each one afresh and unmaps it when freed; touching fresh pages
    costs a page fault per 4 KB. Measured here: copying 1 MB took 1.2 ms that way and
    0.04 ms with the buffers taken from the heap. The heap keeps at most 64 MB of freed
    memory before it is given back.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc; other C libraries: nothing to do
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 8 * 1024 * 1024)
    mallopt(m_trim_threshold, 64 * 1024 * 1024)


def _serve(args: argparse.Namespace) -> int:
    return run_server(load(args.config), announce=True, config_path=args.config)


def _check_config(args: argparse.Namespace) -> int:
    from popbox.auth.passwd_file import PasswdFile
    from popbox.cli import db

    config = load(args.config)
    problems = []
    if config.auth.backend == "passwd-file":
        problems += PasswdFile(config.auth.passwd_file, config.auth.mail_location).check()
    if "postgres" in (config.auth.backend, config.store.backend):
        problems += db.check(config)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 2
    print(f"{args.config}: OK")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from popbox.cli.demo import prepare

    config = prepare(args.dir.resolve(), args.port, args.tls_port)
    url, tls_url = f"pop3://127.0.0.1:{args.port}", f"pop3s://127.0.0.1:{args.tls_port}"
    print(f"""
popbox demo: user "demo", password "demo", maildir {args.dir / "mail" / "demo" / "Maildir"}
  list:        curl --user demo:demo {url}/
  fetch:       curl --user demo:demo {url}/1
  over TLS:    curl --insecure --user demo:demo {tls_url}/1   (self-signed certificate)
  with STLS:   curl --insecure --ssl-reqd --user demo:demo {url}/1
  delete:      curl --user demo:demo --request DELE --list-only {url}/1
Stop with Ctrl-C.
""", flush=True)
    return run_server(config, announce=True)


def build_parser() -> argparse.ArgumentParser:
    from popbox.cli.user import add_commands

    parser = argparse.ArgumentParser(prog="popbox", description="POP3 server and tools")
    parser.add_argument("--version", action="version", version=f"popbox {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the POP3 server")
    serve.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    serve.set_defaults(func=_serve)

    check = sub.add_parser("check-config", help="validate the configuration and users file")
    check.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    check.set_defaults(func=_check_config)

    demo = sub.add_parser("demo", help="serve a demo maildrop on 127.0.0.1")
    demo.add_argument("--dir", type=Path, default=Path("demo"))
    demo.add_argument("--port", type=int, default=1110)
    demo.add_argument("--tls-port", type=int, default=1995)
    demo.set_defaults(func=_demo)

    add_commands(sub)
    from popbox.cli import admin, db, expire, fetch, importer, last, lmtp, migrate, probe

    admin.add_commands(sub)  # who, kick, reload, stats
    db.add_commands(sub)
    expire.add_commands(sub)
    last.add_commands(sub)
    fetch.add_commands(sub)
    lmtp.add_commands(sub)
    importer.add_commands(sub)
    migrate.add_commands(sub)  # migrate dovecot, uidl audit
    probe.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"popbox: configuration error:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result
