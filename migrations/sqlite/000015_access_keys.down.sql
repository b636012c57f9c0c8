DELETE FROM access_keys WHERE agent_id IS NULL;
DELETE FROM bundles WHERE code IN ('role.owner', 'role.admin', 'role.member', 'role.guest', 'plan.free', 'integration.admin');
DELETE FROM capabilities WHERE code = 'bridge.admin';
PRAGMA writable_schema = ON;
UPDATE sqlite_master SET sql = replace(sql, 'agent_id     TEXT REFERENCES agents (id) ON DELETE CASCADE,', 'agent_id     TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,')
    WHERE type = 'table' AND name = 'access_keys';
PRAGMA writable_schema = RESET;
DROP INDEX IF EXISTS access_keys_subject_idx;
ALTER TABLE access_keys DROP COLUMN status;
ALTER TABLE access_keys DROP COLUMN subject_id;
ALTER TABLE access_keys DROP COLUMN subject_kind;
