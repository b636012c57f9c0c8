DROP INDEX agent_runs_open_idx;
ALTER TABLE agent_runs DROP COLUMN deferred_at;
ALTER TABLE agent_runs DROP COLUMN attempts;
ALTER TABLE agent_outbox DROP COLUMN not_before;
ALTER TABLE agent_outbox DROP COLUMN request_hash;
DROP TABLE bridge_triggers;
DROP TABLE bridge_jobs;
ALTER TABLE bridge_rooms DROP COLUMN canonical_alias;
-- The txnIds themselves are gone: the old table comes back empty.
DROP TABLE bridge_transactions;
CREATE TABLE bridge_transactions (
    txn_id       text NOT NULL,
    fingerprint  text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    event_count  integer NOT NULL,
    PRIMARY KEY (txn_id, fingerprint)
);
