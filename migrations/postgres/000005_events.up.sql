-- Events out: the transactional outbox of seed 001 (`outbox_events`, extended with an ordering
-- scope and a per-scope sequence), the per-scope sequence counters, and the append-only audit log.

CREATE TABLE outbox_events (
    id            uuid PRIMARY KEY,
    topic         text NOT NULL,
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    processed     boolean NOT NULL DEFAULT false,
    processed_at  timestamptz,
    partition_key text NOT NULL,
    seq           bigint NOT NULL,
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text,
    UNIQUE (partition_key, seq)
);
COMMENT ON TABLE outbox_events IS 'Transactional outbox (seed 001): one row per change the bridge made, written in the same database transaction as the change, published to NATS JetStream in per-partition order';
COMMENT ON COLUMN outbox_events.id IS 'Event id; also the Nats-Msg-Id, so JetStream drops a re-publish';
COMMENT ON COLUMN outbox_events.topic IS 'e.g. chat.message.created; the NATS subject is <prefix>.<topic>';
COMMENT ON COLUMN outbox_events.payload IS 'Versioned JSON payload ({"v": 1, ...}), see docs/events.md';
COMMENT ON COLUMN outbox_events.created_at IS 'When the change committed';
COMMENT ON COLUMN outbox_events.processed IS 'Published: JetStream acknowledged it';
COMMENT ON COLUMN outbox_events.processed_at IS 'When JetStream acknowledged it';
COMMENT ON COLUMN outbox_events.partition_key IS 'Ordering scope: the channel id for channel events, agent:<uuid> for access keys';
COMMENT ON COLUMN outbox_events.seq IS 'Position in the partition: commit order, gapless';
COMMENT ON COLUMN outbox_events.attempts IS 'Failed publish attempts';
COMMENT ON COLUMN outbox_events.last_error IS 'Why the last publish failed';
-- The publisher reads the pending head of each partition; pruning reads old rows by age.
CREATE INDEX outbox_events_pending_idx ON outbox_events (partition_key, seq) WHERE NOT processed;
CREATE INDEX outbox_events_created_at_idx ON outbox_events (created_at);

CREATE TABLE outbox_partitions (
    partition_key text PRIMARY KEY,
    last_seq      bigint NOT NULL
);
COMMENT ON TABLE outbox_partitions IS 'Sequence counter per outbox partition: a writer takes its sequence numbers by updating the row, whose lock orders writers of one partition by commit';
COMMENT ON COLUMN outbox_partitions.partition_key IS 'The partition (see outbox_events.partition_key)';
COMMENT ON COLUMN outbox_partitions.last_seq IS 'The last sequence number taken';

CREATE TABLE audit_log (
    id         uuid PRIMARY KEY,
    actor_type text NOT NULL CHECK (actor_type IN ('user', 'agent', 'key', 'admin', 'bridge')),
    actor_id   text,
    action     text NOT NULL,
    target     text,
    outcome    text NOT NULL CHECK (outcome IN ('allowed', 'denied')),
    details    jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE audit_log IS 'Append-only audit log (seeds 001, 003): security-relevant actions, allowed or denied; never updated, pruned only by audit.retention';
COMMENT ON COLUMN audit_log.id IS 'UUIDv7: time-ordered, the keyset for pagination';
COMMENT ON COLUMN audit_log.actor_type IS 'user | agent | key | admin | bridge';
COMMENT ON COLUMN audit_log.actor_id IS 'Matrix user id, agent external id, key prefix, or admin key prefix';
COMMENT ON COLUMN audit_log.action IS 'e.g. access_key.created, api.denied, invite.refused, command.run';
COMMENT ON COLUMN audit_log.target IS 'What it acted on: a room, channel, key or agent';
COMMENT ON COLUMN audit_log.outcome IS 'allowed | denied';
COMMENT ON COLUMN audit_log.details IS 'Why, and the action''s parameters';
COMMENT ON COLUMN audit_log.created_at IS 'When';
CREATE INDEX audit_log_action_idx ON audit_log (action, id);
CREATE INDEX audit_log_actor_idx ON audit_log (actor_id, id);
CREATE INDEX audit_log_created_at_idx ON audit_log (created_at);
