-- Issue #26: dead-lettered events (see the PostgreSQL migration for the columns' meaning).
ALTER TABLE outbox_events ADD COLUMN dead_at TEXT;
ALTER TABLE outbox_events ADD COLUMN permanent_failures INTEGER NOT NULL DEFAULT 0;
DROP INDEX outbox_events_pending_idx;
CREATE INDEX outbox_events_pending_idx ON outbox_events (partition_key, seq) WHERE NOT processed AND dead_at IS NULL;
CREATE INDEX outbox_events_dead_idx ON outbox_events (id) WHERE dead_at IS NOT NULL;
