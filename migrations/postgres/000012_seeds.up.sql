-- Issue #26, the seeds to the letter: the ERD's NOT NULLs restored, `sender_type` as the ERD
-- has it, microDAO membership kept from channel membership, seed 001's audit columns, an
-- append-only audit log, and events for changes made below the write path (new users,
-- microDAO members, audit rows), appended by triggers in the same transaction as the change.

-- Settings the triggers read (the bridge writes them at start-up): whether events are written
-- at all (`events.enabled`), and the cutoff below which the audit pruner may delete.
CREATE TABLE bridge_settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
COMMENT ON TABLE bridge_settings IS 'daarion-bridge: settings the database triggers read: events (on | off, from events.enabled), audit_prune_before (set only inside the audit pruner''s transaction)';
COMMENT ON COLUMN bridge_settings.key IS 'events | audit_prune_before';
COMMENT ON COLUMN bridge_settings.value IS 'The setting''s value';

-- Appends one event, numbered in its partition exactly as the bridge's own writers do
-- (db::events): the partition row's lock, held until commit, orders writers by commit.
CREATE FUNCTION bridge_emit(p_topic text, p_partition text, p_payload jsonb) RETURNS void AS $$
DECLARE
    s bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM bridge_settings WHERE key = 'events' AND value = 'off') THEN
        RETURN;
    END IF;
    INSERT INTO outbox_partitions AS p (partition_key, last_seq) VALUES (p_partition, 1)
        ON CONFLICT (partition_key) DO UPDATE SET last_seq = p.last_seq + 1
        RETURNING last_seq INTO s;
    INSERT INTO outbox_events (id, topic, payload, partition_key, seq)
        VALUES (gen_random_uuid(), p_topic, p_payload, p_partition, s);
END
$$ LANGUAGE plpgsql;
COMMENT ON FUNCTION bridge_emit(text, text, jsonb) IS 'daarion-bridge: appends an event to outbox_events in the caller''s transaction (used by triggers)';

CREATE FUNCTION bridge_ts(t timestamptz) RETURNS text AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$ LANGUAGE sql IMMUTABLE;
COMMENT ON FUNCTION bridge_ts(timestamptz) IS 'daarion-bridge: RFC 3339 UTC with milliseconds, as event payloads have them';

-- The default owner: the bridge itself (its bot's Matrix id is filled in at start-up).
INSERT INTO users (external_id, handle) VALUES ('bridge:bot', 'daarion-bridge')
    ON CONFLICT (external_id) DO NOTHING;

-- microdaos.owner_user_id: NOT NULL as in the ERD. MicroDAOs without an owner belong to the bridge.
UPDATE microdaos SET owner_user_id = (SELECT id FROM users WHERE external_id = 'bridge:bot')
    WHERE owner_user_id IS NULL;
ALTER TABLE microdaos DROP CONSTRAINT microdaos_owner_user_id_fkey;
ALTER TABLE microdaos ALTER COLUMN owner_user_id SET NOT NULL;
ALTER TABLE microdaos ADD CONSTRAINT microdaos_owner_user_id_fkey
    FOREIGN KEY (owner_user_id) REFERENCES users (id);
COMMENT ON COLUMN microdaos.owner_user_id IS 'Owner (ERD: NOT NULL): the `owner` given in the config or the admin API, else the bridge''s own users row (external_id bridge:bot)';

-- agent_blueprints.model: NOT NULL as in the ERD; '' for runtimes without a model.
UPDATE agent_blueprints SET model = '' WHERE model IS NULL;
ALTER TABLE agent_blueprints ALTER COLUMN model SET NOT NULL;
COMMENT ON COLUMN agent_blueprints.model IS 'Model name (ERD: NOT NULL); empty for runtimes without a model (echo, most webhooks)';

-- agents.blueprint_id: NOT NULL as in the ERD. Agents without one get the `echo` blueprint; a
-- blueprint in use cannot be deleted (the admin API answers 409).
INSERT INTO agent_blueprints (code, description, model) VALUES ('echo', 'Repeats what it is told (the default blueprint)', '')
    ON CONFLICT (code) DO NOTHING;
INSERT INTO bridge_blueprints (blueprint_id, runtime, source)
    SELECT id, 'echo', 'config' FROM agent_blueprints WHERE code = 'echo'
    ON CONFLICT (blueprint_id) DO NOTHING;
UPDATE agents SET blueprint_id = (SELECT id FROM agent_blueprints WHERE code = 'echo')
    WHERE blueprint_id IS NULL;
ALTER TABLE agents DROP CONSTRAINT agents_blueprint_id_fkey;
ALTER TABLE agents ALTER COLUMN blueprint_id SET NOT NULL;
ALTER TABLE agents ADD CONSTRAINT agents_blueprint_id_fkey
    FOREIGN KEY (blueprint_id) REFERENCES agent_blueprints (id);
COMMENT ON COLUMN agents.blueprint_id IS 'Blueprint (ERD: NOT NULL); `echo` when none is named. A blueprint in use cannot be deleted';

-- channels.matrix_room_id: NOT NULL as in the ERD (the platform creates channels through the
-- bridge, which creates the room first).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM channels WHERE matrix_room_id IS NULL) THEN
        RAISE EXCEPTION 'channels without a matrix_room_id exist: create their rooms (POST /api/v1/admin/channels) or delete them, then migrate again';
    END IF;
END
$$;
ALTER TABLE channels ALTER COLUMN matrix_room_id SET NOT NULL;
COMMENT ON COLUMN channels.matrix_room_id IS 'The Matrix room (ERD: NOT NULL, unique)';

-- messages.sender_type: the ERD's human | agent (nothing wrote system). NOT VALID first, so the
-- check does not hold the table's lock while it reads every row.
ALTER TABLE messages DROP CONSTRAINT messages_sender_type_check;
ALTER TABLE messages ADD CONSTRAINT messages_sender_type_check CHECK (sender_type IN ('human', 'agent')) NOT VALID;
ALTER TABLE messages VALIDATE CONSTRAINT messages_sender_type_check;
COMMENT ON COLUMN messages.sender_type IS 'human | agent';

-- Seed 001's audit columns next to the bridge's: user_id (the acting person''s users row),
-- team_id (no teams in the bridge: NULL), resource_kind and data (derived, never written apart).
ALTER TABLE audit_log ADD COLUMN user_id uuid;
ALTER TABLE audit_log ADD COLUMN team_id uuid;
ALTER TABLE audit_log ADD COLUMN resource_kind text GENERATED ALWAYS AS (split_part(action, '.', 1)) STORED;
ALTER TABLE audit_log ADD COLUMN data jsonb GENERATED ALWAYS AS (details) STORED;
COMMENT ON COLUMN audit_log.user_id IS 'Seed 001: the acting person''s users row (actor_type user), else NULL';
COMMENT ON COLUMN audit_log.team_id IS 'Seed 001: the team; always NULL (the bridge knows no teams)';
COMMENT ON COLUMN audit_log.resource_kind IS 'Seed 001: what kind of thing was acted on (the action''s first word: access_key, agent, microdao, channel, invite, tool, ...)';
COMMENT ON COLUMN audit_log.data IS 'Seed 001: the details (the same as details)';
CREATE INDEX audit_log_user_id_idx ON audit_log (user_id) WHERE user_id IS NOT NULL;

-- Append-only: rows are never updated, and deleted only by the pruner, which sets
-- bridge_settings.audit_prune_before inside its own transaction.
CREATE FUNCTION bridge_audit_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.created_at <
        (SELECT value::timestamptz FROM bridge_settings WHERE key = 'audit_prune_before') THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP USING ERRCODE = '42501';
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION bridge_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION bridge_audit_append_only();

-- Seed 001's audit.event: every audit row is published.
CREATE FUNCTION bridge_audit_event() RETURNS trigger AS $$
BEGIN
    PERFORM bridge_emit('audit.event', 'audit', jsonb_build_object(
        'v', 1, 'audit_id', NEW.id, 'actor_type', NEW.actor_type, 'actor_id', NEW.actor_id,
        'user_id', NEW.user_id, 'team_id', NEW.team_id, 'action', NEW.action, 'target', NEW.target,
        'resource_kind', split_part(NEW.action, '.', 1), 'outcome', NEW.outcome,
        'data', NEW.details, 'at', bridge_ts(NEW.created_at)));
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_log_event AFTER INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION bridge_audit_event();

-- user.created for the users rows the bridge makes (Matrix people it meets, owners named by Matrix id).
CREATE FUNCTION bridge_user_event() RETURNS trigger AS $$
BEGIN
    PERFORM bridge_emit('user.created', 'users', jsonb_build_object(
        'v', 1, 'user_id', NEW.id, 'external_id', NEW.external_id, 'matrix_id', NEW.matrix_id,
        'handle', NEW.handle, 'at', bridge_ts(NEW.created_at)));
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER users_event AFTER INSERT ON users
    FOR EACH ROW WHEN (NEW.external_id LIKE 'matrix:%') EXECUTE FUNCTION bridge_user_event();

-- microDAO membership from channel membership. A person with an active membership in any public or
-- private channel of a microDAO is its member (a `microdao` channel is for members the platform
-- made: joining it grants nothing): `owner` if they own it, `admin` at power level 100 (channel role
-- owner) in any of its rooms, `guest` if a guest everywhere, else `member`. Leaving its last
-- channel removes the row. Only rows the bridge added (marked here) are ever changed or removed.
CREATE TABLE bridge_microdao_members (
    microdao_id uuid NOT NULL REFERENCES microdaos (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    fresh       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (microdao_id, user_id)
);
COMMENT ON TABLE bridge_microdao_members IS 'daarion-bridge: the microdao_members rows the bridge added (from channel membership); rows without a marker were written by the platform and are never touched';
COMMENT ON COLUMN bridge_microdao_members.microdao_id IS 'The microDAO';
COMMENT ON COLUMN bridge_microdao_members.user_id IS 'The member';
COMMENT ON COLUMN bridge_microdao_members.fresh IS 'Set only while the sync that added the row runs (SQLite''s triggers need it)';

CREATE VIEW bridge_microdao_member_wants AS
    SELECT c.microdao_id, cm.member_user_id AS user_id,
        CASE WHEN bool_or(md.owner_user_id = cm.member_user_id) THEN 'owner'
             WHEN bool_or(cm.role = 'owner') THEN 'admin'
             WHEN bool_and(cm.role = 'guest') THEN 'guest'
             ELSE 'member' END AS role
    FROM channel_members cm JOIN channels c ON c.id = cm.channel_id JOIN microdaos md ON md.id = c.microdao_id
    WHERE cm.left_at IS NULL AND cm.member_user_id IS NOT NULL AND c.visibility <> 'microdao'
    GROUP BY c.microdao_id, cm.member_user_id;
COMMENT ON VIEW bridge_microdao_member_wants IS 'daarion-bridge: the microDAO role each person''s active channel memberships give them';

CREATE FUNCTION bridge_microdao_member_sync(p_microdao uuid, p_user uuid) RETURNS void AS $$
DECLARE
    want text;
    cur microdao_members%ROWTYPE;
    ours boolean;
    payload jsonb;
BEGIN
    IF p_microdao IS NULL OR p_user IS NULL
        OR NOT EXISTS (SELECT 1 FROM microdaos WHERE id = p_microdao)
        OR NOT EXISTS (SELECT 1 FROM users WHERE id = p_user) THEN
        RETURN;
    END IF;
    SELECT role INTO want FROM bridge_microdao_member_wants
        WHERE microdao_id = p_microdao AND user_id = p_user;
    SELECT * INTO cur FROM microdao_members WHERE microdao_id = p_microdao AND user_id = p_user FOR UPDATE;
    ours := EXISTS (SELECT 1 FROM bridge_microdao_members WHERE microdao_id = p_microdao AND user_id = p_user);
    IF cur.id IS NULL THEN
        IF want IS NULL THEN
            DELETE FROM bridge_microdao_members WHERE microdao_id = p_microdao AND user_id = p_user;
            RETURN;
        END IF;
        INSERT INTO microdao_members (microdao_id, user_id, role) VALUES (p_microdao, p_user, want)
            ON CONFLICT (microdao_id, user_id) DO NOTHING RETURNING * INTO cur;
        IF cur.id IS NULL THEN
            RETURN; -- the platform wrote the row meanwhile: it is theirs
        END IF;
        INSERT INTO bridge_microdao_members (microdao_id, user_id) VALUES (p_microdao, p_user)
            ON CONFLICT DO NOTHING;
        PERFORM bridge_emit('microdao.member.added', 'microdao:' || p_microdao, jsonb_build_object(
            'v', 1, 'microdao_id', p_microdao, 'member_id', cur.id, 'user_id', p_user,
            'role', want, 'previous_role', NULL, 'at', bridge_ts(now())));
    ELSIF NOT ours THEN
        RETURN;
    ELSIF want IS NULL THEN
        DELETE FROM microdao_members WHERE id = cur.id;
        DELETE FROM bridge_microdao_members WHERE microdao_id = p_microdao AND user_id = p_user;
        PERFORM bridge_emit('microdao.member.removed', 'microdao:' || p_microdao, jsonb_build_object(
            'v', 1, 'microdao_id', p_microdao, 'member_id', cur.id, 'user_id', p_user,
            'role', NULL, 'previous_role', cur.role, 'at', bridge_ts(now())));
    ELSIF want <> cur.role THEN
        UPDATE microdao_members SET role = want WHERE id = cur.id;
        PERFORM bridge_emit('microdao.member.role_changed', 'microdao:' || p_microdao, jsonb_build_object(
            'v', 1, 'microdao_id', p_microdao, 'member_id', cur.id, 'user_id', p_user,
            'role', want, 'previous_role', cur.role, 'at', bridge_ts(now())));
    END IF;
END
$$ LANGUAGE plpgsql;
COMMENT ON FUNCTION bridge_microdao_member_sync(uuid, uuid) IS 'daarion-bridge: brings one person''s microdao_members row in line with their channel memberships';

CREATE FUNCTION bridge_channel_member_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.member_user_id IS NOT NULL THEN
        PERFORM bridge_microdao_member_sync(
            (SELECT microdao_id FROM channels WHERE id = OLD.channel_id), OLD.member_user_id);
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.member_user_id IS NOT NULL THEN
        PERFORM bridge_microdao_member_sync(
            (SELECT microdao_id FROM channels WHERE id = NEW.channel_id), NEW.member_user_id);
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER channel_members_microdao AFTER INSERT OR DELETE OR UPDATE OF role, left_at, channel_id, member_user_id
    ON channel_members FOR EACH ROW EXECUTE FUNCTION bridge_channel_member_changed();

CREATE FUNCTION bridge_channel_moved() RETURNS trigger AS $$
BEGIN
    PERFORM bridge_microdao_member_sync(x.microdao_id, x.user_id)
    FROM (SELECT m.id AS microdao_id, cm.member_user_id AS user_id
          FROM channel_members cm CROSS JOIN (VALUES (OLD.microdao_id), (NEW.microdao_id)) AS m(id)
          WHERE cm.channel_id = NEW.id AND cm.member_user_id IS NOT NULL) x;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER channels_microdao AFTER UPDATE OF microdao_id, visibility ON channels
    FOR EACH ROW WHEN (OLD.microdao_id IS DISTINCT FROM NEW.microdao_id OR OLD.visibility IS DISTINCT FROM NEW.visibility)
    EXECUTE FUNCTION bridge_channel_moved();

CREATE FUNCTION bridge_microdao_owner_changed() RETURNS trigger AS $$
BEGIN
    PERFORM bridge_microdao_member_sync(NEW.id, OLD.owner_user_id);
    PERFORM bridge_microdao_member_sync(NEW.id, NEW.owner_user_id);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER microdaos_owner AFTER UPDATE OF owner_user_id ON microdaos
    FOR EACH ROW WHEN (OLD.owner_user_id IS DISTINCT FROM NEW.owner_user_id) EXECUTE FUNCTION bridge_microdao_owner_changed();

-- The people already in channels become members now.
SELECT bridge_microdao_member_sync(microdao_id, user_id) FROM bridge_microdao_member_wants;

-- Catalog events: microDAOs, blueprints and agents created, updated or deleted, whoever wrote
-- them (the config at start-up, the admin API, the platform). The bridge's settings rows
-- (bridge_blueprints, bridge_agents) announce their own changes (`*.settings.updated`), without
-- their settings (which may name secrets).
CREATE FUNCTION bridge_catalog_event() RETURNS trigger AS $$
DECLARE
    r record;
    verb text := CASE TG_OP WHEN 'INSERT' THEN 'created' WHEN 'UPDATE' THEN 'updated' ELSE 'deleted' END;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    IF TG_OP = 'UPDATE' AND to_jsonb(OLD) = to_jsonb(NEW) THEN
        RETURN NULL;
    END IF;
    IF TG_TABLE_NAME = 'microdaos' THEN
        PERFORM bridge_emit('microdao.' || verb, 'microdao:' || r.id, jsonb_build_object(
            'v', 1, 'microdao_id', r.id, 'external_id', r.external_id, 'name', r.name,
            'owner_user_id', r.owner_user_id, 'at', bridge_ts(now())));
    ELSIF TG_TABLE_NAME = 'agent_blueprints' THEN
        PERFORM bridge_emit('blueprint.' || verb, 'blueprint:' || r.id, jsonb_build_object(
            'v', 1, 'blueprint_id', r.id, 'code', r.code, 'description', r.description,
            'model', r.model, 'at', bridge_ts(now())));
    ELSE
        PERFORM bridge_emit('agent.' || verb, 'agent:' || r.id, jsonb_build_object(
            'v', 1, 'agent_id', r.id, 'external_id', r.external_id, 'name', r.name, 'kind', r.kind,
            'microdao_id', r.microdao_id, 'blueprint_id', r.blueprint_id, 'matrix_id', r.matrix_id,
            'at', bridge_ts(now())));
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER microdaos_event AFTER INSERT OR UPDATE OR DELETE ON microdaos
    FOR EACH ROW EXECUTE FUNCTION bridge_catalog_event();
CREATE TRIGGER agent_blueprints_event AFTER INSERT OR UPDATE OR DELETE ON agent_blueprints
    FOR EACH ROW EXECUTE FUNCTION bridge_catalog_event();
CREATE TRIGGER agents_event AFTER INSERT OR UPDATE OR DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION bridge_catalog_event();

CREATE FUNCTION bridge_settings_event() RETURNS trigger AS $$
BEGIN
    IF to_jsonb(OLD) - 'updated_at' = to_jsonb(NEW) - 'updated_at' THEN
        RETURN NULL;
    END IF;
    IF TG_TABLE_NAME = 'bridge_blueprints' THEN
        PERFORM bridge_emit('blueprint.settings.updated', 'blueprint:' || NEW.blueprint_id, jsonb_build_object(
            'v', 1, 'blueprint_id', NEW.blueprint_id, 'runtime', NEW.runtime, 'source', NEW.source,
            'at', bridge_ts(now())));
    ELSE
        PERFORM bridge_emit('agent.settings.updated', 'agent:' || NEW.agent_id, jsonb_build_object(
            'v', 1, 'agent_id', NEW.agent_id, 'active', NEW.active, 'source', NEW.source,
            'at', bridge_ts(now())));
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER bridge_blueprints_event AFTER UPDATE ON bridge_blueprints
    FOR EACH ROW EXECUTE FUNCTION bridge_settings_event();
CREATE TRIGGER bridge_agents_event AFTER UPDATE ON bridge_agents
    FOR EACH ROW EXECUTE FUNCTION bridge_settings_event();
