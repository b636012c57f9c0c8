-- Issue #26: dead-lettered events and failed work (see the PostgreSQL migration for the
-- columns' meaning).
ALTER TABLE outbox_events ADD COLUMN dead_at TEXT;
ALTER TABLE outbox_events ADD COLUMN permanent_failures INTEGER NOT NULL DEFAULT 0;
DROP INDEX outbox_events_pending_idx;
CREATE INDEX outbox_events_pending_idx ON outbox_events (partition_key, seq) WHERE NOT processed AND dead_at IS NULL;
CREATE INDEX outbox_events_dead_idx ON outbox_events (id) WHERE dead_at IS NOT NULL;

ALTER TABLE agent_outbox ADD COLUMN failed_at TEXT;

CREATE INDEX bridge_jobs_failed_idx ON bridge_jobs (id) WHERE status = 'failed';
CREATE INDEX agent_outbox_failed_idx ON agent_outbox (id) WHERE status = 'failed';
ALTER TABLE agent_runs ADD COLUMN retried_at TEXT;
CREATE INDEX agent_runs_failed_idx ON agent_runs (id) WHERE status = 'failed' AND retried_at IS NULL;
