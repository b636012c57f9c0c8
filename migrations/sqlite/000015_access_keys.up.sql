-- Issue #26: access keys as seed 001 has them (see the PostgreSQL migration). agent_id loses its
-- NOT NULL by editing the stored definition (the procedure of migration 12; the index created
-- below changes the schema version, so every connection reloads it).

ALTER TABLE access_keys ADD COLUMN subject_kind text NOT NULL DEFAULT 'agent'
    CHECK (subject_kind IN ('user', 'agent', 'integration', 'embassy'));
ALTER TABLE access_keys ADD COLUMN subject_id TEXT;
ALTER TABLE access_keys ADD COLUMN status text NOT NULL DEFAULT 'active'
    CHECK (status IN ('active', 'revoked', 'expired'));
UPDATE access_keys SET subject_id = agent_id,
    status = CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
                  WHEN expires_at IS NOT NULL AND expires_at <= strftime('%Y-%m-%dT%H:%M:%fZ','now') THEN 'expired'
                  ELSE 'active' END;
PRAGMA writable_schema = ON;
UPDATE sqlite_master SET sql = replace(sql, 'agent_id     TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,', 'agent_id     TEXT REFERENCES agents (id) ON DELETE CASCADE,')
    WHERE type = 'table' AND name = 'access_keys';
PRAGMA writable_schema = RESET;
CREATE TEMP TABLE bridge_migration_15 (
    ok INTEGER CONSTRAINT the_table_definition_was_not_as_expected CHECK (ok)
);
INSERT INTO bridge_migration_15 (ok) SELECT instr(sql, 'agent_id     TEXT REFERENCES agents (id) ON DELETE CASCADE,') > 0
    FROM sqlite_master WHERE type = 'table' AND name = 'access_keys';
DROP TABLE bridge_migration_15;
CREATE INDEX access_keys_subject_idx ON access_keys (subject_kind, subject_id);

INSERT INTO capabilities (code, description) VALUES
    ('bridge.admin', 'The admin (provisioning) API: microDAOs, blueprints, agents, channels, keys (integration keys only)')
    ON CONFLICT (code) DO NOTHING;
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
    WHERE true
    ON CONFLICT DO NOTHING;
