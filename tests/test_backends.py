"""Backends chosen by name from popbox.backends' registries, closed by `aclose()`; and the
package's import graph: no cycles, dependencies pointing down the layers."""

from __future__ import annotations

import ast
import asyncio
import graphlib
import typing
from pathlib import Path

import popbox
from helpers import MailEnv
from pg import add_user, fetch, pg_config
from popbox.auth.base import UserInfo
from popbox.auth.passwd_file import PasswdFile
from popbox.auth.postgres import PostgresUsers
from popbox.backends import STORES, USERS, build
from popbox.config import AuthSection, StoreSection, load
from popbox.store.base import Failure
from popbox.store.maildir import MaildirStore
from popbox.store.mbox import MboxStore
from popbox.store.postgres import PostgresStore
from popbox.store.routing import LocationRouter, default_store

pytest_plugins = ["pg"]


def test_every_configurable_backend_is_registered() -> None:
    """The configuration's choices and the registries name the same backends."""
    store_choices = typing.get_args(StoreSection.model_fields["backend"].annotation)
    auth_choices = typing.get_args(AuthSection.model_fields["backend"].annotation)
    assert set(STORES) == set(store_choices) and set(USERS) == set(auth_choices)


async def test_default_backends_are_built_and_closed(env: MailEnv) -> None:
    backends = build(load(env.config_file()))
    router = backends.store
    assert isinstance(router, LocationRouter)
    assert isinstance(router.default, MaildirStore) and router.by_type["maildir"] is router.default
    assert isinstance(router.by_type["mbox"], MboxStore)
    assert isinstance(backends.passdb, PasswdFile) and backends.userdb is backends.passdb
    assert isinstance(await backends.userdb.lookup("alice"), UserInfo)
    await backends.aclose()
    await backends.aclose()


async def _connections(dsn: str) -> int:
    rows = await fetch(
        dsn, "SELECT count(*) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    return int(rows[0]["n"])


async def test_postgres_backends_share_one_pool_and_close_it(env: MailEnv, pg_dsn: str) -> None:
    """auth and store on PostgreSQL use one pool; `aclose` ends its connections (and the
    store's lock connection), and closing again is harmless."""
    backends = build(load(pg_config(env, pg_dsn)))
    store, users = default_store(backends.store), backends.userdb
    assert isinstance(store, PostgresStore) and isinstance(users, PostgresUsers)
    assert store.db is users.db
    await add_user(pg_dsn, "bob@example.org")
    assert isinstance(await users.lookup("bob@example.org"), UserInfo)
    assert await store.deliver("bob@example.org", b"Subject: x\n\nhi\n") is None
    drop = await store.open("bob@example.org")
    assert not isinstance(drop, Failure)
    await drop.release()
    assert await _connections(pg_dsn) >= 1
    await backends.aclose()
    await backends.aclose()
    for _ in range(200):  # the server ends a closed connection's backend a moment later
        if await _connections(pg_dsn) == 0:
            break
        await asyncio.sleep(0.01)
    assert await _connections(pg_dsn) == 0


# --- the import graph -------------------------------------------------------------------

SRC = Path(popbox.__file__).parent


def _graph() -> dict[str, set[str]]:
    """Module -> the popbox modules it imports (anywhere in it, function bodies too)."""
    found: dict[str, set[tuple[str, str | None]]] = {}
    for path in SRC.rglob("*.py"):
        parts = ("popbox", *path.relative_to(SRC).with_suffix("").parts)
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        imports: set[tuple[str, str | None]] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imports |= {(alias.name, None) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imports |= {(node.module, alias.name) for alias in node.names}
        found[module] = imports

    def target(module: str, name: str | None) -> str:
        return f"{module}.{name}" if f"{module}.{name}" in found else module

    return {
        module: {t for m, n in imports if (t := target(m, n)) in found and t != module}
        for module, imports in found.items()
    }


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_the_package_has_no_import_cycle() -> None:
    graphlib.TopologicalSorter(_graph()).prepare()  # raises CycleError on a cycle


def test_layers_point_down() -> None:
    """proto imports nothing else of popbox; auth, store and pg no shell and no command
    line; LMTP (the agent and its command) nothing of the POP3 server."""
    graph = _graph()
    for module, deps in graph.items():
        if module.startswith("popbox.proto"):
            assert all(d.startswith("popbox.proto") or d == "popbox" for d in deps), module
        if module.startswith(("popbox.auth", "popbox.store", "popbox.pg")):
            bad = [d for d in deps if d.startswith(
                ("popbox.server", "popbox.client", "popbox.lmtp", "popbox.cli", "popbox.backends"))]
            assert bad == [], module
    for start in ("popbox.cli.lmtp", "popbox.lmtp.server", "popbox.cli.importer"):
        assert not {d for d in _reach(graph, start) if d.startswith("popbox.server")}, start
    assert "popbox.cli.main" not in _reach(graph, "popbox.cli.importer")
