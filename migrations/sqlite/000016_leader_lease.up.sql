-- Issue #27 (see the PostgreSQL migration). SQLite is single-process: the running bridge holds an
-- exclusive lock on `<file>.lock` and takes this lease at once, so status shows who leads and
-- the epoch grows at every start as on PostgreSQL.
CREATE TABLE bridge_leader_lease (
    name        TEXT PRIMARY KEY,
    epoch       INTEGER NOT NULL,
    holder      TEXT NOT NULL,
    replica     TEXT NOT NULL,
    acquired_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    renewed_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    expires_at  TEXT NOT NULL
);
