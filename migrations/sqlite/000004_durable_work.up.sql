-- Hardening: durable follow-ups and triggers, transactions keyed by a hash of their txnId, the
-- canonical alias kept for name fallback, idempotency keys bound to a request hash, retry
-- bookkeeping for outbox and runs. SQLite cannot change a primary key nor hash in SQL: the
-- transaction records start afresh (a replay of a transaction applied before the upgrade is
-- absorbed by the unique keys of what it wrote).
DROP TABLE bridge_transactions;
CREATE TABLE bridge_transactions (
    txn_hash     TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    processed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    event_count  INTEGER NOT NULL,
    PRIMARY KEY (txn_hash, fingerprint)
);
CREATE INDEX bridge_transactions_processed_at_idx ON bridge_transactions (processed_at);

ALTER TABLE bridge_rooms ADD COLUMN canonical_alias TEXT;

CREATE TABLE bridge_jobs (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('join', 'reject')),
    room_id       TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    reason        TEXT,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    not_before    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    claimed_until TEXT,
    last_error    TEXT,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    finished_at   TEXT
);
CREATE UNIQUE INDEX bridge_jobs_pending_uidx ON bridge_jobs (kind, room_id, user_id) WHERE status = 'pending';
CREATE INDEX bridge_jobs_due_idx ON bridge_jobs (not_before) WHERE status = 'pending';

CREATE TABLE bridge_triggers (
    id         TEXT PRIMARY KEY,
    agent_id   TEXT REFERENCES agents (id) ON DELETE CASCADE,
    channel_id TEXT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    room_id    TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('candidate', 'evaluated', 'pending', 'taken', 'cancelled')),
    payload    TEXT NOT NULL,
    run_id     TEXT REFERENCES agent_runs (id) ON DELETE SET NULL,
    at         TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE UNIQUE INDEX bridge_triggers_candidate_uidx ON bridge_triggers (event_id) WHERE agent_id IS NULL;
CREATE UNIQUE INDEX bridge_triggers_agent_uidx ON bridge_triggers (event_id, agent_id) WHERE agent_id IS NOT NULL;
CREATE INDEX bridge_triggers_open_idx ON bridge_triggers (status, created_at) WHERE status IN ('candidate', 'pending');
CREATE INDEX bridge_triggers_run_idx ON bridge_triggers (run_id);

ALTER TABLE agent_outbox ADD COLUMN request_hash TEXT;
ALTER TABLE agent_outbox ADD COLUMN not_before TEXT;

ALTER TABLE agent_runs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agent_runs ADD COLUMN deferred_at TEXT;
CREATE INDEX agent_runs_open_idx ON agent_runs (status) WHERE status IN ('queued', 'running');
