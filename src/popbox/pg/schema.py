"""The PostgreSQL schema, as numbered migrations (`popbox db upgrade` applies them).

Tables:

* ``domains``: the mail domains; a disabled domain refuses its users' logins.
* ``users``: the passdb/userdb (popbox.auth.postgres): ``name`` is the normalized
  ``local@domain`` (or a bare local name), ``password`` a ``{SCHEME}hash`` of any
  scheme of popbox.auth.schemes, ``enabled``, ``mail`` (the mail location; NULL: the
  ``auth.mail_location`` template), and per-user settings (``login_delay``,
  ``expire_days``) that reach ``UserInfo.extra``.
* ``mailboxes``: the store's maildrops, addressed by ``name`` (the mail location); made
  on first delivery or login, as a Maildir is. Separate from ``users`` so that the store
  works with any userdb (a passwd-file, say). ``last_login`` and ``last_login_ip``: the
  last POP3 login to it (``server.last_login``, popbox.store.last_login).
* ``messages``: one row per message: ``uidl`` (given at delivery, never changed, RFC 1939
  §7 syntax checked by the database, unique per mailbox), ``size`` (the CRLF wire size of
  popbox.proto.wire, counted at delivery), ``raw_size`` (octets stored), ``delivered_at``,
  ``seen`` (set at QUIT for retrieved messages), ``retrieved_at`` (the first QUIT that
  committed a RETR of it, for `popbox expire`), ``deleted_at`` (set instead of deleting
  the row when ``store.deleted = "trash"``: such a row is in no listing until `popbox
  undelete` clears it or `popbox expire` purges it) and ``body``. The body is stored
  uncompressed out of line (STORAGE EXTERNAL), so ``substring(body from N for M)`` reads
  only the TOAST chunks it needs: RETR streams a 50 MB message in 256 KiB pieces.
  ``ORDER BY id`` is delivery order; the listing index (of the rows not deleted) covers
  the listing query.

  ``wire`` (migration 3) is the same message as a RETR sends it (popbox.proto.wire.to_wire:
  CRLF line ends, dot-stuffed, a final CRLF, no terminator), written once at delivery or
  import, so RETR copies it out without per-line work; also STORAGE EXTERNAL. Its length
  is ``size`` plus one octet per stuffed "." (``size`` counts the message before
  stuffing, as POP3 clients do). ``body`` stays: it is the message exactly as delivered
  (LF or CRLF, with or without a final line end), which the wire form alone cannot give
  back (an LF and a CRLF both become CRLF), and TOP, the tools and the trash read it;
  since migration 6 it is NULL where it can be derived (below). A row whose ``wire`` is
  NULL (made before migration 3, or by an older popbox) is served from ``body``; `popbox
  db upgrade` fills ``wire`` in for such rows (popbox.pg.convert). The table's fill
  factor is 70: the UPDATE a QUIT makes (seen, retrieved_at: no indexed column) can
  then stay on the row's page (a HOT update, no index entries), about half the WAL and
  time of a full one.

  ``body_from_wire`` (migration 6): NULL when ``body`` holds the message; otherwise
  ``body`` is NULL and the message as delivered is derived from ``wire``
  (popbox.store.pg_body: 1, LF line ends; 2, CRLF line ends), as it is for almost all
  mail: each message is then stored once (half the TOAST and WAL of a delivery and of
  its deletion). A message that the wire form cannot give back (no final line end,
  mixed line ends) keeps its ``body``. Rows stored before keep theirs too.

``retrievals`` (migration 5) is the log of the retrievals that QUITs committed: one row
per QUIT that retrieved messages not yet seen (``ids``, the time, and whether they are to be
marked ``seen``), written instead of updating each message's row, so a QUIT after
retrieving 1,000 new messages inserts one row (an UPDATE of 1,000 rows costs PostgreSQL
about 10 µs a row). The next session that opens the mailbox, holding its maildrop lock,
folds the log into the rows (``seen``, the first ``retrieved_at``) and deletes the log rows
it folded, in one statement, while the client goes on. Until then a listing and
`times()` read the log with the rows. The view ``messages_state`` gives every message's
``seen`` and ``retrieved_at`` with the log applied: what tools and people should query.

``mailboxes.modseq`` (migration 7) counts the changes to what a listing reads: statement
triggers add one for every statement that inserts or deletes a mailbox's messages, logs a
retrieval, or changes a message's UIDL, sizes, wire form, trash state, or takes its seen
flag back; not the fold of the retrieval log (which changes nothing a listing shows). A
frontend that has listed a mailbox at a modseq may use that listing again while the modseq
is the same (popbox.store.postgres); one committed value is one state. The counter's row
is locked by a writing statement until its transaction ends, so writes into one mailbox
commit one after another (deliveries that arrive together are one statement anyway).

The pending migrations run in ONE transaction together with their rows in
``schema_migrations`` (PostgreSQL's DDL is transactional: an upgrade is applied whole or
not at all), under a transaction-level advisory lock, so two upgrades started at once
apply each migration once. Migrations are never edited once released; a change is a new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

LOCK_NAMESPACE = 0x706F70  # "pop": the first key of every popbox advisory lock


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "domains, users, mailboxes, messages", """
CREATE TABLE domains (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE CHECK (name <> '' AND name = lower(name)),
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE users (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE CHECK (name <> ''),
    domain_id integer REFERENCES domains (id) ON DELETE RESTRICT,
    password text NOT NULL DEFAULT '',
    enabled boolean NOT NULL DEFAULT true,
    mail text,
    home text,
    uid integer,
    gid integer,
    login_delay integer CHECK (login_delay >= 0),
    expire_days integer CHECK (expire_days >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX users_domain ON users (domain_id);
CREATE TABLE mailboxes (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE CHECK (name <> ''),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE messages (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mailbox_id integer NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    uidl text NOT NULL CHECK (uidl ~ '^[!-~]{1,70}$'),
    size bigint NOT NULL CHECK (size >= 0),
    raw_size bigint NOT NULL CHECK (raw_size >= 0),
    delivered_at timestamptz NOT NULL DEFAULT now(),
    seen boolean NOT NULL DEFAULT false,
    body bytea NOT NULL,
    CONSTRAINT messages_uidl_unique UNIQUE (mailbox_id, uidl)
);
ALTER TABLE messages ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE INDEX messages_listing ON messages (mailbox_id, id) INCLUDE (uidl, size, raw_size);
"""),
    Migration(2, "retrieval times and soft delete", """
ALTER TABLE messages ADD COLUMN retrieved_at timestamptz;
ALTER TABLE messages ADD COLUMN deleted_at timestamptz;
DROP INDEX messages_listing;
CREATE INDEX messages_listing ON messages (mailbox_id, id) INCLUDE (uidl, size, raw_size)
    WHERE deleted_at IS NULL;
CREATE INDEX messages_trash ON messages (mailbox_id, deleted_at) WHERE deleted_at IS NOT NULL;
"""),
    # A nullable column without a default: added without rewriting the table. The rows
    # are filled in afterwards, in batches (popbox.pg.convert). The fill factor (for
    # pages written from now on) leaves room on each page for the new version of its rows
    # that a QUIT writes (seen, retrieved_at): a HOT update, without new index entries.
    Migration(3, "bodies in wire form", """
ALTER TABLE messages ADD COLUMN wire bytea;
ALTER TABLE messages ALTER COLUMN wire SET STORAGE EXTERNAL;
ALTER TABLE messages SET (fillfactor = 70);
"""),
    Migration(4, "last login", """
ALTER TABLE mailboxes ADD COLUMN IF NOT EXISTS last_login timestamptz;
ALTER TABLE mailboxes ADD COLUMN IF NOT EXISTS last_login_ip text;
"""),
    # A QUIT's retrievals as one row, folded into the messages' rows later (see the
    # module docstring); `messages_state` shows every message's flags with the log applied.
    Migration(5, "retrieval log", """
CREATE TABLE retrievals (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mailbox_id integer NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    retrieved_at timestamptz NOT NULL,
    seen boolean NOT NULL,
    ids bigint[] NOT NULL
);
-- out of line, uncompressed: compressing a QUIT's 8 KB of ids costs more than it saves
ALTER TABLE retrievals ALTER COLUMN ids SET STORAGE EXTERNAL;
CREATE INDEX retrievals_mailbox ON retrievals (mailbox_id, seq);
CREATE VIEW messages_state AS
SELECT m.id, m.mailbox_id, m.uidl, m.delivered_at, m.deleted_at,
    m.seen OR coalesce(log.seen, false) AS seen,
    coalesce(m.retrieved_at, log.retrieved_at) AS retrieved_at
FROM messages m LEFT JOIN (
    SELECT r.mailbox_id, u.id, bool_or(r.seen) AS seen, min(r.retrieved_at) AS retrieved_at
    FROM retrievals r CROSS JOIN LATERAL unnest(r.ids) AS u(id) GROUP BY r.mailbox_id, u.id
) log ON log.mailbox_id = m.mailbox_id AND log.id = m.id;
"""),
    # Without a table rewrite or scan: the constraint holds for the existing rows (they
    # all have a body), so it is added NOT VALID and enforced from now on.
    Migration(6, "bodies derived from the wire form", """
ALTER TABLE messages ALTER COLUMN body DROP NOT NULL;
ALTER TABLE messages ADD COLUMN body_from_wire smallint;
ALTER TABLE messages ADD CONSTRAINT messages_body_from_wire CHECK (
    body_from_wire IS NULL AND body IS NOT NULL
    OR body_from_wire IN (1, 2) AND body IS NULL AND wire IS NOT NULL) NOT VALID;
"""),
    # Counted by the database itself (statement triggers), so every writer counts, an older
    # popbox or a person with psql included; see the module docstring.
    Migration(7, "listing change counter", """
ALTER TABLE mailboxes ADD COLUMN modseq bigint NOT NULL DEFAULT 0;
CREATE FUNCTION popbox_listing_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE mailboxes SET modseq = modseq + 1
    WHERE id IN (SELECT DISTINCT mailbox_id FROM changed);
    RETURN NULL;
END $$;
-- Not the fold of the retrieval log (seen and retrieved_at only set, as the log said):
-- every other change of what a listing reads, a reset of seen or retrieved_at included.
CREATE FUNCTION popbox_listing_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE mailboxes SET modseq = modseq + 1 WHERE id IN (
        SELECT o.mailbox_id FROM before o JOIN after n ON n.id = o.id
        WHERE n.mailbox_id <> o.mailbox_id OR n.uidl <> o.uidl OR n.size <> o.size
            OR n.raw_size <> o.raw_size OR n.deleted_at IS DISTINCT FROM o.deleted_at
            OR n.body_from_wire IS DISTINCT FROM o.body_from_wire
            OR (n.wire IS NULL) <> (o.wire IS NULL)
            OR o.seen AND NOT n.seen OR n.retrieved_at IS NULL AND o.retrieved_at IS NOT NULL
        UNION SELECT n.mailbox_id FROM before o JOIN after n ON n.id = o.id
        WHERE n.mailbox_id <> o.mailbox_id);
    RETURN NULL;
END $$;
CREATE TRIGGER messages_inserted AFTER INSERT ON messages
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION popbox_listing_changed();
CREATE TRIGGER messages_deleted AFTER DELETE ON messages
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION popbox_listing_changed();
CREATE TRIGGER messages_updated AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS before NEW TABLE AS after
    FOR EACH STATEMENT EXECUTE FUNCTION popbox_listing_updated();
CREATE TRIGGER retrievals_logged AFTER INSERT ON retrievals
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION popbox_listing_changed();
"""),
)
LATEST = MIGRATIONS[-1].version

_VERSIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    description text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


async def current_version(conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any]) -> int | None:
    """The version the database is at: the highest migration applied with every one
    before it (a database that lacks one below its highest is at the one before the
    gap, so it is upgraded, not used); None for a database popbox never upgraded."""
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return None
    done = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
    missing = [m.version for m in MIGRATIONS if m.version not in done]
    if missing and done and min(missing) < max(done):
        return min(missing) - 1
    return max(done, default=0)


async def upgrade(conn: asyncpg.Connection[Any], target: int = LATEST) -> list[Migration]:
    """Apply the migrations up to `target` that are missing (in order; one missing below
    one applied too); returns those applied."""
    applied: list[Migration] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, 0)", LOCK_NAMESPACE)
        await conn.execute(_VERSIONS_TABLE)
        done = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in MIGRATIONS:
            if migration.version not in done and migration.version <= target:
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, description) VALUES ($1, $2)",
                    migration.version, migration.description,
                )
                applied.append(migration)
    return applied
