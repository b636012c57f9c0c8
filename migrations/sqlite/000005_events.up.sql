-- Events out: the transactional outbox of seed 001, its per-partition sequence counters, and the
-- append-only audit log (see the PostgreSQL migration for the column meanings).

CREATE TABLE outbox_events (
    id            TEXT PRIMARY KEY,
    topic         TEXT NOT NULL,
    payload       TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    processed     INTEGER NOT NULL DEFAULT 0,
    processed_at  TEXT,
    partition_key TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    UNIQUE (partition_key, seq)
);
CREATE INDEX outbox_events_pending_idx ON outbox_events (partition_key, seq) WHERE NOT processed;
CREATE INDEX outbox_events_created_at_idx ON outbox_events (created_at);

CREATE TABLE outbox_partitions (
    partition_key TEXT PRIMARY KEY,
    last_seq      INTEGER NOT NULL
);

CREATE TABLE audit_log (
    id         TEXT PRIMARY KEY,
    actor_type TEXT NOT NULL CHECK (actor_type IN ('user', 'agent', 'key', 'admin', 'bridge')),
    actor_id   TEXT,
    action     TEXT NOT NULL,
    target     TEXT,
    outcome    TEXT NOT NULL CHECK (outcome IN ('allowed', 'denied')),
    details    TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL
);
CREATE INDEX audit_log_action_idx ON audit_log (action, id);
CREATE INDEX audit_log_actor_idx ON audit_log (actor_id, id);
CREATE INDEX audit_log_created_at_idx ON audit_log (created_at);
