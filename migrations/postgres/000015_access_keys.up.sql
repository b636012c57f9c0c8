-- Issue #26: access keys as seed 001 has them. A key has a subject (`user`, `agent`,
-- `integration`, `embassy`) and a status (`active`, `revoked`, `expired`) next to the timestamps
-- that decide it; today's agent keys become `agent` keys. Integration keys may hold
-- `bridge.admin` (the admin API), user keys read the channels their person is in. The seed's
-- role and plan bundles are seeded as far as the bridge's capabilities go.

ALTER TABLE access_keys ADD COLUMN subject_kind text NOT NULL DEFAULT 'agent'
    CHECK (subject_kind IN ('user', 'agent', 'integration', 'embassy'));
ALTER TABLE access_keys ADD COLUMN subject_id uuid;
ALTER TABLE access_keys ADD COLUMN status text NOT NULL DEFAULT 'active'
    CHECK (status IN ('active', 'revoked', 'expired'));
UPDATE access_keys SET subject_id = agent_id,
    status = CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
                  WHEN expires_at IS NOT NULL AND expires_at <= now() THEN 'expired'
                  ELSE 'active' END;
ALTER TABLE access_keys ALTER COLUMN agent_id DROP NOT NULL;
COMMENT ON TABLE access_keys IS 'API keys (seed 001): of an agent runtime, a person, an integration or an embassy';
COMMENT ON COLUMN access_keys.agent_id IS 'The agent an agent key acts as (subject_kind agent); NULL for other keys';
COMMENT ON COLUMN access_keys.subject_kind IS 'Seed 001: user | agent | integration | embassy';
COMMENT ON COLUMN access_keys.subject_id IS 'Seed 001: agents.id of an agent key, users.id of a user key; NULL for integrations and embassies (named by the key''s name)';
COMMENT ON COLUMN access_keys.status IS 'Seed 001: active | revoked | expired (kept with revoked_at and expires_at; an expired key is marked when it is next presented or swept)';
CREATE INDEX access_keys_subject_idx ON access_keys (subject_kind, subject_id);

INSERT INTO capabilities (code, description) VALUES
    ('bridge.admin', 'The admin (provisioning) API: microDAOs, blueprints, agents, channels, keys (integration keys only)')
    ON CONFLICT (code) DO NOTHING;

-- Seed 001's bundles, as far as the bridge's capabilities go.
INSERT INTO bundles (code, description) VALUES
    ('role.owner', 'A microDAO owner''s key: read and write chat, agent settings'),
    ('role.admin', 'A microDAO admin''s key: read and write chat, agent settings'),
    ('role.member', 'A member''s key: read and write chat'),
    ('role.guest', 'A guest''s key: read chat'),
    ('plan.free', 'The free plan: read chat'),
    ('integration.admin', 'An integration that provisions the bridge: the admin API')
    ON CONFLICT (code) DO NOTHING;
INSERT INTO bundle_caps (bundle_id, cap_id)
    SELECT b.id, c.id FROM bundles b JOIN capabilities c ON
        (b.code IN ('role.owner', 'role.admin') AND c.code IN ('chat.message.read', 'chat.message.send', 'agent.settings.write'))
        OR (b.code = 'role.member' AND c.code IN ('chat.message.read', 'chat.message.send'))
        OR (b.code IN ('role.guest', 'plan.free') AND c.code = 'chat.message.read')
        OR (b.code = 'integration.admin' AND c.code = 'bridge.admin')
    ON CONFLICT DO NOTHING;
