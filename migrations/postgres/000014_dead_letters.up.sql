-- Issue #26: events that can never publish go to a dead-letter state instead of blocking their
-- partition, and failed work (jobs, sends, runs) can be listed and retried by operators.

ALTER TABLE outbox_events ADD COLUMN dead_at timestamptz;
ALTER TABLE outbox_events ADD COLUMN permanent_failures integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN outbox_events.processed IS 'Published: JetStream acknowledged it (without a broker: a consumer that reads the table by SQL marked it read, see docs/events.md)';
COMMENT ON COLUMN outbox_events.processed_at IS 'When JetStream acknowledged it (or the SQL consumer marked it)';
COMMENT ON COLUMN outbox_events.dead_at IS 'Dead letter: when the publisher gave up on it after events.dead_letter_after permanent refusals (too large for the server or stream); no longer pending, its partition moves on; NULL otherwise. Retried through the admin API (bridge extension)';
COMMENT ON COLUMN outbox_events.permanent_failures IS 'Consecutive publish attempts JetStream refused for good (a transient failure resets it) (bridge extension)';

-- Pending means not published and not dead: the publisher's heads and the backlog figure read
-- this index, so a dead row drops out of both (the partition's head moves past it).
DROP INDEX outbox_events_pending_idx;
CREATE INDEX outbox_events_pending_idx ON outbox_events (partition_key, seq) WHERE NOT processed AND dead_at IS NULL;
-- The admin listing and the dead-rows gauge: a keyset walk over the (few) dead rows.
CREATE INDEX outbox_events_dead_idx ON outbox_events (id) WHERE dead_at IS NOT NULL;

ALTER TABLE agent_outbox ADD COLUMN failed_at timestamptz;
COMMENT ON COLUMN agent_outbox.failed_at IS 'When the send failed for good (status failed); cleared by a retry (bridge extension)';

-- The admin API's failed listing: a keyset walk by id over the failed rows of each table.
CREATE INDEX bridge_jobs_failed_idx ON bridge_jobs (id) WHERE status = 'failed';
CREATE INDEX agent_outbox_failed_idx ON agent_outbox (id) WHERE status = 'failed';
ALTER TABLE agent_runs ADD COLUMN retried_at timestamptz;
COMMENT ON COLUMN agent_runs.retried_at IS 'When an operator retried this failed run: its triggers went back to pending and a new run answers them (bridge extension)';
CREATE INDEX agent_runs_failed_idx ON agent_runs (id) WHERE status = 'failed' AND retried_at IS NULL;
