-- Agents as virtual users: access keys with capabilities (the microDAO access schema), the
-- durable outbox of puppet sends, and per-puppet homeserver state.

CREATE TABLE capabilities (
    id          TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))),
    code        text NOT NULL UNIQUE,
    description text NOT NULL
);

INSERT INTO capabilities (code, description) VALUES
    ('chat.message.read', 'List the agent''s channels and sessions, read channel messages'),
    ('chat.message.send', 'Send, edit, redact and react as the agent; typing; read markers'),
    ('agent.run.invoke', 'Report agent runs and answer them through the agent API'),
    ('agent.settings.write', 'Change the agent''s per-channel settings');

CREATE TABLE bundles (
    id          TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))),
    code        text NOT NULL UNIQUE,
    description text NOT NULL
);

CREATE TABLE bundle_caps (
    bundle_id TEXT NOT NULL REFERENCES bundles (id) ON DELETE CASCADE,
    cap_id    TEXT NOT NULL REFERENCES capabilities (id) ON DELETE CASCADE,
    PRIMARY KEY (bundle_id, cap_id)
);

INSERT INTO bundles (code, description) VALUES
    ('agent.runtime', 'Everything an agent runtime needs: read, send, runs, settings');
INSERT INTO bundle_caps (bundle_id, cap_id)
    SELECT b.id, c.id FROM bundles b CROSS JOIN capabilities c WHERE b.code = 'agent.runtime';

CREATE TABLE access_keys (
    id           TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))),
    agent_id     TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    name         text NOT NULL,
    key_prefix   text NOT NULL,
    key_hash     text NOT NULL UNIQUE,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    expires_at   TEXT,
    revoked_at   TEXT,
    last_used_at TEXT
);
CREATE INDEX access_keys_agent_id_idx ON access_keys (agent_id);

CREATE TABLE access_key_caps (
    key_id TEXT NOT NULL REFERENCES access_keys (id) ON DELETE CASCADE,
    cap_id TEXT NOT NULL REFERENCES capabilities (id) ON DELETE CASCADE,
    PRIMARY KEY (key_id, cap_id)
);

-- The sweeper only ever looks at active sessions: its work does not grow with closed ones.
CREATE INDEX agent_sessions_active_idx ON agent_sessions (last_activity_at) WHERE status = 'active';

CREATE TABLE agent_outbox (
    id              TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))),
    agent_id        TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    room_id         text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('message', 'redaction')),
    event_type      text NOT NULL,
    content         TEXT NOT NULL,
    redacts         text,
    txn_id          text NOT NULL UNIQUE,
    idempotency_key text,
    status          text NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    event_id        text,
    error           text,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    sent_at         TEXT,
    UNIQUE (agent_id, idempotency_key)
);
CREATE INDEX agent_outbox_pending_idx ON agent_outbox (room_id, created_at) WHERE status = 'pending';

CREATE TABLE bridge_puppets (
    agent_id     TEXT PRIMARY KEY REFERENCES agents (id) ON DELETE CASCADE,
    registered   INTEGER NOT NULL DEFAULT 0,
    display_name text,
    avatar_url   text,
    avatar_source text
);
