-- The DAARION schema (the integration surface other DAARION services read) plus the bridge's
-- own bookkeeping. SQLite dialect: uuids are TEXT, timestamps are RFC 3339 TEXT (UTC),
-- JSON is TEXT. Table and column names follow the DAARION ERD exactly; columns the bridge
-- adds (topic, left_at, edited_at, ...) are extra and nullable.

CREATE TABLE users (
    id          TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))),
    external_id text NOT NULL UNIQUE,
    matrix_id   text UNIQUE,
    handle      text,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);

CREATE TABLE microdaos (
    id            TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))),
    external_id   text NOT NULL UNIQUE,
    name          text NOT NULL,
    owner_user_id TEXT REFERENCES users (id) ON DELETE SET NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE INDEX microdaos_owner_user_id_idx ON microdaos (owner_user_id);

CREATE TABLE microdao_members (
    id          TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))),
    microdao_id TEXT NOT NULL REFERENCES microdaos (id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'guest')),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    UNIQUE (microdao_id, user_id)
);
CREATE INDEX microdao_members_user_id_idx ON microdao_members (user_id);

CREATE TABLE agent_blueprints (
    id           TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))),
    code         text NOT NULL UNIQUE,
    description  text,
    model        text,
    capabilities TEXT NOT NULL DEFAULT '[]'
);

CREATE TABLE agents (
    id            TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))),
    external_id   text NOT NULL UNIQUE,
    name          text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('assistant', 'specialist', 'orchestrator', 'service', 'system', 'bot')),
    microdao_id   TEXT REFERENCES microdaos (id) ON DELETE SET NULL,
    owner_user_id TEXT REFERENCES users (id) ON DELETE SET NULL,
    matrix_id     text UNIQUE,
    blueprint_id  TEXT REFERENCES agent_blueprints (id) ON DELETE SET NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE INDEX agents_microdao_id_idx ON agents (microdao_id);
CREATE INDEX agents_blueprint_id_idx ON agents (blueprint_id);

CREATE TABLE channels (
    id                  TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))),
    slug                text NOT NULL,
    name                text NOT NULL,
    microdao_id         TEXT NOT NULL REFERENCES microdaos (id) ON DELETE CASCADE,
    team_id             TEXT,
    matrix_room_id      text UNIQUE,
    visibility          text NOT NULL CHECK (visibility IN ('public', 'private', 'microdao')),
    created_by_user_id  TEXT REFERENCES users (id) ON DELETE SET NULL,
    created_by_agent_id TEXT REFERENCES agents (id) ON DELETE SET NULL,
    created_at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    topic               text,
    updated_at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    UNIQUE (slug, microdao_id)
);

CREATE TABLE channel_members (
    id              TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))),
    channel_id      TEXT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    member_user_id  TEXT REFERENCES users (id) ON DELETE CASCADE,
    member_agent_id TEXT REFERENCES agents (id) ON DELETE CASCADE,
    role            text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'agent', 'guest')),
    joined_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    left_at         TEXT,
    CHECK ((member_user_id IS NULL) <> (member_agent_id IS NULL)),
    UNIQUE (channel_id, member_user_id),
    UNIQUE (channel_id, member_agent_id)
);

CREATE TABLE messages (
    id              TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))),
    channel_id      TEXT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    matrix_event_id text NOT NULL UNIQUE,
    sender_user_id  TEXT REFERENCES users (id) ON DELETE SET NULL,
    sender_agent_id TEXT REFERENCES agents (id) ON DELETE SET NULL,
    sender_type     text NOT NULL CHECK (sender_type IN ('human', 'agent', 'system')),
    content_preview text NOT NULL,
    created_at      TEXT NOT NULL,
    edited_at       TEXT,
    redacted_at     TEXT
);
CREATE INDEX messages_channel_id_created_at_idx ON messages (channel_id, created_at);

CREATE TABLE agent_sessions (
    id               TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))),
    agent_id         TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    channel_id       TEXT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    started_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    last_activity_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    status           text NOT NULL CHECK (status IN ('active', 'idle', 'closed')),
    closed_at        TEXT
);
-- At most one open session per (agent, channel).
CREATE UNIQUE INDEX agent_sessions_open_uidx ON agent_sessions (agent_id, channel_id) WHERE status <> 'closed';
CREATE INDEX agent_sessions_channel_id_idx ON agent_sessions (channel_id);

-- Bridge bookkeeping.

CREATE TABLE bridge_transactions (
    txn_id       text NOT NULL,
    fingerprint  text NOT NULL,
    processed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    event_count  INTEGER NOT NULL,
    PRIMARY KEY (txn_id, fingerprint)
);

CREATE TABLE bridge_rooms (
    channel_id        TEXT PRIMARY KEY REFERENCES channels (id) ON DELETE CASCADE,
    name_source       text NOT NULL CHECK (name_source IN ('name', 'alias', 'id', 'platform')),
    visibility_pinned INTEGER NOT NULL DEFAULT 0,
    power_levels      TEXT NOT NULL DEFAULT '{}',
    state_synced_at   TEXT
);
