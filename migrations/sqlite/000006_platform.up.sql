-- The platform drives the bridge (see the PostgreSQL migration for the column meanings).
-- agents.kind takes the ERD's values: SQLite cannot alter a CHECK constraint, and the table
-- cannot be rebuilt inside a migration's transaction (foreign keys cannot be switched off there,
-- so renaming would re-point the references to it and dropping would cascade into them). The
-- CHECK is widened right after the migrations by `db::migrate::sqlite_erd_kinds`, on a
-- connection of its own, and the rows then move to the ERD's values.
CREATE INDEX agents_kind_idx ON agents (kind);
CREATE INDEX agents_matrix_id_idx ON agents (matrix_id);

CREATE TABLE bridge_jobs_new (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('join', 'reject', 'command')),
    room_id       TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    reason        TEXT,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    not_before    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    claimed_until TEXT,
    last_error    TEXT,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    finished_at   TEXT,
    event_id      TEXT,
    body          TEXT
);
INSERT INTO bridge_jobs_new (id, kind, room_id, user_id, reason, status, attempts, not_before, claimed_until,
    last_error, created_at, finished_at)
    SELECT id, kind, room_id, user_id, reason, status, attempts, not_before, claimed_until, last_error,
        created_at, finished_at FROM bridge_jobs;
DROP TABLE bridge_jobs;
ALTER TABLE bridge_jobs_new RENAME TO bridge_jobs;
CREATE UNIQUE INDEX bridge_jobs_pending_uidx ON bridge_jobs (kind, room_id, user_id) WHERE status = 'pending' AND kind <> 'command';
CREATE UNIQUE INDEX bridge_jobs_command_uidx ON bridge_jobs (event_id) WHERE kind = 'command';
CREATE INDEX bridge_jobs_due_idx ON bridge_jobs (not_before) WHERE status = 'pending';

CREATE INDEX messages_sender_user_id_idx ON messages (sender_user_id);
CREATE INDEX messages_sender_agent_id_idx ON messages (sender_agent_id);
CREATE INDEX channels_microdao_id_idx ON channels (microdao_id);
CREATE INDEX users_matrix_id_idx ON users (matrix_id);
CREATE INDEX agent_sessions_status_idx ON agent_sessions (status);
CREATE INDEX agent_sessions_agent_id_channel_id_idx ON agent_sessions (agent_id, channel_id);
CREATE INDEX channel_members_channel_id_idx ON channel_members (channel_id);

CREATE TABLE bridge_blueprints (
    blueprint_id        TEXT PRIMARY KEY REFERENCES agent_blueprints (id) ON DELETE CASCADE,
    runtime             TEXT NOT NULL DEFAULT 'echo' CHECK (runtime IN ('echo', 'openai', 'webhook')),
    settings            TEXT NOT NULL DEFAULT '{}',
    system_instructions TEXT,
    context_events      INTEGER CHECK (context_events BETWEEN 0 AND 200),
    failure_notice      INTEGER,
    message_type        TEXT CHECK (message_type IN ('notice', 'text')),
    source              TEXT NOT NULL DEFAULT 'platform' CHECK (source IN ('config', 'platform', 'admin')),
    updated_at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE TABLE bridge_agents (
    agent_id           TEXT PRIMARY KEY REFERENCES agents (id) ON DELETE CASCADE,
    active             INTEGER NOT NULL DEFAULT 1,
    instructions       TEXT,
    model              TEXT,
    idle_after_seconds INTEGER CHECK (idle_after_seconds > 0),
    respond            TEXT CHECK (respond IN ('mentions', 'all', 'never')),
    message_type       TEXT CHECK (message_type IN ('notice', 'text')),
    avatar             TEXT,
    source             TEXT NOT NULL DEFAULT 'platform' CHECK (source IN ('config', 'platform', 'admin')),
    updated_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE TABLE bridge_admin_keys (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    key_prefix   TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    expires_at   TEXT,
    revoked_at   TEXT,
    last_used_at TEXT
);
INSERT INTO capabilities (code, description) VALUES
    ('bridge.admin', 'The admin (provisioning) API: microDAOs, blueprints, agents, keys, rooms');
