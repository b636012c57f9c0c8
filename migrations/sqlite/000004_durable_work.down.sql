DROP INDEX agent_runs_open_idx;
ALTER TABLE agent_runs DROP COLUMN deferred_at;
ALTER TABLE agent_runs DROP COLUMN attempts;
ALTER TABLE agent_outbox DROP COLUMN not_before;
ALTER TABLE agent_outbox DROP COLUMN request_hash;
DROP TABLE bridge_triggers;
DROP TABLE bridge_jobs;
ALTER TABLE bridge_rooms DROP COLUMN canonical_alias;
DROP TABLE bridge_transactions;
CREATE TABLE bridge_transactions (
    txn_id       TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    processed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    event_count  INTEGER NOT NULL,
    PRIMARY KEY (txn_id, fingerprint)
);
