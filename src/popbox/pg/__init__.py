"""The PostgreSQL database that the postgres passdb/userdb (popbox.auth.postgres) and the
postgres store (popbox.store.postgres) share: one connection pool per process
(popbox.pg.pool) and one schema with its numbered migrations (popbox.pg.schema). It
imports neither auth nor store, so both may build on it."""
