-- Issue #27: replicas. Any number of bridge processes share one PostgreSQL; the one holding this
-- lease leads (homeserver transactions, crypto, outbox, runs, publisher, periodic jobs). The
-- epoch grows by one at every take-over: it is the fencing token the leader's writes carry.
CREATE TABLE bridge_leader_lease (
    name        text PRIMARY KEY,
    epoch       bigint NOT NULL,
    holder      text NOT NULL,
    replica     text NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    renewed_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
COMMENT ON TABLE bridge_leader_lease IS 'daarion-bridge: the leader lease of the replicas sharing this database (one row, name = leader)';
COMMENT ON COLUMN bridge_leader_lease.epoch IS 'Fencing token: +1 at every take-over; a write of the leader''s paths carries the epoch it holds';
COMMENT ON COLUMN bridge_leader_lease.holder IS 'The holding process''s token; its connections'' application_name is daarion-bridge/<holder>';
COMMENT ON COLUMN bridge_leader_lease.replica IS 'The holding replica''s name (leader.replica), for people';
COMMENT ON COLUMN bridge_leader_lease.expires_at IS 'The lease is free after this (the database''s clock): a standby may take over';

-- The fence: raises (SQLSTATE DBF01) unless the lease is still held by `holder` at `epoch`. The
-- leader's transaction statement and its crypto store writes call it inside their own
-- transaction, so a replica that lost the lease (paused, partitioned) commits nothing of them.
-- VOLATILE: the planner never drops or caches the call.
CREATE FUNCTION bridge_leader_check(held_epoch bigint, held_by text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM bridge_leader_lease
     WHERE name = 'leader' AND epoch = held_epoch AND holder = held_by;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'daarion-bridge: leader lease lost (epoch %)', held_epoch
            USING ERRCODE = 'DBF01';
    END IF;
    RETURN true;
END $$;
