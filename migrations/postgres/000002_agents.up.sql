-- Agents as virtual users: access keys with capabilities (the microDAO access schema), the
-- durable outbox of puppet sends, and per-puppet homeserver state.

CREATE TABLE capabilities (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code        text NOT NULL UNIQUE,
    description text NOT NULL
);
COMMENT ON TABLE capabilities IS 'What an access key may do';
COMMENT ON COLUMN capabilities.id IS 'Primary key';
COMMENT ON COLUMN capabilities.code IS 'Capability code, e.g. chat.message.send';
COMMENT ON COLUMN capabilities.description IS 'What the capability allows';

INSERT INTO capabilities (code, description) VALUES
    ('chat.message.read', 'List the agent''s channels and sessions, read channel messages'),
    ('chat.message.send', 'Send, edit, redact and react as the agent; typing; read markers'),
    ('agent.run.invoke', 'Report agent runs and answer them through the agent API'),
    ('agent.settings.write', 'Change the agent''s per-channel settings');

CREATE TABLE bundles (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code        text NOT NULL UNIQUE,
    description text NOT NULL
);
COMMENT ON TABLE bundles IS 'Named sets of capabilities to grant together';
COMMENT ON COLUMN bundles.id IS 'Primary key';
COMMENT ON COLUMN bundles.code IS 'Bundle code, e.g. agent.runtime';
COMMENT ON COLUMN bundles.description IS 'What the bundle is for';

CREATE TABLE bundle_caps (
    bundle_id uuid NOT NULL REFERENCES bundles (id) ON DELETE CASCADE,
    cap_id    uuid NOT NULL REFERENCES capabilities (id) ON DELETE CASCADE,
    PRIMARY KEY (bundle_id, cap_id)
);
COMMENT ON TABLE bundle_caps IS 'Capabilities of a bundle';
COMMENT ON COLUMN bundle_caps.bundle_id IS 'The bundle';
COMMENT ON COLUMN bundle_caps.cap_id IS 'A capability in it';

INSERT INTO bundles (code, description) VALUES
    ('agent.runtime', 'Everything an agent runtime needs: read, send, runs, settings');
INSERT INTO bundle_caps (bundle_id, cap_id)
    SELECT b.id, c.id FROM bundles b CROSS JOIN capabilities c WHERE b.code = 'agent.runtime';

CREATE TABLE access_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id     uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    name         text NOT NULL,
    key_prefix   text NOT NULL,
    key_hash     text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);
COMMENT ON TABLE access_keys IS 'API keys of agent runtimes; each belongs to one agent';
COMMENT ON COLUMN access_keys.id IS 'Primary key';
COMMENT ON COLUMN access_keys.agent_id IS 'The agent the key acts as';
COMMENT ON COLUMN access_keys.name IS 'Label given at creation';
COMMENT ON COLUMN access_keys.key_prefix IS 'First characters of the key, to recognise it in listings';
COMMENT ON COLUMN access_keys.key_hash IS 'SHA-256 (hex) of the whole key; the key itself is shown once and never stored';
COMMENT ON COLUMN access_keys.created_at IS 'When the key was created';
COMMENT ON COLUMN access_keys.expires_at IS 'When the key stops working, if ever';
COMMENT ON COLUMN access_keys.revoked_at IS 'When the key was revoked';
COMMENT ON COLUMN access_keys.last_used_at IS 'Last authenticated use (updated at most once a minute)';
CREATE INDEX access_keys_agent_id_idx ON access_keys (agent_id);

CREATE TABLE access_key_caps (
    key_id uuid NOT NULL REFERENCES access_keys (id) ON DELETE CASCADE,
    cap_id uuid NOT NULL REFERENCES capabilities (id) ON DELETE CASCADE,
    PRIMARY KEY (key_id, cap_id)
);
COMMENT ON TABLE access_key_caps IS 'Capabilities an access key holds';
COMMENT ON COLUMN access_key_caps.key_id IS 'The key';
COMMENT ON COLUMN access_key_caps.cap_id IS 'A capability it holds';

-- The sweeper only ever looks at active sessions: its work does not grow with closed ones.
CREATE INDEX agent_sessions_active_idx ON agent_sessions (last_activity_at) WHERE status = 'active';

CREATE TABLE agent_outbox (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id        uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    room_id         text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('message', 'redaction')),
    event_type      text NOT NULL,
    content         jsonb NOT NULL,
    redacts         text,
    txn_id          text NOT NULL UNIQUE,
    idempotency_key text,
    status          text NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    event_id        text,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    UNIQUE (agent_id, idempotency_key)
);
COMMENT ON TABLE agent_outbox IS 'Durable queue of what puppets send: survives restarts and homeserver outages';
COMMENT ON COLUMN agent_outbox.id IS 'Primary key';
COMMENT ON COLUMN agent_outbox.agent_id IS 'The sending agent';
COMMENT ON COLUMN agent_outbox.room_id IS 'Target Matrix room';
COMMENT ON COLUMN agent_outbox.kind IS 'message (any message-like event) | redaction';
COMMENT ON COLUMN agent_outbox.event_type IS 'Matrix event type (m.room.message, m.reaction, m.room.redaction)';
COMMENT ON COLUMN agent_outbox.content IS 'Event content as sent';
COMMENT ON COLUMN agent_outbox.redacts IS 'Event redacted, for redactions';
COMMENT ON COLUMN agent_outbox.txn_id IS 'Client transaction id, derived from the content and reused on every retry';
COMMENT ON COLUMN agent_outbox.idempotency_key IS 'Idempotency-Key of the API request that queued it';
COMMENT ON COLUMN agent_outbox.status IS 'pending | sent | failed';
COMMENT ON COLUMN agent_outbox.attempts IS 'Send attempts so far';
COMMENT ON COLUMN agent_outbox.event_id IS 'Matrix event id once sent';
COMMENT ON COLUMN agent_outbox.error IS 'Last error; the final one when failed';
COMMENT ON COLUMN agent_outbox.created_at IS 'When it was queued';
COMMENT ON COLUMN agent_outbox.sent_at IS 'When the homeserver accepted it';
CREATE INDEX agent_outbox_pending_idx ON agent_outbox (room_id, created_at) WHERE status = 'pending';

CREATE TABLE bridge_puppets (
    agent_id     uuid PRIMARY KEY REFERENCES agents (id) ON DELETE CASCADE,
    registered   boolean NOT NULL DEFAULT false,
    display_name text,
    avatar_url   text,
    avatar_source text
);
COMMENT ON TABLE bridge_puppets IS 'What the homeserver knows of each agent puppet, so registration and profile sync happen once';
COMMENT ON COLUMN bridge_puppets.agent_id IS 'The agent';
COMMENT ON COLUMN bridge_puppets.registered IS 'The puppet user exists on the homeserver';
COMMENT ON COLUMN bridge_puppets.display_name IS 'Display name last set on the homeserver';
COMMENT ON COLUMN bridge_puppets.avatar_url IS 'mxc:// avatar last set on the homeserver';
COMMENT ON COLUMN bridge_puppets.avatar_source IS 'Configured avatar (mxc URI or local file) the avatar_url came from';
