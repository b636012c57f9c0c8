DROP INDEX IF EXISTS outbox_events_dead_idx;
DROP INDEX IF EXISTS outbox_events_pending_idx;
CREATE INDEX outbox_events_pending_idx ON outbox_events (partition_key, seq) WHERE NOT processed;
ALTER TABLE outbox_events DROP COLUMN permanent_failures;
ALTER TABLE outbox_events DROP COLUMN dead_at;
