-- Hardening: durable follow-ups and triggers (accepted work lives in the database, never only
-- in memory), transactions keyed by a hash of their txnId, the canonical alias kept for name
-- fallback, idempotency keys bound to a request hash, retry bookkeeping for outbox and runs.

-- txnIds are opaque and unbounded: a hash keeps the key small (a btree row holds ~2.7 kB) and
-- free of NUL. Existing rows are rehashed so replays across the upgrade stay replays.
ALTER TABLE bridge_transactions ADD COLUMN txn_hash text;
UPDATE bridge_transactions SET txn_hash = encode(sha256(convert_to(txn_id, 'UTF8')), 'hex');
ALTER TABLE bridge_transactions DROP CONSTRAINT bridge_transactions_pkey;
ALTER TABLE bridge_transactions DROP COLUMN txn_id;
ALTER TABLE bridge_transactions ALTER COLUMN txn_hash SET NOT NULL;
ALTER TABLE bridge_transactions ADD PRIMARY KEY (txn_hash, fingerprint);
COMMENT ON COLUMN bridge_transactions.txn_hash IS 'SHA-256 (hex) of the homeserver''s txnId (opaque, unbounded, may hold any byte)';
-- Pruning reads old rows by age.
CREATE INDEX bridge_transactions_processed_at_idx ON bridge_transactions (processed_at);

ALTER TABLE bridge_rooms ADD COLUMN canonical_alias text;
COMMENT ON COLUMN bridge_rooms.canonical_alias IS 'm.room.canonical_alias, so removing the name falls back to it';

CREATE TABLE bridge_jobs (
    id            uuid PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('join', 'reject')),
    room_id       text NOT NULL,
    user_id       text NOT NULL,
    reason        text,
    status        text NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    attempts      integer NOT NULL DEFAULT 0,
    not_before    timestamptz NOT NULL DEFAULT now(),
    claimed_until timestamptz,
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
COMMENT ON TABLE bridge_jobs IS 'Follow-up work a transaction asked for (join a room and read its state, refuse an invite), written in the transaction''s own commit';
COMMENT ON COLUMN bridge_jobs.id IS 'Primary key';
COMMENT ON COLUMN bridge_jobs.kind IS 'join | reject';
COMMENT ON COLUMN bridge_jobs.room_id IS 'The Matrix room';
COMMENT ON COLUMN bridge_jobs.user_id IS 'Who acts: the bridge bot or an agent puppet';
COMMENT ON COLUMN bridge_jobs.reason IS 'Why an invite is refused';
COMMENT ON COLUMN bridge_jobs.status IS 'pending | done | failed';
COMMENT ON COLUMN bridge_jobs.attempts IS 'Attempts so far';
COMMENT ON COLUMN bridge_jobs.not_before IS 'Not retried before this time (backoff)';
COMMENT ON COLUMN bridge_jobs.claimed_until IS 'A worker holds the job until then; after a crash the lease runs out and another worker takes it';
COMMENT ON COLUMN bridge_jobs.last_error IS 'The last failure';
COMMENT ON COLUMN bridge_jobs.created_at IS 'When the transaction that asked for it committed';
COMMENT ON COLUMN bridge_jobs.finished_at IS 'When it was done or given up';
-- One pending job per (kind, room, user): a repeated invite does not queue a second join.
CREATE UNIQUE INDEX bridge_jobs_pending_uidx ON bridge_jobs (kind, room_id, user_id) WHERE status = 'pending';
CREATE INDEX bridge_jobs_due_idx ON bridge_jobs (not_before) WHERE status = 'pending';

CREATE TABLE bridge_triggers (
    id         uuid PRIMARY KEY,
    agent_id   uuid REFERENCES agents (id) ON DELETE CASCADE,
    channel_id uuid NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    room_id    text NOT NULL,
    event_id   text NOT NULL,
    status     text NOT NULL CHECK (status IN ('candidate', 'evaluated', 'pending', 'taken', 'cancelled')),
    payload    jsonb NOT NULL,
    run_id     uuid REFERENCES agent_runs (id) ON DELETE SET NULL,
    at         timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE bridge_triggers IS 'Messages that may address agents (candidates, written in the transaction''s commit) and the per-agent triggers they became, until a run takes them';
COMMENT ON COLUMN bridge_triggers.id IS 'Primary key';
COMMENT ON COLUMN bridge_triggers.agent_id IS 'The addressed agent; NULL for a candidate not evaluated yet';
COMMENT ON COLUMN bridge_triggers.channel_id IS 'The channel';
COMMENT ON COLUMN bridge_triggers.room_id IS 'The Matrix room';
COMMENT ON COLUMN bridge_triggers.event_id IS 'The message';
COMMENT ON COLUMN bridge_triggers.status IS 'candidate | evaluated | pending | taken | cancelled';
COMMENT ON COLUMN bridge_triggers.payload IS 'What the trigger rules read and the runtime receives (body, mentions, relations, the event)';
COMMENT ON COLUMN bridge_triggers.run_id IS 'The run that took it';
COMMENT ON COLUMN bridge_triggers.at IS 'origin_server_ts of the message';
COMMENT ON COLUMN bridge_triggers.created_at IS 'When it was written (the debounce runs from the newest pending trigger)';
CREATE UNIQUE INDEX bridge_triggers_candidate_uidx ON bridge_triggers (event_id) WHERE agent_id IS NULL;
CREATE UNIQUE INDEX bridge_triggers_agent_uidx ON bridge_triggers (event_id, agent_id) WHERE agent_id IS NOT NULL;
CREATE INDEX bridge_triggers_open_idx ON bridge_triggers (status, created_at) WHERE status IN ('candidate', 'pending');
CREATE INDEX bridge_triggers_run_idx ON bridge_triggers (run_id);

ALTER TABLE agent_outbox ADD COLUMN request_hash text;
ALTER TABLE agent_outbox ADD COLUMN not_before timestamptz;
COMMENT ON COLUMN agent_outbox.request_hash IS 'SHA-256 of the request that queued it: an Idempotency-Key reused with another request is refused';
COMMENT ON COLUMN agent_outbox.not_before IS 'Not retried before this time (backoff after a transient failure)';

ALTER TABLE agent_runs ADD COLUMN attempts integer NOT NULL DEFAULT 0;
ALTER TABLE agent_runs ADD COLUMN deferred_at timestamptz;
COMMENT ON COLUMN agent_runs.attempts IS 'Times the runtime was called for this run (a restart re-runs an interrupted run, up to a bound) (bridge extension)';
COMMENT ON COLUMN agent_runs.deferred_at IS 'When the runtime said it answers later through the agent API (webhook 202) (bridge extension)';
CREATE INDEX agent_runs_open_idx ON agent_runs (status) WHERE status IN ('queued', 'running');
