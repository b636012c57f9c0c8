-- Agents that answer: agent runs, per-(agent, channel) response settings, thread and DM facts
-- the trigger rules need.

CREATE TABLE agent_runs (
    id                TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))),
    agent_id          TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    input             TEXT NOT NULL,
    output            TEXT,
    status            text NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    created_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    channel_id        TEXT REFERENCES channels (id) ON DELETE SET NULL,
    session_id        TEXT REFERENCES agent_sessions (id) ON DELETE SET NULL,
    trigger_event_id  text,
    reply_event_id    text,
    runtime           text,
    chain_depth       INTEGER NOT NULL DEFAULT 0,
    error             text,
    queued_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    started_at        TEXT,
    finished_at       TEXT,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER
);
CREATE INDEX agent_runs_agent_created_idx ON agent_runs (agent_id, created_at);
CREATE INDEX agent_runs_channel_created_idx ON agent_runs (channel_id, created_at);
CREATE INDEX agent_runs_reply_event_idx ON agent_runs (reply_event_id);

CREATE TABLE agent_channel_settings (
    agent_id   TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    channel_id TEXT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    respond    text NOT NULL CHECK (respond IN ('mentions', 'all', 'never')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    PRIMARY KEY (agent_id, channel_id)
);

ALTER TABLE messages ADD COLUMN thread_root_event_id text;
CREATE INDEX messages_thread_root_idx ON messages (thread_root_event_id);

ALTER TABLE bridge_rooms ADD COLUMN is_direct INTEGER NOT NULL DEFAULT 0;
