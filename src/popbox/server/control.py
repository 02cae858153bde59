"""What the admin socket's commands do in a serving process: who, kick, reload, stats.

`reload` reads the configuration file again and applies, at once and for new logins,
everything that can change while sessions go on: listeners, limits and penalties, the users file
(read again now), TLS certificates (into the running TLS contexts, so the listeners keep
their sockets), SASL mechanisms, the cleartext policy, proxy networks, greeting and
logging. It checks everything first (the file, the users file, the certificates, the log
target) and applies nothing if one is wrong, answering why; the old configuration keeps
serving. Listeners are added and removed (the new ones bound first, all or none; sessions
on a removed one go on). What cannot change without a restart (workers, the privilege
user, backends, the database, metrics and admin sockets, turning TLS on or off, adding or
removing TLS names) is named in the answer and keeps its old value.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from popbox import logs, sdnotify
from popbox.auth.passwd_file import PasswdFile
from popbox.backends import Backends, users_file
from popbox.config import Config, ConfigError, load, parse_address
from popbox.server.admin import WORKER_DIR_ENV
from popbox.server.context import ServerContext
from popbox.server.tls import TlsContexts

log = logging.getLogger("popbox")

Answer = dict[str, Any]

# (section, key) pairs only a restart applies; None: the whole section.
RESTART: tuple[tuple[str, str | None], ...] = (
    ("server", "workers"), ("server", "user"), ("server", "group"),
    ("server", "allow_root"), ("auth", "backend"), ("store", None),
    ("postgres", None), ("oauth", None), ("lmtp", None), ("metrics", None), ("admin", None),
)


def _same_addresses(running: list[str], configured: list[str]) -> bool:
    """Port 0 in the file stands for the port the running server was given for it."""
    if len(running) != len(configured):
        return False
    for have, want in zip(running, configured, strict=True):
        (host, port), (want_host, want_port) = parse_address(have), parse_address(want)
        if host != want_host or (want_port != 0 and port != want_port):
            return False
    return True


def restart_needed(old: Config, new: Config) -> list[str]:
    changed = []
    for section, key in RESTART:
        before, after = getattr(old, section), getattr(new, section)
        if key is None:
            if before != after:
                changed.append(section)
        elif key in ("listen", "implicit"):
            if not _same_addresses(getattr(before, key), getattr(after, key)):
                changed.append(f"{section}.{key}")
        elif getattr(before, key) != getattr(after, key):
            changed.append(f"{section}.{key}")
    if old.tls.enabled != new.tls.enabled or (
        old.tls.enabled and {d.lower() for d in old.tls.sni} != {d.lower() for d in new.tls.sni}
    ):
        changed.append("tls (enabling it, or its SNI names)")
    return changed


async def handle(ctx: ServerContext, request: Answer) -> Answer:
    match request.get("command"):
        case "who":
            user = request.get("user")
            sessions = ctx.observe.who(user if isinstance(user, str) else None)
            return {"ok": True, "sessions": sessions}
        case "kick":
            user, ip = request.get("user"), request.get("ip")
            if not isinstance(user, str | None) or not isinstance(ip, str | None) or (
                user is None and ip is None
            ):
                return {"ok": False, "error": "kick needs a user or an address"}
            kicked = ctx.observe.kick(user, ip)
            log.info("admin kick user=%s ip=%s sessions=%d", user or "-", ip or "-", kicked)
            return {"ok": True, "kicked": kicked}
        case "reload":
            return await reload(ctx)
        case "stats":
            return stats(ctx)
        case other:
            return {"ok": False, "error": f"unknown command {other!r}"}


def stats(ctx: ServerContext) -> Answer:
    metrics = ctx.observe.metrics
    if metrics is None:
        return {"ok": False, "error": "no metrics in this process"}
    from prometheus_client import generate_latest

    return {"ok": True, "text": generate_latest(metrics.registry).decode()}


async def reload(ctx: ServerContext) -> Answer:
    if ctx.config_path is None:
        return {"ok": False, "error": "started without a configuration file"}
    alone = WORKER_DIR_ENV not in os.environ  # else the supervisor tells systemd
    if alone:
        sdnotify.reloading()
    try:
        return await _reload(ctx, ctx.config_path)
    finally:
        if alone:
            sdnotify.notify("READY=1")


async def _reload(ctx: ServerContext, path: Path) -> Answer:
    try:
        new = await asyncio.to_thread(load, path)
        prepared = await asyncio.to_thread(_prepare, ctx, new)
    except ConfigError as exc:
        log.error("reload refused, the old configuration stays: %s", str(exc).replace("\n", "; "))
        return {"ok": False, "error": str(exc)}
    users, restart = prepared
    listen, implicit = ctx.config.server.listen, ctx.config.tls.implicit
    if ctx.rebind is not None and not (
        _same_addresses(listen, new.server.listen) and _same_addresses(implicit, new.tls.implicit)
    ):
        if new.tls.implicit and ctx.tls is None:
            restart.append("tls.implicit (TLS is off in the running server)")
        else:
            try:
                listen, implicit = await ctx.rebind(new.server.listen, new.tls.implicit)
            except OSError as exc:
                error = f"cannot listen: {exc.strerror or exc}"
                log.error("reload refused, the old configuration stays: %s", error)
                return {"ok": False, "error": error}
    _apply(ctx, new, users, listen, implicit)
    for item in restart:
        log.warning("reload: %s changed; it takes effect at the next restart", item)
    log.info("configuration reloaded from %s", path)
    return {"ok": True, "restart": restart}


def _prepare(ctx: ServerContext, new: Config) -> tuple[PasswdFile | None, list[str]]:
    """Everything that can fail, before anything is changed (in a thread: it reads files)."""
    old = ctx.config
    users = None
    if old.auth.backend == "passwd-file" and new.auth.backend == "passwd-file":
        users = users_file(new)
        problems = users.check()
        if problems:
            raise ConfigError("\n".join(problems))
    if ctx.tls is not None and new.tls.enabled and ctx.tls.compatible(new.tls):
        try:
            TlsContexts(new.tls)  # loads every certificate and key: all are usable
        except (OSError, ValueError) as exc:
            raise ConfigError(f"tls: {exc}") from None
    try:
        logs.handler_for(new.log).close()
    except OSError as exc:
        raise ConfigError(f"log.target {new.log.target!r}: {exc.strerror or exc}") from None
    return users, restart_needed(old, new)


def _apply(ctx: ServerContext, new: Config, users: PasswdFile | None, listen: list[str],
           implicit: list[str]) -> None:
    old = ctx.config
    # What needs a restart keeps its old value, so the running process stays consistent.
    kept = new.model_copy(update={
        "server": new.server.model_copy(update={
            "listen": listen,
            **{key: getattr(old.server, key)
               for key in ("workers", "user", "group", "allow_root")}}),
        "tls": new.tls.model_copy(update={"implicit": implicit})
        if ctx.tls is not None and new.tls.enabled and ctx.tls.compatible(new.tls) else old.tls,
        "auth": new.auth.model_copy(update={"backend": old.auth.backend}),
        **{key: getattr(old, key)
           for key in ("store", "postgres", "oauth", "lmtp", "metrics", "admin")},
    })
    if ctx.tls is not None and kept.tls is not old.tls:
        ctx.tls.update(kept.tls)
    if users is not None:
        ctx.backends = Backends(passdb=users, userdb=users, store=ctx.backends.store,
                                tokens=ctx.backends.tokens)
    book, limits = ctx.penalties, kept.limits
    book.initial, book.cap, book.window = (
        limits.penalty_initial, limits.penalty_cap, limits.penalty_window)
    book.v6_prefix = limits.penalty_ipv6_prefix
    if kept.log != old.log:
        logs.setup(kept.log)
    ctx.config = kept
    ctx.observe.config = kept
