-- Back to the shape of migration 5. The agents.kind CHECK keeps the ERD's values as well (it is
-- only widened), so rows written meanwhile stay valid.
DELETE FROM capabilities WHERE code = 'bridge.admin';
DROP TABLE bridge_admin_keys;
DROP TABLE bridge_agents;
DROP TABLE bridge_blueprints;
DROP INDEX channel_members_channel_id_idx;
DROP INDEX agent_sessions_agent_id_channel_id_idx;
DROP INDEX agent_sessions_status_idx;
DROP INDEX users_matrix_id_idx;
DROP INDEX channels_microdao_id_idx;
DROP INDEX messages_sender_agent_id_idx;
DROP INDEX messages_sender_user_id_idx;
DROP INDEX agents_matrix_id_idx;
DROP INDEX agents_kind_idx;

-- Bot commands go; the follow-up table returns to joins and refusals only.
DELETE FROM bridge_jobs WHERE kind = 'command';
CREATE TABLE bridge_jobs_old (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('join', 'reject')),
    room_id       TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    reason        TEXT,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    not_before    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    claimed_until TEXT,
    last_error    TEXT,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    finished_at   TEXT
);
INSERT INTO bridge_jobs_old (id, kind, room_id, user_id, reason, status, attempts, not_before, claimed_until,
    last_error, created_at, finished_at)
    SELECT id, kind, room_id, user_id, reason, status, attempts, not_before, claimed_until, last_error,
        created_at, finished_at FROM bridge_jobs;
DROP TABLE bridge_jobs;
ALTER TABLE bridge_jobs_old RENAME TO bridge_jobs;
CREATE UNIQUE INDEX bridge_jobs_pending_uidx ON bridge_jobs (kind, room_id, user_id) WHERE status = 'pending';
CREATE INDEX bridge_jobs_due_idx ON bridge_jobs (not_before) WHERE status = 'pending';
