-- Issue #26, the seeds to the letter (see the PostgreSQL migration for the reasons): the ERD's
-- NOT NULLs and CHECK sets, the defaults PostgreSQL has, seed 001's audit columns, an
-- append-only audit log, microDAO membership from channel membership, and events appended by
-- triggers.
--
-- SQLite cannot change a column's constraints in place, and migrations run inside a
-- transaction, where foreign keys cannot be turned off for a table rebuild (dropping a table
-- would fire its cascades). So the data is brought in line first, and then the tables' stored
-- definitions are edited (https://sqlite.org/lang_altertable.html#otheralter, the procedure for
-- constraints and defaults, which leaves the rows' format alone). Every edit is checked to have
-- matched, and the DDL after the edits changes the schema version, so every connection reloads
-- the definitions.

CREATE TABLE bridge_settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

INSERT INTO users (external_id, handle) VALUES ('bridge:bot', 'daarion-bridge')
    ON CONFLICT (external_id) DO NOTHING;

-- The data first: owners, models, kinds, blueprints as the ERD has them.
UPDATE microdaos SET owner_user_id = (SELECT id FROM users WHERE external_id = 'bridge:bot')
    WHERE owner_user_id IS NULL;
UPDATE agent_blueprints SET model = '' WHERE model IS NULL;
INSERT INTO agent_blueprints (code, description, model) VALUES ('echo', 'Repeats what it is told (the default blueprint)', '')
    ON CONFLICT (code) DO NOTHING;
INSERT INTO bridge_blueprints (blueprint_id, runtime, source)
    SELECT id, 'echo', 'config' FROM agent_blueprints WHERE code = 'echo'
    ON CONFLICT (blueprint_id) DO NOTHING;
UPDATE agents SET blueprint_id = (SELECT id FROM agent_blueprints WHERE code = 'echo')
    WHERE blueprint_id IS NULL;
-- Channels without a room cannot be carried over: the migration stops (rather than drop them).
CREATE TEMP TABLE bridge_migration_12 (
    n INTEGER CONSTRAINT channels_without_a_matrix_room_id_must_get_a_room_or_go CHECK (n = 0)
);
INSERT INTO bridge_migration_12 (n) SELECT COUNT(*) FROM channels WHERE matrix_room_id IS NULL;
DROP TABLE bridge_migration_12;

-- Then the definitions.
PRAGMA writable_schema = ON;
UPDATE sqlite_master SET sql = replace(sql, 'owner_user_id TEXT REFERENCES users (id) ON DELETE SET NULL,', 'owner_user_id TEXT NOT NULL REFERENCES users (id),') WHERE type = 'table' AND name = 'microdaos';
UPDATE sqlite_master SET sql = replace(sql, 'model        text,', 'model        text NOT NULL,') WHERE type = 'table' AND name = 'agent_blueprints';
UPDATE sqlite_master SET sql = replace(sql, 'kind          text NOT NULL CHECK (kind IN (''assistant'', ''specialist'', ''orchestrator'', ''service'', ''system'', ''bot'')),', 'kind          text NOT NULL CHECK (kind IN (''system'', ''assistant'', ''node'', ''quest'')),') WHERE type = 'table' AND name = 'agents';
UPDATE sqlite_master SET sql = replace(sql, 'blueprint_id  TEXT REFERENCES agent_blueprints (id) ON DELETE SET NULL,', 'blueprint_id  TEXT NOT NULL REFERENCES agent_blueprints (id),') WHERE type = 'table' AND name = 'agents';
UPDATE sqlite_master SET sql = replace(sql, 'matrix_room_id      text UNIQUE,', 'matrix_room_id      text NOT NULL UNIQUE,') WHERE type = 'table' AND name = 'channels';
UPDATE sqlite_master SET sql = replace(sql, 'sender_type     text NOT NULL CHECK (sender_type IN (''human'', ''agent'', ''system'')),', 'sender_type     text NOT NULL CHECK (sender_type IN (''human'', ''agent'')),') WHERE type = 'table' AND name = 'messages';
UPDATE sqlite_master SET sql = replace(sql, 'created_at      TEXT NOT NULL,', 'created_at      TEXT NOT NULL DEFAULT (strftime(''%Y-%m-%dT%H:%M:%fZ'',''now'')),') WHERE type = 'table' AND name = 'messages';
UPDATE sqlite_master SET sql = replace(sql, 'created_at    TEXT NOT NULL,', 'created_at    TEXT NOT NULL DEFAULT (strftime(''%Y-%m-%dT%H:%M:%fZ'',''now'')),') WHERE type = 'table' AND name = 'outbox_events';
UPDATE sqlite_master SET sql = replace(sql, 'created_at TEXT NOT NULL
)', 'created_at TEXT NOT NULL DEFAULT (strftime(''%Y-%m-%dT%H:%M:%fZ'',''now''))
)') WHERE type = 'table' AND name = 'audit_log';
PRAGMA writable_schema = RESET;
-- Old agent kinds map onto the ERD's (as PostgreSQL's migration 6 did); only the new CHECK
-- allows the new values.
UPDATE agents SET kind = CASE kind
    WHEN 'specialist' THEN 'assistant' WHEN 'orchestrator' THEN 'system'
    WHEN 'service' THEN 'node' WHEN 'bot' THEN 'system' ELSE kind END;
-- Every edit matched (a definition written differently would leave its constraint out).
CREATE TEMP TABLE bridge_migration_12 (
    what TEXT,
    ok   INTEGER CONSTRAINT the_table_definition_was_not_as_expected CHECK (ok)
);
INSERT INTO bridge_migration_12 (what, ok) SELECT 'microdaos', instr(sql, 'owner_user_id TEXT NOT NULL REFERENCES users (id),') > 0 FROM sqlite_master WHERE type = 'table' AND name = 'microdaos';
INSERT INTO bridge_migration_12 (what, ok) SELECT 'agent_blueprints', instr(sql, 'model        text NOT NULL,') > 0 FROM sqlite_master WHERE type = 'table' AND name = 'agent_blueprints';
INSERT INTO bridge_migration_12 (what, ok) SELECT 'agents', instr(sql, 'kind          text NOT NULL CHECK (kind IN (''system'', ''assistant'', ''node'', ''quest'')),') > 0 FROM sqlite_master WHERE type = 'table' AND name = 'agents';
INSERT INTO bridge_migration_12 (what, ok) SELECT 'agents', instr(sql, 'blueprint_id  TEXT NOT NULL REFERENCES agent_blueprints (id),') > 0 FROM sqlite_master WHERE type = 'table' AND name = 'agents';
INSERT INTO bridge_migration_12 (what, ok) SELECT 'channels', instr(sql, 'matrix_room_id      text NOT NULL UNIQUE,') > 0 FROM sqlite_master WHERE type = 'table' AND name = 'channels';
INSERT INTO bridge_migration_12 (what, ok) SELECT 'messages', instr(sql, 'sender_type     text NOT NULL CHECK (sender_type IN (''human'', ''agent'')),') > 0 FROM sqlite_master WHERE type = 'table' AND name = 'messages';
INSERT INTO bridge_migration_12 (what, ok) SELECT 'messages', instr(sql, 'created_at      TEXT NOT NULL DEFAULT (strftime(''%Y-%m-%dT%H:%M:%fZ'',''now'')),') > 0 FROM sqlite_master WHERE type = 'table' AND name = 'messages';
INSERT INTO bridge_migration_12 (what, ok) SELECT 'outbox_events', instr(sql, 'created_at    TEXT NOT NULL DEFAULT (strftime(''%Y-%m-%dT%H:%M:%fZ'',''now'')),') > 0 FROM sqlite_master WHERE type = 'table' AND name = 'outbox_events';
INSERT INTO bridge_migration_12 (what, ok) SELECT 'audit_log', instr(sql, 'created_at TEXT NOT NULL DEFAULT (strftime(''%Y-%m-%dT%H:%M:%fZ'',''now''))
)') > 0 FROM sqlite_master WHERE type = 'table' AND name = 'audit_log';
DROP TABLE bridge_migration_12;

-- Seed 001's audit columns (see the PostgreSQL migration).
ALTER TABLE audit_log ADD COLUMN user_id TEXT;
ALTER TABLE audit_log ADD COLUMN team_id TEXT;
ALTER TABLE audit_log ADD COLUMN resource_kind TEXT GENERATED ALWAYS AS (substr(action, 1, instr(action || '.', '.') - 1)) VIRTUAL;
ALTER TABLE audit_log ADD COLUMN data TEXT GENERATED ALWAYS AS (details) VIRTUAL;
UPDATE audit_log SET user_id = (SELECT u.id FROM users u WHERE u.matrix_id = audit_log.actor_id)
    WHERE actor_type = 'user';
CREATE INDEX audit_log_user_id_idx ON audit_log (user_id) WHERE user_id IS NOT NULL;

-- Append-only: never updated; deleted only below the pruner's cutoff, which it sets in its own
-- transaction.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only (UPDATE refused)');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    WHEN COALESCE(OLD.created_at < (SELECT value FROM bridge_settings WHERE key = 'audit_prune_before'), 0) = 0
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only (DELETE refused)');
END;

CREATE TRIGGER audit_log_event AFTER INSERT ON audit_log
BEGIN
    INSERT INTO outbox_partitions (partition_key, last_seq) SELECT 'audit', 1 WHERE 1 AND NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off')
        ON CONFLICT (partition_key) DO UPDATE SET last_seq = last_seq + 1;
    INSERT INTO outbox_events (id, topic, payload, created_at, partition_key, seq)
        SELECT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))), 'audit.event', json_object('v', 1, 'audit_id', NEW.id, 'actor_type', NEW.actor_type, 'actor_id', NEW.actor_id, 'user_id', NEW.user_id, 'team_id', NEW.team_id, 'action', NEW.action, 'target', NEW.target, 'resource_kind', substr(NEW.action, 1, instr(NEW.action || '.', '.') - 1), 'outcome', NEW.outcome, 'data', json(NEW.details), 'at', NEW.created_at), strftime('%Y-%m-%dT%H:%M:%fZ','now'), 'audit',
        (SELECT last_seq FROM outbox_partitions WHERE partition_key = 'audit') WHERE 1 AND NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off');
END;
CREATE TRIGGER users_event AFTER INSERT ON users WHEN NEW.external_id LIKE 'matrix:%'
BEGIN
    INSERT INTO outbox_partitions (partition_key, last_seq) SELECT 'users', 1 WHERE 1 AND NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off')
        ON CONFLICT (partition_key) DO UPDATE SET last_seq = last_seq + 1;
    INSERT INTO outbox_events (id, topic, payload, created_at, partition_key, seq)
        SELECT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))), 'user.created', json_object('v', 1, 'user_id', NEW.id, 'external_id', NEW.external_id, 'matrix_id', NEW.matrix_id, 'handle', NEW.handle, 'at', NEW.created_at), strftime('%Y-%m-%dT%H:%M:%fZ','now'), 'users',
        (SELECT last_seq FROM outbox_partitions WHERE partition_key = 'users') WHERE 1 AND NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off');
END;

CREATE TABLE bridge_microdao_members (
    microdao_id TEXT NOT NULL REFERENCES microdaos (id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    fresh       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (microdao_id, user_id)
);

CREATE VIEW bridge_microdao_member_wants AS
    SELECT c.microdao_id, cm.member_user_id AS user_id,
        CASE WHEN max(md.owner_user_id = cm.member_user_id) THEN 'owner'
             WHEN max(cm.role = 'owner') THEN 'admin'
             WHEN min(cm.role = 'guest') THEN 'guest'
             ELSE 'member' END AS role
    FROM channel_members cm JOIN channels c ON c.id = cm.channel_id JOIN microdaos md ON md.id = c.microdao_id
    WHERE cm.left_at IS NULL AND cm.member_user_id IS NOT NULL AND c.visibility <> 'microdao'
    GROUP BY c.microdao_id, cm.member_user_id;

-- Pairs (microDAO, person) to bring in line; the trigger on it does the work (SQLite triggers
-- cannot call functions), then removes the pair.
CREATE TABLE bridge_member_sync (
    microdao_id TEXT,
    user_id     TEXT
);
CREATE TRIGGER bridge_member_sync_run AFTER INSERT ON bridge_member_sync
BEGIN
    -- Removed: the person has no active channel of the microDAO left.
    INSERT INTO outbox_partitions (partition_key, last_seq) SELECT 'microdao:' || NEW.microdao_id, 1 FROM microdao_members m WHERE m.microdao_id = NEW.microdao_id AND m.user_id = NEW.user_id AND EXISTS (SELECT 1 FROM bridge_microdao_members b WHERE b.microdao_id = NEW.microdao_id AND b.user_id = NEW.user_id) AND (SELECT w.role FROM bridge_microdao_member_wants w WHERE w.microdao_id = NEW.microdao_id AND w.user_id = NEW.user_id) IS NULL AND NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off')
        ON CONFLICT (partition_key) DO UPDATE SET last_seq = last_seq + 1;
    INSERT INTO outbox_events (id, topic, payload, created_at, partition_key, seq)
        SELECT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))), 'microdao.member.removed', json_object('v', 1, 'microdao_id', m.microdao_id, 'member_id', m.id, 'user_id', m.user_id, 'role', NULL, 'previous_role', m.role, 'at', strftime('%Y-%m-%dT%H:%M:%fZ','now')), strftime('%Y-%m-%dT%H:%M:%fZ','now'), 'microdao:' || NEW.microdao_id,
        (SELECT last_seq FROM outbox_partitions WHERE partition_key = 'microdao:' || NEW.microdao_id) FROM microdao_members m WHERE m.microdao_id = NEW.microdao_id AND m.user_id = NEW.user_id AND EXISTS (SELECT 1 FROM bridge_microdao_members b WHERE b.microdao_id = NEW.microdao_id AND b.user_id = NEW.user_id) AND (SELECT w.role FROM bridge_microdao_member_wants w WHERE w.microdao_id = NEW.microdao_id AND w.user_id = NEW.user_id) IS NULL AND NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off');
    DELETE FROM microdao_members WHERE microdao_id = NEW.microdao_id AND user_id = NEW.user_id AND EXISTS (SELECT 1 FROM bridge_microdao_members b WHERE b.microdao_id = NEW.microdao_id AND b.user_id = NEW.user_id) AND (SELECT w.role FROM bridge_microdao_member_wants w WHERE w.microdao_id = NEW.microdao_id AND w.user_id = NEW.user_id) IS NULL;
    DELETE FROM bridge_microdao_members WHERE microdao_id = NEW.microdao_id AND user_id = NEW.user_id AND (SELECT w.role FROM bridge_microdao_member_wants w WHERE w.microdao_id = NEW.microdao_id AND w.user_id = NEW.user_id) IS NULL;
    -- The role changed.
    INSERT INTO outbox_partitions (partition_key, last_seq) SELECT 'microdao:' || NEW.microdao_id, 1 FROM microdao_members m WHERE m.microdao_id = NEW.microdao_id AND m.user_id = NEW.user_id AND EXISTS (SELECT 1 FROM bridge_microdao_members b WHERE b.microdao_id = NEW.microdao_id AND b.user_id = NEW.user_id) AND (SELECT w.role FROM bridge_microdao_member_wants w WHERE w.microdao_id = NEW.microdao_id AND w.user_id = NEW.user_id) IS NOT NULL AND m.role <> (SELECT w.role FROM bridge_microdao_member_wants w WHERE w.microdao_id = NEW.microdao_id AND w.user_id = NEW.user_id) AND NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off')
        ON CONFLICT (partition_key) DO UPDATE SET last_seq = last_seq + 1;
    INSERT INTO outbox_events (id, topic, payload, created_at, partition_key, seq)
        SELECT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))), 'microdao.member.role_changed', json_object('v', 1, 'microdao_id', m.microdao_id, 'member_id', m.id, 'user_id', m.user_id, 'role', (SELECT w.role FROM bridge_microdao_member_wants w WHERE w.microdao_id = NEW.microdao_id AND w.user_id = NEW.user_id), 'previous_role', m.role, 'at', strftime('%Y-%m-%dT%H:%M:%fZ','now')), strftime('%Y-%m-%dT%H:%M:%fZ','now'), 'microdao:' || NEW.microdao_id,
        (SELECT last_seq FROM outbox_partitions WHERE partition_key = 'microdao:' || NEW.microdao_id) FROM microdao_members m WHERE m.microdao_id = NEW.microdao_id AND m.user_id = NEW.user_id AND EXISTS (SELECT 1 FROM bridge_microdao_members b WHERE b.microdao_id = NEW.microdao_id AND b.user_id = NEW.user_id) AND (SELECT w.role FROM bridge_microdao_member_wants w WHERE w.microdao_id = NEW.microdao_id AND w.user_id = NEW.user_id) IS NOT NULL AND m.role <> (SELECT w.role FROM bridge_microdao_member_wants w WHERE w.microdao_id = NEW.microdao_id AND w.user_id = NEW.user_id) AND NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off');
    UPDATE microdao_members SET role = (SELECT w.role FROM bridge_microdao_member_wants w WHERE w.microdao_id = NEW.microdao_id AND w.user_id = NEW.user_id) WHERE microdao_id = NEW.microdao_id AND user_id = NEW.user_id AND EXISTS (SELECT 1 FROM bridge_microdao_members b WHERE b.microdao_id = NEW.microdao_id AND b.user_id = NEW.user_id) AND (SELECT w.role FROM bridge_microdao_member_wants w WHERE w.microdao_id = NEW.microdao_id AND w.user_id = NEW.user_id) IS NOT NULL AND role <> (SELECT w.role FROM bridge_microdao_member_wants w WHERE w.microdao_id = NEW.microdao_id AND w.user_id = NEW.user_id);
    -- Added: marked first (fresh), so the event below finds exactly the row added here.
    INSERT INTO bridge_microdao_members (microdao_id, user_id, fresh) SELECT NEW.microdao_id, NEW.user_id, 1
        WHERE EXISTS (SELECT 1 FROM microdaos WHERE id = NEW.microdao_id) AND EXISTS (SELECT 1 FROM users WHERE id = NEW.user_id) AND (SELECT w.role FROM bridge_microdao_member_wants w WHERE w.microdao_id = NEW.microdao_id AND w.user_id = NEW.user_id) IS NOT NULL AND NOT EXISTS (SELECT 1 FROM microdao_members m WHERE m.microdao_id = NEW.microdao_id AND m.user_id = NEW.user_id)
        ON CONFLICT (microdao_id, user_id) DO UPDATE SET fresh = 1;
    INSERT INTO microdao_members (id, microdao_id, user_id, role, created_at) SELECT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))), NEW.microdao_id, NEW.user_id, (SELECT w.role FROM bridge_microdao_member_wants w WHERE w.microdao_id = NEW.microdao_id AND w.user_id = NEW.user_id), strftime('%Y-%m-%dT%H:%M:%fZ','now')
        WHERE EXISTS (SELECT 1 FROM microdaos WHERE id = NEW.microdao_id) AND EXISTS (SELECT 1 FROM users WHERE id = NEW.user_id) AND (SELECT w.role FROM bridge_microdao_member_wants w WHERE w.microdao_id = NEW.microdao_id AND w.user_id = NEW.user_id) IS NOT NULL AND NOT EXISTS (SELECT 1 FROM microdao_members m WHERE m.microdao_id = NEW.microdao_id AND m.user_id = NEW.user_id);
    INSERT INTO outbox_partitions (partition_key, last_seq) SELECT 'microdao:' || NEW.microdao_id, 1 FROM microdao_members m JOIN bridge_microdao_members b ON b.microdao_id = m.microdao_id AND b.user_id = m.user_id WHERE m.microdao_id = NEW.microdao_id AND m.user_id = NEW.user_id AND b.fresh AND NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off')
        ON CONFLICT (partition_key) DO UPDATE SET last_seq = last_seq + 1;
    INSERT INTO outbox_events (id, topic, payload, created_at, partition_key, seq)
        SELECT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))), 'microdao.member.added', json_object('v', 1, 'microdao_id', m.microdao_id, 'member_id', m.id, 'user_id', m.user_id, 'role', m.role, 'previous_role', NULL, 'at', strftime('%Y-%m-%dT%H:%M:%fZ','now')), strftime('%Y-%m-%dT%H:%M:%fZ','now'), 'microdao:' || NEW.microdao_id,
        (SELECT last_seq FROM outbox_partitions WHERE partition_key = 'microdao:' || NEW.microdao_id) FROM microdao_members m JOIN bridge_microdao_members b ON b.microdao_id = m.microdao_id AND b.user_id = m.user_id WHERE m.microdao_id = NEW.microdao_id AND m.user_id = NEW.user_id AND b.fresh AND NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off');
    UPDATE bridge_microdao_members SET fresh = 0 WHERE microdao_id = NEW.microdao_id AND user_id = NEW.user_id AND fresh;
    DELETE FROM bridge_member_sync WHERE rowid = NEW.rowid;
END;

CREATE TRIGGER channel_members_microdao_insert AFTER INSERT ON channel_members
    WHEN NEW.member_user_id IS NOT NULL
BEGIN
    INSERT INTO bridge_member_sync (microdao_id, user_id)
        SELECT microdao_id, NEW.member_user_id FROM channels WHERE id = NEW.channel_id;
END;
CREATE TRIGGER channel_members_microdao_update AFTER UPDATE OF role, left_at, channel_id, member_user_id ON channel_members
BEGIN
    INSERT INTO bridge_member_sync (microdao_id, user_id)
        SELECT microdao_id, OLD.member_user_id FROM channels WHERE id = OLD.channel_id AND OLD.member_user_id IS NOT NULL;
    INSERT INTO bridge_member_sync (microdao_id, user_id)
        SELECT microdao_id, NEW.member_user_id FROM channels WHERE id = NEW.channel_id AND NEW.member_user_id IS NOT NULL;
END;
CREATE TRIGGER channel_members_microdao_delete AFTER DELETE ON channel_members
    WHEN OLD.member_user_id IS NOT NULL
BEGIN
    INSERT INTO bridge_member_sync (microdao_id, user_id)
        SELECT microdao_id, OLD.member_user_id FROM channels WHERE id = OLD.channel_id;
END;
CREATE TRIGGER channels_microdao AFTER UPDATE OF microdao_id, visibility ON channels
    WHEN OLD.microdao_id IS NOT NEW.microdao_id OR OLD.visibility IS NOT NEW.visibility
BEGIN
    INSERT INTO bridge_member_sync (microdao_id, user_id)
        SELECT m.id, cm.member_user_id FROM channel_members cm,
            (SELECT OLD.microdao_id AS id UNION ALL SELECT NEW.microdao_id) AS m
        WHERE cm.channel_id = NEW.id AND cm.member_user_id IS NOT NULL;
END;
CREATE TRIGGER microdaos_owner AFTER UPDATE OF owner_user_id ON microdaos
    WHEN OLD.owner_user_id IS NOT NEW.owner_user_id
BEGIN
    INSERT INTO bridge_member_sync (microdao_id, user_id) VALUES (NEW.id, OLD.owner_user_id), (NEW.id, NEW.owner_user_id);
END;

-- The people already in channels become members now.
INSERT INTO bridge_member_sync (microdao_id, user_id) SELECT microdao_id, user_id FROM bridge_microdao_member_wants;

-- Catalog events (see the PostgreSQL migration).
CREATE TRIGGER microdaos_event_insert AFTER INSERT ON microdaos
BEGIN
    INSERT INTO outbox_partitions (partition_key, last_seq) SELECT 'microdao:' || NEW.id, 1 WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off')
        ON CONFLICT (partition_key) DO UPDATE SET last_seq = last_seq + 1;
    INSERT INTO outbox_events (id, topic, payload, created_at, partition_key, seq)
        SELECT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))), 'microdao.created', json_object('v', 1, 'microdao_id', NEW.id, 'external_id', NEW.external_id, 'name', NEW.name, 'owner_user_id', NEW.owner_user_id, 'at', strftime('%Y-%m-%dT%H:%M:%fZ','now')), strftime('%Y-%m-%dT%H:%M:%fZ','now'), 'microdao:' || NEW.id,
        (SELECT last_seq FROM outbox_partitions WHERE partition_key = 'microdao:' || NEW.id) WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off');
END;
CREATE TRIGGER microdaos_event_update AFTER UPDATE ON microdaos
    WHEN OLD.id IS NOT NEW.id OR OLD.external_id IS NOT NEW.external_id OR OLD.name IS NOT NEW.name OR OLD.owner_user_id IS NOT NEW.owner_user_id OR OLD.created_at IS NOT NEW.created_at
BEGIN
    INSERT INTO outbox_partitions (partition_key, last_seq) SELECT 'microdao:' || NEW.id, 1 WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off')
        ON CONFLICT (partition_key) DO UPDATE SET last_seq = last_seq + 1;
    INSERT INTO outbox_events (id, topic, payload, created_at, partition_key, seq)
        SELECT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))), 'microdao.updated', json_object('v', 1, 'microdao_id', NEW.id, 'external_id', NEW.external_id, 'name', NEW.name, 'owner_user_id', NEW.owner_user_id, 'at', strftime('%Y-%m-%dT%H:%M:%fZ','now')), strftime('%Y-%m-%dT%H:%M:%fZ','now'), 'microdao:' || NEW.id,
        (SELECT last_seq FROM outbox_partitions WHERE partition_key = 'microdao:' || NEW.id) WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off');
END;
CREATE TRIGGER microdaos_event_delete AFTER DELETE ON microdaos
BEGIN
    INSERT INTO outbox_partitions (partition_key, last_seq) SELECT 'microdao:' || OLD.id, 1 WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off')
        ON CONFLICT (partition_key) DO UPDATE SET last_seq = last_seq + 1;
    INSERT INTO outbox_events (id, topic, payload, created_at, partition_key, seq)
        SELECT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))), 'microdao.deleted', json_object('v', 1, 'microdao_id', OLD.id, 'external_id', OLD.external_id, 'name', OLD.name, 'owner_user_id', OLD.owner_user_id, 'at', strftime('%Y-%m-%dT%H:%M:%fZ','now')), strftime('%Y-%m-%dT%H:%M:%fZ','now'), 'microdao:' || OLD.id,
        (SELECT last_seq FROM outbox_partitions WHERE partition_key = 'microdao:' || OLD.id) WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off');
END;
CREATE TRIGGER agent_blueprints_event_insert AFTER INSERT ON agent_blueprints
BEGIN
    INSERT INTO outbox_partitions (partition_key, last_seq) SELECT 'blueprint:' || NEW.id, 1 WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off')
        ON CONFLICT (partition_key) DO UPDATE SET last_seq = last_seq + 1;
    INSERT INTO outbox_events (id, topic, payload, created_at, partition_key, seq)
        SELECT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))), 'blueprint.created', json_object('v', 1, 'blueprint_id', NEW.id, 'code', NEW.code, 'description', NEW.description, 'model', NEW.model, 'at', strftime('%Y-%m-%dT%H:%M:%fZ','now')), strftime('%Y-%m-%dT%H:%M:%fZ','now'), 'blueprint:' || NEW.id,
        (SELECT last_seq FROM outbox_partitions WHERE partition_key = 'blueprint:' || NEW.id) WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off');
END;
CREATE TRIGGER agent_blueprints_event_update AFTER UPDATE ON agent_blueprints
    WHEN OLD.id IS NOT NEW.id OR OLD.code IS NOT NEW.code OR OLD.description IS NOT NEW.description OR OLD.model IS NOT NEW.model OR OLD.capabilities IS NOT NEW.capabilities
BEGIN
    INSERT INTO outbox_partitions (partition_key, last_seq) SELECT 'blueprint:' || NEW.id, 1 WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off')
        ON CONFLICT (partition_key) DO UPDATE SET last_seq = last_seq + 1;
    INSERT INTO outbox_events (id, topic, payload, created_at, partition_key, seq)
        SELECT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))), 'blueprint.updated', json_object('v', 1, 'blueprint_id', NEW.id, 'code', NEW.code, 'description', NEW.description, 'model', NEW.model, 'at', strftime('%Y-%m-%dT%H:%M:%fZ','now')), strftime('%Y-%m-%dT%H:%M:%fZ','now'), 'blueprint:' || NEW.id,
        (SELECT last_seq FROM outbox_partitions WHERE partition_key = 'blueprint:' || NEW.id) WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off');
END;
CREATE TRIGGER agent_blueprints_event_delete AFTER DELETE ON agent_blueprints
BEGIN
    INSERT INTO outbox_partitions (partition_key, last_seq) SELECT 'blueprint:' || OLD.id, 1 WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off')
        ON CONFLICT (partition_key) DO UPDATE SET last_seq = last_seq + 1;
    INSERT INTO outbox_events (id, topic, payload, created_at, partition_key, seq)
        SELECT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))), 'blueprint.deleted', json_object('v', 1, 'blueprint_id', OLD.id, 'code', OLD.code, 'description', OLD.description, 'model', OLD.model, 'at', strftime('%Y-%m-%dT%H:%M:%fZ','now')), strftime('%Y-%m-%dT%H:%M:%fZ','now'), 'blueprint:' || OLD.id,
        (SELECT last_seq FROM outbox_partitions WHERE partition_key = 'blueprint:' || OLD.id) WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off');
END;
CREATE TRIGGER agents_event_insert AFTER INSERT ON agents
BEGIN
    INSERT INTO outbox_partitions (partition_key, last_seq) SELECT 'agent:' || NEW.id, 1 WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off')
        ON CONFLICT (partition_key) DO UPDATE SET last_seq = last_seq + 1;
    INSERT INTO outbox_events (id, topic, payload, created_at, partition_key, seq)
        SELECT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))), 'agent.created', json_object('v', 1, 'agent_id', NEW.id, 'external_id', NEW.external_id, 'name', NEW.name, 'kind', NEW.kind, 'microdao_id', NEW.microdao_id, 'blueprint_id', NEW.blueprint_id, 'matrix_id', NEW.matrix_id, 'at', strftime('%Y-%m-%dT%H:%M:%fZ','now')), strftime('%Y-%m-%dT%H:%M:%fZ','now'), 'agent:' || NEW.id,
        (SELECT last_seq FROM outbox_partitions WHERE partition_key = 'agent:' || NEW.id) WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off');
END;
CREATE TRIGGER agents_event_update AFTER UPDATE ON agents
    WHEN OLD.id IS NOT NEW.id OR OLD.external_id IS NOT NEW.external_id OR OLD.name IS NOT NEW.name OR OLD.kind IS NOT NEW.kind OR OLD.microdao_id IS NOT NEW.microdao_id OR OLD.owner_user_id IS NOT NEW.owner_user_id OR OLD.matrix_id IS NOT NEW.matrix_id OR OLD.blueprint_id IS NOT NEW.blueprint_id OR OLD.created_at IS NOT NEW.created_at
BEGIN
    INSERT INTO outbox_partitions (partition_key, last_seq) SELECT 'agent:' || NEW.id, 1 WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off')
        ON CONFLICT (partition_key) DO UPDATE SET last_seq = last_seq + 1;
    INSERT INTO outbox_events (id, topic, payload, created_at, partition_key, seq)
        SELECT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))), 'agent.updated', json_object('v', 1, 'agent_id', NEW.id, 'external_id', NEW.external_id, 'name', NEW.name, 'kind', NEW.kind, 'microdao_id', NEW.microdao_id, 'blueprint_id', NEW.blueprint_id, 'matrix_id', NEW.matrix_id, 'at', strftime('%Y-%m-%dT%H:%M:%fZ','now')), strftime('%Y-%m-%dT%H:%M:%fZ','now'), 'agent:' || NEW.id,
        (SELECT last_seq FROM outbox_partitions WHERE partition_key = 'agent:' || NEW.id) WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off');
END;
CREATE TRIGGER agents_event_delete AFTER DELETE ON agents
BEGIN
    INSERT INTO outbox_partitions (partition_key, last_seq) SELECT 'agent:' || OLD.id, 1 WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off')
        ON CONFLICT (partition_key) DO UPDATE SET last_seq = last_seq + 1;
    INSERT INTO outbox_events (id, topic, payload, created_at, partition_key, seq)
        SELECT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))), 'agent.deleted', json_object('v', 1, 'agent_id', OLD.id, 'external_id', OLD.external_id, 'name', OLD.name, 'kind', OLD.kind, 'microdao_id', OLD.microdao_id, 'blueprint_id', OLD.blueprint_id, 'matrix_id', OLD.matrix_id, 'at', strftime('%Y-%m-%dT%H:%M:%fZ','now')), strftime('%Y-%m-%dT%H:%M:%fZ','now'), 'agent:' || OLD.id,
        (SELECT last_seq FROM outbox_partitions WHERE partition_key = 'agent:' || OLD.id) WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off');
END;
CREATE TRIGGER bridge_blueprints_event AFTER UPDATE ON bridge_blueprints
    WHEN OLD.runtime IS NOT NEW.runtime OR OLD.settings IS NOT NEW.settings OR OLD.system_instructions IS NOT NEW.system_instructions OR OLD.context_events IS NOT NEW.context_events OR OLD.failure_notice IS NOT NEW.failure_notice OR OLD.message_type IS NOT NEW.message_type OR OLD.source IS NOT NEW.source OR OLD.context_chars IS NOT NEW.context_chars OR OLD.tools IS NOT NEW.tools OR OLD.show_tools IS NOT NEW.show_tools OR OLD.max_tool_rounds IS NOT NEW.max_tool_rounds
BEGIN
    INSERT INTO outbox_partitions (partition_key, last_seq) SELECT 'blueprint:' || NEW.blueprint_id, 1 WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off')
        ON CONFLICT (partition_key) DO UPDATE SET last_seq = last_seq + 1;
    INSERT INTO outbox_events (id, topic, payload, created_at, partition_key, seq)
        SELECT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))), 'blueprint.settings.updated', json_object('v', 1, 'blueprint_id', NEW.blueprint_id, 'runtime', NEW.runtime, 'source', NEW.source, 'at', strftime('%Y-%m-%dT%H:%M:%fZ','now')), strftime('%Y-%m-%dT%H:%M:%fZ','now'), 'blueprint:' || NEW.blueprint_id,
        (SELECT last_seq FROM outbox_partitions WHERE partition_key = 'blueprint:' || NEW.blueprint_id) WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off');
END;
CREATE TRIGGER bridge_agents_event AFTER UPDATE ON bridge_agents
    WHEN OLD.active IS NOT NEW.active OR OLD.instructions IS NOT NEW.instructions OR OLD.model IS NOT NEW.model OR OLD.idle_after_seconds IS NOT NEW.idle_after_seconds OR OLD.respond IS NOT NEW.respond OR OLD.message_type IS NOT NEW.message_type OR OLD.avatar IS NOT NEW.avatar OR OLD.source IS NOT NEW.source OR OLD.tools IS NOT NEW.tools
BEGIN
    INSERT INTO outbox_partitions (partition_key, last_seq) SELECT 'agent:' || NEW.agent_id, 1 WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off')
        ON CONFLICT (partition_key) DO UPDATE SET last_seq = last_seq + 1;
    INSERT INTO outbox_events (id, topic, payload, created_at, partition_key, seq)
        SELECT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))), 'agent.settings.updated', json_object('v', 1, 'agent_id', NEW.agent_id, 'active', json(CASE WHEN NEW.active THEN 'true' ELSE 'false' END), 'source', NEW.source, 'at', strftime('%Y-%m-%dT%H:%M:%fZ','now')), strftime('%Y-%m-%dT%H:%M:%fZ','now'), 'agent:' || NEW.agent_id,
        (SELECT last_seq FROM outbox_partitions WHERE partition_key = 'agent:' || NEW.agent_id) WHERE NOT EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off');
END;

