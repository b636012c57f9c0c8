-- Back to migration 11's schema: the triggers and tables of migration 12 go, and the stored
-- definitions get their earlier constraints back (the same procedure as the up migration).
DROP TRIGGER IF EXISTS microdaos_owner;
DROP TRIGGER IF EXISTS channels_microdao;
DROP TRIGGER IF EXISTS channel_members_microdao_delete;
DROP TRIGGER IF EXISTS channel_members_microdao_update;
DROP TRIGGER IF EXISTS channel_members_microdao_insert;
DROP TRIGGER IF EXISTS bridge_member_sync_run;
DROP TABLE IF EXISTS bridge_member_sync;
DROP VIEW IF EXISTS bridge_microdao_member_wants;
DROP TABLE IF EXISTS bridge_microdao_members;
DROP TRIGGER IF EXISTS users_event;
DROP TRIGGER IF EXISTS audit_log_event;
DROP TRIGGER IF EXISTS audit_log_no_delete;
DROP TRIGGER IF EXISTS audit_log_no_update;
DROP TRIGGER IF EXISTS microdaos_event_insert;
DROP TRIGGER IF EXISTS microdaos_event_update;
DROP TRIGGER IF EXISTS microdaos_event_delete;
DROP TRIGGER IF EXISTS agent_blueprints_event_insert;
DROP TRIGGER IF EXISTS agent_blueprints_event_update;
DROP TRIGGER IF EXISTS agent_blueprints_event_delete;
DROP TRIGGER IF EXISTS agents_event_insert;
DROP TRIGGER IF EXISTS agents_event_update;
DROP TRIGGER IF EXISTS agents_event_delete;
DROP TRIGGER IF EXISTS bridge_blueprints_event;
DROP TRIGGER IF EXISTS bridge_agents_event;
DROP INDEX IF EXISTS audit_log_user_id_idx;
ALTER TABLE audit_log DROP COLUMN data;
ALTER TABLE audit_log DROP COLUMN resource_kind;
ALTER TABLE audit_log DROP COLUMN team_id;
ALTER TABLE audit_log DROP COLUMN user_id;
PRAGMA writable_schema = ON;
UPDATE sqlite_master SET sql = replace(sql, 'owner_user_id TEXT NOT NULL REFERENCES users (id),', 'owner_user_id TEXT REFERENCES users (id) ON DELETE SET NULL,') WHERE type = 'table' AND name = 'microdaos';
UPDATE sqlite_master SET sql = replace(sql, 'model        text NOT NULL,', 'model        text,') WHERE type = 'table' AND name = 'agent_blueprints';
UPDATE sqlite_master SET sql = replace(sql, 'kind          text NOT NULL CHECK (kind IN (''system'', ''assistant'', ''node'', ''quest'')),', 'kind          text NOT NULL CHECK (kind IN (''assistant'', ''specialist'', ''orchestrator'', ''service'', ''system'', ''bot'')),') WHERE type = 'table' AND name = 'agents';
UPDATE sqlite_master SET sql = replace(sql, 'blueprint_id  TEXT NOT NULL REFERENCES agent_blueprints (id),', 'blueprint_id  TEXT REFERENCES agent_blueprints (id) ON DELETE SET NULL,') WHERE type = 'table' AND name = 'agents';
UPDATE sqlite_master SET sql = replace(sql, 'matrix_room_id      text NOT NULL UNIQUE,', 'matrix_room_id      text UNIQUE,') WHERE type = 'table' AND name = 'channels';
UPDATE sqlite_master SET sql = replace(sql, 'sender_type     text NOT NULL CHECK (sender_type IN (''human'', ''agent'')),', 'sender_type     text NOT NULL CHECK (sender_type IN (''human'', ''agent'', ''system'')),') WHERE type = 'table' AND name = 'messages';
UPDATE sqlite_master SET sql = replace(sql, 'created_at      TEXT NOT NULL DEFAULT (strftime(''%Y-%m-%dT%H:%M:%fZ'',''now'')),', 'created_at      TEXT NOT NULL,') WHERE type = 'table' AND name = 'messages';
UPDATE sqlite_master SET sql = replace(sql, 'created_at    TEXT NOT NULL DEFAULT (strftime(''%Y-%m-%dT%H:%M:%fZ'',''now'')),', 'created_at    TEXT NOT NULL,') WHERE type = 'table' AND name = 'outbox_events';
UPDATE sqlite_master SET sql = replace(sql, 'created_at TEXT NOT NULL DEFAULT (strftime(''%Y-%m-%dT%H:%M:%fZ'',''now''))
)', 'created_at TEXT NOT NULL
)') WHERE type = 'table' AND name = 'audit_log';
PRAGMA writable_schema = RESET;
UPDATE agent_blueprints SET model = NULL WHERE model = '';
UPDATE microdaos SET owner_user_id = NULL
    WHERE owner_user_id = (SELECT id FROM users WHERE external_id = 'bridge:bot');
DELETE FROM users WHERE external_id = 'bridge:bot';
DROP TABLE IF EXISTS bridge_settings;
