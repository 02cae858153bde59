"""Editing the ``users`` table (for `popbox user … --config`): add, change the password,
delete, list. Each edit is one statement (or one transaction), so concurrent frontends
see the old row or the new one. A user `local@domain` belongs to its domain's row in
``domains``, made on first use. Outcomes are popbox.auth.passwd_file's `Edit` values.
"""

from __future__ import annotations

import asyncpg

from popbox.auth.names import normalize_username, valid_username
from popbox.auth.passwd_file import Edit
from popbox.pg.pool import Connection


def _checked(name: str) -> str:
    if not valid_username(name):
        raise ValueError("invalid user name")
    return normalize_username(name)


async def add_user(
    conn: Connection,
    name: str,
    hashed: str,
    *,
    mail: str | None = None,
    home: str | None = None,
    login_delay: int | None = None,
    expire_days: int | None = None,
) -> Edit:
    """Insert a user (and its domain if new). Edit.EXISTS if the name is taken."""
    key = _checked(name)
    _, _, domain = key.partition("@")
    try:
        async with conn.transaction():
            domain_id = None
            if domain:
                await conn.execute(
                    "INSERT INTO domains (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
                    domain)
                domain_id = await conn.fetchval("SELECT id FROM domains WHERE name = $1", domain)
            await conn.execute(
                "INSERT INTO users (name, domain_id, password, mail, home, login_delay, "
                "expire_days) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                key, domain_id, hashed, mail, home, login_delay, expire_days)
    except asyncpg.UniqueViolationError:
        return Edit.EXISTS
    return Edit.DONE


async def set_password(conn: Connection, name: str, hashed: str) -> Edit:
    done = await conn.fetchval(
        "UPDATE users SET password = $2, updated_at = now() WHERE name = $1 RETURNING id",
        _checked(name), hashed)
    return Edit.DONE if done is not None else Edit.NO_SUCH_USER


async def set_enabled(conn: Connection, name: str, enabled: bool) -> Edit:
    done = await conn.fetchval(
        "UPDATE users SET enabled = $2, updated_at = now() WHERE name = $1 RETURNING id",
        _checked(name), enabled)
    return Edit.DONE if done is not None else Edit.NO_SUCH_USER


async def delete_user(conn: Connection, name: str) -> Edit:
    """Delete the user's row (its mailbox and mail stay: the store's, not the userdb's)."""
    done = await conn.fetchval("DELETE FROM users WHERE name = $1 RETURNING id", _checked(name))
    return Edit.DONE if done is not None else Edit.NO_SUCH_USER


async def list_users(conn: Connection) -> list[str]:
    return [row["name"] for row in await conn.fetch("SELECT name FROM users ORDER BY id")]
