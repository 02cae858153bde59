"""`popbox lmtp --config X` (the LMTP server) and `popbox deliver --config X RECIPIENT`
(one message from standard input, for an MTA's mailbox_command or pipe transport).

`lmtp` binds `lmtp.listen`, drops root like `serve` (server.user, server.group; Unix
sockets are handed to that user first), prints one "listening on" line per address, and
runs until SIGTERM/SIGINT (then running deliveries get `limits.shutdown_grace` seconds).
It is a process of its own, next to `popbox serve`: both use the same configuration file
and so the same userdb and store. Both `lmtp` and `deliver`, started as root, first fork
the mail host of popbox.mailproc, so that the mail of a user with a uid of their
own is written by a mail process with that uid, gid and groups, never by root or by
server.user; virtual users' mail is written by the process itself.

`deliver` started as root forks the mail host, opens the configuration's backends, then
becomes server.user (server.group) like `lmtp`, so a virtual user's mail is never written
as root (without server.user it refuses, exit 75, unless server.allow_root). Started as
a user (an MDA that Postfix local(8) runs as the recipient, from ~/.forward or
mailbox_command), it writes the mail of that user itself, and refuses that of any other
user with a uid of their own (exit 75, nothing written).

`deliver` exits per sysexits.h, as MTAs expect of a delivery agent: 0 stored; 67
EX_NOUSER no such user; 75 EX_TEMPFAIL try again later (the store or userdb is down,
the mailbox is full, the configuration cannot be read, or the user's mail may not be
written from here: a uid below auth.first_valid_uid, another uid without root, root
without server.user); 73
EX_CANTCREAT the store refuses this mailbox, or the message is over
`lmtp.max_message_size`; 64 EX_USAGE bad command line.
"""

from __future__ import annotations

import argparse
import asyncio
import grp
import logging
import os
import pwd
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from popbox import privileges
from popbox.cli.common import DEFAULT_CONFIG, opened, setup_logging, use_uvloop
from popbox.config import Config, ConfigError, load
from popbox.lmtp.agent import Agent, Outcome, trace_headers
from popbox.mailproc import MailAccess, MailHost

EX_OK, EX_USAGE, EX_NOUSER, EX_CANTCREAT, EX_TEMPFAIL = 0, 64, 67, 73, 75
log = logging.getLogger("popbox")

if TYPE_CHECKING:
    from popbox.backends import Backends


def _agent(config: Config, backends: Backends, mail: MailAccess) -> Agent:
    return Agent(backends.userdb, mail, recipient_delimiter=config.lmtp.recipient_delimiter,
                 strip_domain=config.lmtp.strip_domain, cache_ttl=config.lmtp.recipient_cache)


def _start_host(config: Config) -> MailHost | None:
    """Started as root: the mail host, forked now, before any thread or event loop."""
    from popbox.backends import file_store

    return MailHost.start(config, lambda: file_store(config)) if os.geteuid() == 0 else None


def _stop_host(host: MailHost | None) -> None:
    if host is not None:
        host.close()  # it, and any mail process left, see the socket close and exit
        os.waitpid(host.pid, 0)


def _hand_over(paths: list[str], config: Config) -> None:
    """Give the Unix sockets to the user popbox is about to become."""
    user = config.server.user
    if os.geteuid() != 0 or user is None:
        return
    entry = pwd.getpwnam(user)
    gid = grp.getgrnam(config.server.group).gr_gid if config.server.group else entry.pw_gid
    for path in paths:
        os.chown(path, entry.pw_uid, gid)


async def _serve_lmtp(config: Config, host: MailHost | None) -> None:
    from popbox import sdnotify
    from popbox.lmtp.server import LmtpServer

    delivered = None
    metrics_server = None
    if config.lmtp.metrics_listen is not None:
        from popbox.metrics import Metrics, MetricsServer

        metrics = Metrics()
        metrics_server = MetricsServer(config.lmtp.metrics_listen, metrics.registry)
        deliveries = metrics.lmtp_deliveries

        def delivered(status: str) -> None:
            deliveries.labels(status).inc()

    try:
        async with opened(config) as backends:
            mail = MailAccess(config, backends.store, host)
            server = LmtpServer(config.lmtp, config.lmtp.hostname or config.server.hostname,
                                _agent(config, backends, mail), delivered)
            bound = await server.start()
            _hand_over([b for b in bound if b.startswith("/")], config)
            privileges.drop(config.server.user, config.server.group, config.server.allow_root)
            for address in bound:
                print(f"popbox lmtp: listening on {address}", flush=True)
            if metrics_server is not None:
                print(f"popbox lmtp: metrics on port {metrics_server.port}", flush=True)
            sdnotify.notify("READY=1", f"MAINPID={os.getpid()}")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            try:
                await stop.wait()
                sdnotify.notify("STOPPING=1")
            finally:
                await server.shutdown(config.limits.shutdown_grace)
                mail.close()
    finally:
        if metrics_server is not None:
            metrics_server.close()


def _lmtp(args: argparse.Namespace) -> int:
    config = load(args.config)
    if not config.lmtp.listen:
        print("popbox: lmtp.listen is empty: nothing to listen on", file=sys.stderr)
        return 2
    setup_logging(config.log)
    host = _start_host(config)
    use_uvloop()
    try:
        asyncio.run(_serve_lmtp(config, host))
    except privileges.PrivilegeError as exc:
        print(f"popbox: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"popbox: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        _stop_host(host)
    return 0


async def _deliver_one(config: Config, host: MailHost | None, recipient: str,
                       sender: str | None, message: bytes) -> int:
    async with opened(config) as backends:
        if os.geteuid() == 0:
            # As `lmtp` does: the mail of virtual users (no uid of their own) is written
            # as server.user, never as root; users with a uid go to the mail host's
            # mail processes, forked before this.
            try:
                privileges.drop(config.server.user, config.server.group,
                                config.server.allow_root)
            except privileges.PrivilegeError as exc:
                print(f"popbox: {exc}", file=sys.stderr)
                return EX_TEMPFAIL
        mail = MailAccess(config, backends.store, host)
        try:
            agent = _agent(config, backends, mail)
            user = await agent.resolve(recipient)
            if isinstance(user, Outcome):
                return EX_NOUSER if user is Outcome.NO_SUCH_USER else EX_TEMPFAIL
            data = (trace_headers(sender, recipient) if sender is not None else b"") + message
            outcome = await agent.deliver(user, data)
        finally:
            mail.close()
    return {Outcome.DELIVERED: EX_OK, Outcome.PERMANENT: EX_CANTCREAT}.get(outcome, EX_TEMPFAIL)


def _deliver(args: argparse.Namespace) -> int:
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"popbox: configuration error:\n{exc}", file=sys.stderr)
        return EX_TEMPFAIL
    setup_logging(config.log)
    limit = config.lmtp.max_message_size
    message = sys.stdin.buffer.read(limit + 1)
    if len(message) > limit:
        print(f"popbox: message over {limit} octets", file=sys.stderr)
        return EX_CANTCREAT
    host = _start_host(config)
    try:
        status = asyncio.run(_deliver_one(config, host, args.recipient, args.sender, message))
    finally:
        _stop_host(host)
    if status != EX_OK:
        print(f"popbox: {args.recipient}: not delivered (exit {status})", file=sys.stderr)
    return status


def _usage_error(message: str) -> NoReturn:
    print(f"popbox deliver: {message}", file=sys.stderr)
    sys.exit(EX_USAGE)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `lmtp` and `deliver` to the `popbox` command's subparsers."""
    lmtp = sub.add_parser("lmtp", help="run the LMTP server (mail in)")
    lmtp.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    lmtp.set_defaults(func=_lmtp)

    deliver = sub.add_parser("deliver", help="deliver one message from standard input")
    deliver.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    deliver.add_argument("-f", "--from", dest="sender", metavar="SENDER",
                         help="envelope sender (adds Return-Path:)")
    deliver.add_argument("recipient", metavar="RECIPIENT")
    setattr(deliver, "error", _usage_error)  # noqa: B010 - EX_USAGE, not argparse's 2
    deliver.set_defaults(func=_deliver)
