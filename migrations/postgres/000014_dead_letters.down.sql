DROP INDEX IF EXISTS outbox_events_dead_idx;
DROP INDEX IF EXISTS outbox_events_pending_idx;
CREATE INDEX outbox_events_pending_idx ON outbox_events (partition_key, seq) WHERE NOT processed;
ALTER TABLE outbox_events DROP COLUMN IF EXISTS permanent_failures;
ALTER TABLE outbox_events DROP COLUMN IF EXISTS dead_at;
COMMENT ON COLUMN outbox_events.processed IS 'Published: JetStream acknowledged it';
COMMENT ON COLUMN outbox_events.processed_at IS 'When JetStream acknowledged it';
