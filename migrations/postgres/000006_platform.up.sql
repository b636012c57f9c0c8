-- The platform drives the bridge: agents and blueprints defined in the database (bridge-owned
-- tables keyed by the ERD ids), disabled agents, admin keys, bot commands as durable jobs,
-- change notifications, and the schema made exactly the ERD's.

-- ERD: agents.kind is 'system | assistant | node | quest'. Earlier values map onto them.
ALTER TABLE agents DROP CONSTRAINT agents_kind_check;
UPDATE agents SET kind = CASE kind
    WHEN 'specialist' THEN 'assistant' WHEN 'orchestrator' THEN 'system'
    WHEN 'service' THEN 'node' WHEN 'bot' THEN 'system' ELSE kind END;
ALTER TABLE agents ADD CONSTRAINT agents_kind_check CHECK (kind IN ('system', 'assistant', 'node', 'quest'));

-- ERD indexes the first migrations did not have. (users.matrix_id and agents.matrix_id: the
-- ERD's plain indexes are the UNIQUE constraints' indexes: the bridge maps one Matrix id to one
-- row. agent_sessions (agent_id, channel_id): besides the partial unique index of open sessions,
-- the ERD's plain index over all sessions.)
CREATE INDEX messages_sender_user_id_idx ON messages (sender_user_id);
CREATE INDEX messages_sender_agent_id_idx ON messages (sender_agent_id);
CREATE INDEX channels_microdao_id_idx ON channels (microdao_id);
CREATE INDEX agents_kind_idx ON agents (kind);
CREATE INDEX agents_matrix_id_idx ON agents (matrix_id);
CREATE INDEX users_matrix_id_idx ON users (matrix_id);
CREATE INDEX agent_sessions_status_idx ON agent_sessions (status);
CREATE INDEX agent_sessions_agent_id_channel_id_idx ON agent_sessions (agent_id, channel_id);
CREATE INDEX channel_members_channel_id_idx ON channel_members (channel_id);
-- ERD defaults.
ALTER TABLE messages ALTER COLUMN created_at SET DEFAULT now();

-- Where the bridge relaxes an ERD NOT NULL, the reason is on the column.
COMMENT ON COLUMN microdaos.owner_user_id IS 'Owner (ERD: NOT NULL). Nullable here: microDAOs declared in the bridge config or created through the admin API before their owner has a users row have none yet';
COMMENT ON COLUMN agent_blueprints.model IS 'Model name (ERD: NOT NULL). Nullable here: echo and webhook runtimes have no model';
COMMENT ON COLUMN agents.blueprint_id IS 'Blueprint (ERD: NOT NULL). Nullable here: a blueprint deleted by the platform leaves its agents (ON DELETE SET NULL) answering with the echo runtime instead of cascading them away';
COMMENT ON COLUMN channels.matrix_room_id IS 'The Matrix room (ERD: NOT NULL, unique). Nullable here: the platform may create a channel before its room exists; the bridge always sets it';
COMMENT ON COLUMN agents.kind IS 'system | assistant | node | quest (the ERD''s values)';

-- How a blueprint behaves (bridge-owned, keyed by the ERD id). Secrets are never stored: the
-- settings name an environment variable (api_key_env, secret_env) or a secret declared in the
-- bridge config (api_key_ref, secret_ref).
CREATE TABLE bridge_blueprints (
    blueprint_id        uuid PRIMARY KEY REFERENCES agent_blueprints (id) ON DELETE CASCADE,
    runtime             text NOT NULL DEFAULT 'echo' CHECK (runtime IN ('echo', 'openai', 'webhook')),
    settings            jsonb NOT NULL DEFAULT '{}'::jsonb,
    system_instructions text,
    context_events      integer CHECK (context_events BETWEEN 0 AND 200),
    failure_notice      boolean,
    message_type        text CHECK (message_type IN ('notice', 'text')),
    source              text NOT NULL DEFAULT 'platform' CHECK (source IN ('config', 'platform', 'admin')),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE bridge_blueprints IS 'How a blueprint''s agents answer: runtime, its settings (no secrets), system instructions; written by the platform, the admin API or the config seed';
COMMENT ON COLUMN bridge_blueprints.runtime IS 'echo | openai | webhook';
COMMENT ON COLUMN bridge_blueprints.settings IS 'Runtime settings: openai {base_url, api_key_env | api_key_ref, temperature, max_tokens, stream, timeout}; webhook {url, secret_env | secret_ref, timeout}';
COMMENT ON COLUMN bridge_blueprints.system_instructions IS 'The system prompt (seed 002 system_instructions)';
COMMENT ON COLUMN bridge_blueprints.context_events IS 'Recent room events a run gets (default 20)';
COMMENT ON COLUMN bridge_blueprints.failure_notice IS 'Whether a failed run posts a notice (default: yes except for webhooks)';
COMMENT ON COLUMN bridge_blueprints.message_type IS 'notice | text (default notice)';
COMMENT ON COLUMN bridge_blueprints.source IS 'Who wrote the row: config (the seed may update it), platform or admin (the seed never touches it)';

CREATE TABLE bridge_agents (
    agent_id           uuid PRIMARY KEY REFERENCES agents (id) ON DELETE CASCADE,
    active             boolean NOT NULL DEFAULT true,
    instructions       text,
    model              text,
    idle_after_seconds integer CHECK (idle_after_seconds > 0),
    respond            text CHECK (respond IN ('mentions', 'all', 'never')),
    message_type       text CHECK (message_type IN ('notice', 'text')),
    avatar             text,
    source             text NOT NULL DEFAULT 'platform' CHECK (source IN ('config', 'platform', 'admin')),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE bridge_agents IS 'Per-agent behaviour overrides and the active flag (seed 002 active / seed 004 isActive); an agent without a row is active with its blueprint''s behaviour';
COMMENT ON COLUMN bridge_agents.active IS 'false: the agent answers nothing, refuses invites, leaves its rooms, and its keys get 403';
COMMENT ON COLUMN bridge_agents.instructions IS 'Added to the blueprint''s system instructions';
COMMENT ON COLUMN bridge_agents.model IS 'Overrides the blueprint''s model';
COMMENT ON COLUMN bridge_agents.idle_after_seconds IS 'Overrides bridge.session_idle_after';
COMMENT ON COLUMN bridge_agents.respond IS 'Default of when it answers in a channel: mentions | all | never';
COMMENT ON COLUMN bridge_agents.message_type IS 'Overrides the blueprint''s message type';
COMMENT ON COLUMN bridge_agents.avatar IS 'mxc:// URI (or a file path, for config-declared agents)';
COMMENT ON COLUMN bridge_agents.source IS 'config | platform | admin (see bridge_blueprints.source)';

-- Operators' keys for the admin API (capability bridge.admin), hashed like agent keys.
CREATE TABLE bridge_admin_keys (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    key_prefix   text NOT NULL,
    key_hash     text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);
COMMENT ON TABLE bridge_admin_keys IS 'Admin API keys (capability bridge.admin); only a SHA-256 of each key is stored';
INSERT INTO capabilities (code, description) VALUES
    ('bridge.admin', 'The admin (provisioning) API: microDAOs, blueprints, agents, keys, rooms');

-- Bot commands are durable follow-up jobs too.
ALTER TABLE bridge_jobs DROP CONSTRAINT bridge_jobs_kind_check;
ALTER TABLE bridge_jobs ADD CONSTRAINT bridge_jobs_kind_check CHECK (kind IN ('join', 'reject', 'command'));
ALTER TABLE bridge_jobs ADD COLUMN event_id text;
ALTER TABLE bridge_jobs ADD COLUMN body text;
COMMENT ON COLUMN bridge_jobs.event_id IS 'The command''s event (commands)';
COMMENT ON COLUMN bridge_jobs.body IS 'The command text (commands)';
DROP INDEX bridge_jobs_pending_uidx;
CREATE UNIQUE INDEX bridge_jobs_pending_uidx ON bridge_jobs (kind, room_id, user_id) WHERE status = 'pending' AND kind <> 'command';
CREATE UNIQUE INDEX bridge_jobs_command_uidx ON bridge_jobs (event_id) WHERE kind = 'command';

-- Changes to what defines agents are announced, so the bridge reloads within a second.
CREATE FUNCTION bridge_notify_agents() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('daarion_bridge_agents', TG_TABLE_NAME);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER agents_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON agents
    FOR EACH STATEMENT EXECUTE FUNCTION bridge_notify_agents();
CREATE TRIGGER agent_blueprints_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON agent_blueprints
    FOR EACH STATEMENT EXECUTE FUNCTION bridge_notify_agents();
CREATE TRIGGER bridge_agents_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON bridge_agents
    FOR EACH STATEMENT EXECUTE FUNCTION bridge_notify_agents();
CREATE TRIGGER bridge_blueprints_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON bridge_blueprints
    FOR EACH STATEMENT EXECUTE FUNCTION bridge_notify_agents();
CREATE TRIGGER microdaos_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON microdaos
    FOR EACH STATEMENT EXECUTE FUNCTION bridge_notify_agents();
