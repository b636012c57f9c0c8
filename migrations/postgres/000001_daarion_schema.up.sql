-- The DAARION schema (the integration surface other DAARION services read) plus the bridge's
-- own bookkeeping. Table and column names follow the DAARION ERD exactly; columns the bridge
-- adds (topic, left_at, edited_at, ...) are extra and nullable.

CREATE TABLE users (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    external_id text NOT NULL UNIQUE,
    matrix_id   text UNIQUE,
    handle      text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE users IS 'People of the DAARION platform; Matrix senders the bridge meets get a row';
COMMENT ON COLUMN users.id IS 'Primary key';
COMMENT ON COLUMN users.external_id IS 'Platform-wide id, e.g. user:93 or matrix:@alice:example.org';
COMMENT ON COLUMN users.matrix_id IS 'Matrix user id (@alice:example.org), unique when set';
COMMENT ON COLUMN users.handle IS 'Short handle, the Matrix localpart for bridged users';
COMMENT ON COLUMN users.created_at IS 'When the row was created';

CREATE TABLE microdaos (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    external_id   text NOT NULL UNIQUE,
    name          text NOT NULL,
    owner_user_id uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE microdaos IS 'microDAOs: communities that own channels and agents';
COMMENT ON COLUMN microdaos.id IS 'Primary key';
COMMENT ON COLUMN microdaos.external_id IS 'Platform-wide id, e.g. microdao:7';
COMMENT ON COLUMN microdaos.name IS 'Display name';
COMMENT ON COLUMN microdaos.owner_user_id IS 'Owning user, if any';
COMMENT ON COLUMN microdaos.created_at IS 'When the row was created';
CREATE INDEX microdaos_owner_user_id_idx ON microdaos (owner_user_id);

CREATE TABLE microdao_members (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    microdao_id uuid NOT NULL REFERENCES microdaos (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'guest')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (microdao_id, user_id)
);
COMMENT ON TABLE microdao_members IS 'Membership of users in microDAOs';
COMMENT ON COLUMN microdao_members.id IS 'Primary key';
COMMENT ON COLUMN microdao_members.microdao_id IS 'The microDAO';
COMMENT ON COLUMN microdao_members.user_id IS 'The member';
COMMENT ON COLUMN microdao_members.role IS 'owner | admin | member | guest';
COMMENT ON COLUMN microdao_members.created_at IS 'When the membership began';
CREATE INDEX microdao_members_user_id_idx ON microdao_members (user_id);

CREATE TABLE agent_blueprints (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code         text NOT NULL UNIQUE,
    description  text,
    model        text,
    capabilities jsonb NOT NULL DEFAULT '[]'::jsonb
);
COMMENT ON TABLE agent_blueprints IS 'Templates agents are made from';
COMMENT ON COLUMN agent_blueprints.id IS 'Primary key';
COMMENT ON COLUMN agent_blueprints.code IS 'Stable code, e.g. echo or sofia-v1';
COMMENT ON COLUMN agent_blueprints.description IS 'What the blueprint is for';
COMMENT ON COLUMN agent_blueprints.model IS 'Model name the runtime uses';
COMMENT ON COLUMN agent_blueprints.capabilities IS 'JSON array of capability codes';

CREATE TABLE agents (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    external_id   text NOT NULL UNIQUE,
    name          text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('assistant', 'specialist', 'orchestrator', 'service', 'system', 'bot')),
    microdao_id   uuid REFERENCES microdaos (id) ON DELETE SET NULL,
    owner_user_id uuid REFERENCES users (id) ON DELETE SET NULL,
    matrix_id     text UNIQUE,
    blueprint_id  uuid REFERENCES agent_blueprints (id) ON DELETE SET NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE agents IS 'AI agents; each lives in Matrix as a virtual user (puppet) of the bridge';
COMMENT ON COLUMN agents.id IS 'Primary key';
COMMENT ON COLUMN agents.external_id IS 'Platform-wide id, e.g. agent:sofia';
COMMENT ON COLUMN agents.name IS 'Display name';
COMMENT ON COLUMN agents.kind IS 'assistant | specialist | orchestrator | service | system | bot';
COMMENT ON COLUMN agents.microdao_id IS 'microDAO the agent is scoped to, if any';
COMMENT ON COLUMN agents.owner_user_id IS 'Owning user, if any';
COMMENT ON COLUMN agents.matrix_id IS 'The puppet''s Matrix user id';
COMMENT ON COLUMN agents.blueprint_id IS 'Blueprint the agent is made from';
COMMENT ON COLUMN agents.created_at IS 'When the row was created';
CREATE INDEX agents_microdao_id_idx ON agents (microdao_id);
CREATE INDEX agents_blueprint_id_idx ON agents (blueprint_id);

CREATE TABLE channels (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug                text NOT NULL,
    name                text NOT NULL,
    microdao_id         uuid NOT NULL REFERENCES microdaos (id) ON DELETE CASCADE,
    team_id             uuid,
    matrix_room_id      text UNIQUE,
    visibility          text NOT NULL CHECK (visibility IN ('public', 'private', 'microdao')),
    created_by_user_id  uuid REFERENCES users (id) ON DELETE SET NULL,
    created_by_agent_id uuid REFERENCES agents (id) ON DELETE SET NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    topic               text,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (slug, microdao_id)
);
COMMENT ON TABLE channels IS 'Channels; each mirrors one Matrix room';
COMMENT ON COLUMN channels.id IS 'Primary key';
COMMENT ON COLUMN channels.slug IS 'URL slug, unique within the microDAO';
COMMENT ON COLUMN channels.name IS 'Display name (m.room.name, else canonical alias, else room id)';
COMMENT ON COLUMN channels.microdao_id IS 'Owning microDAO';
COMMENT ON COLUMN channels.team_id IS 'Team within the microDAO, if any';
COMMENT ON COLUMN channels.matrix_room_id IS 'The Matrix room id (!abc:example.org)';
COMMENT ON COLUMN channels.visibility IS 'public | private | microdao';
COMMENT ON COLUMN channels.created_by_user_id IS 'User who created the room, if known';
COMMENT ON COLUMN channels.created_by_agent_id IS 'Agent who created the room, if any';
COMMENT ON COLUMN channels.created_at IS 'When the row was created';
COMMENT ON COLUMN channels.topic IS 'm.room.topic (bridge extension)';
COMMENT ON COLUMN channels.updated_at IS 'Last change of name, topic or visibility (bridge extension)';

CREATE TABLE channel_members (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    channel_id      uuid NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    member_user_id  uuid REFERENCES users (id) ON DELETE CASCADE,
    member_agent_id uuid REFERENCES agents (id) ON DELETE CASCADE,
    role            text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'agent', 'guest')),
    joined_at       timestamptz NOT NULL DEFAULT now(),
    left_at         timestamptz,
    CHECK ((member_user_id IS NULL) <> (member_agent_id IS NULL)),
    UNIQUE (channel_id, member_user_id),
    UNIQUE (channel_id, member_agent_id)
);
COMMENT ON TABLE channel_members IS 'Members of channels: a user or an agent';
COMMENT ON COLUMN channel_members.id IS 'Primary key';
COMMENT ON COLUMN channel_members.channel_id IS 'The channel';
COMMENT ON COLUMN channel_members.member_user_id IS 'The member, when a person';
COMMENT ON COLUMN channel_members.member_agent_id IS 'The member, when an agent';
COMMENT ON COLUMN channel_members.role IS 'owner | admin | member | agent | guest (from power levels)';
COMMENT ON COLUMN channel_members.joined_at IS 'When the member (last) joined';
COMMENT ON COLUMN channel_members.left_at IS 'When the member left, was kicked or banned; NULL while active (bridge extension)';

CREATE TABLE messages (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    channel_id      uuid NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    matrix_event_id text NOT NULL UNIQUE,
    sender_user_id  uuid REFERENCES users (id) ON DELETE SET NULL,
    sender_agent_id uuid REFERENCES agents (id) ON DELETE SET NULL,
    sender_type     text NOT NULL CHECK (sender_type IN ('human', 'agent', 'system')),
    content_preview text NOT NULL,
    created_at      timestamptz NOT NULL,
    edited_at       timestamptz,
    redacted_at     timestamptz
);
COMMENT ON TABLE messages IS 'Index of channel messages; the full content stays in Matrix';
COMMENT ON COLUMN messages.id IS 'Primary key';
COMMENT ON COLUMN messages.channel_id IS 'The channel';
COMMENT ON COLUMN messages.matrix_event_id IS 'The Matrix event id ($event)';
COMMENT ON COLUMN messages.sender_user_id IS 'Sender, when a person';
COMMENT ON COLUMN messages.sender_agent_id IS 'Sender, when an agent';
COMMENT ON COLUMN messages.sender_type IS 'human | agent | system';
COMMENT ON COLUMN messages.content_preview IS 'Plain-text preview, cut at bridge.preview_chars';
COMMENT ON COLUMN messages.created_at IS 'origin_server_ts of the event';
COMMENT ON COLUMN messages.edited_at IS 'origin_server_ts of the latest applied edit (bridge extension)';
COMMENT ON COLUMN messages.redacted_at IS 'When the message was redacted (bridge extension)';
CREATE INDEX messages_channel_id_created_at_idx ON messages (channel_id, created_at);

CREATE TABLE agent_sessions (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id         uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    channel_id       uuid NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    started_at       timestamptz NOT NULL DEFAULT now(),
    last_activity_at timestamptz NOT NULL DEFAULT now(),
    status           text NOT NULL CHECK (status IN ('active', 'idle', 'closed')),
    closed_at        timestamptz
);
COMMENT ON TABLE agent_sessions IS 'An agent''s engagement in a channel: active, idle or closed';
COMMENT ON COLUMN agent_sessions.id IS 'Primary key';
COMMENT ON COLUMN agent_sessions.agent_id IS 'The agent';
COMMENT ON COLUMN agent_sessions.channel_id IS 'The channel';
COMMENT ON COLUMN agent_sessions.started_at IS 'When the session opened';
COMMENT ON COLUMN agent_sessions.last_activity_at IS 'Last message sent by or addressed to the agent';
COMMENT ON COLUMN agent_sessions.status IS 'active | idle | closed';
COMMENT ON COLUMN agent_sessions.closed_at IS 'When the session closed (bridge extension)';
-- At most one open session per (agent, channel).
CREATE UNIQUE INDEX agent_sessions_open_uidx ON agent_sessions (agent_id, channel_id) WHERE status <> 'closed';
CREATE INDEX agent_sessions_channel_id_idx ON agent_sessions (channel_id);

-- Bridge bookkeeping.

CREATE TABLE bridge_transactions (
    txn_id       text NOT NULL,
    fingerprint  text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    event_count  integer NOT NULL,
    PRIMARY KEY (txn_id, fingerprint)
);
COMMENT ON TABLE bridge_transactions IS 'Appservice transactions already applied: a replay changes nothing';
COMMENT ON COLUMN bridge_transactions.txn_id IS 'The homeserver''s txnId (opaque)';
COMMENT ON COLUMN bridge_transactions.fingerprint IS 'SHA-256 of the transaction''s event ids: a retry carries the same events, while a homeserver that reuses txnIds (Synapse on SQLite does after a restart) sends different ones';
COMMENT ON COLUMN bridge_transactions.processed_at IS 'When its effects were committed';
COMMENT ON COLUMN bridge_transactions.event_count IS 'Events the transaction carried';

CREATE TABLE bridge_rooms (
    channel_id        uuid PRIMARY KEY REFERENCES channels (id) ON DELETE CASCADE,
    name_source       text NOT NULL CHECK (name_source IN ('name', 'alias', 'id', 'platform')),
    visibility_pinned boolean NOT NULL DEFAULT false,
    power_levels      jsonb NOT NULL DEFAULT '{}'::jsonb,
    state_synced_at   timestamptz
);
COMMENT ON TABLE bridge_rooms IS 'Bridge state per mirrored room that the DAARION schema has no place for';
COMMENT ON COLUMN bridge_rooms.channel_id IS 'The channel';
COMMENT ON COLUMN bridge_rooms.name_source IS 'Where channels.name came from, so a weaker source never overrides a stronger one';
COMMENT ON COLUMN bridge_rooms.visibility_pinned IS 'Visibility was set by a city.daarion.channel event; join rules no longer change it';
COMMENT ON COLUMN bridge_rooms.power_levels IS 'User power levels of the room ({"users": {...}, "users_default": n})';
COMMENT ON COLUMN bridge_rooms.state_synced_at IS 'When the room state was last read from the homeserver';
