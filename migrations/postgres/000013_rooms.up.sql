-- Issue #26, "the platform creates rooms": channels the admin API creates, archived channels,
-- and rooms that replaced others (room upgrades). No ERD column changes: bridge-owned tables
-- only. Archives are a table of their own rather than a column of bridge_rooms, so that
-- archiving never writes the row the mirror's bridge_rooms upsert writes in the same statement.
CREATE TABLE bridge_channel_archives (
    channel_id  uuid PRIMARY KEY REFERENCES channels (id) ON DELETE CASCADE,
    reason      text NOT NULL CHECK (reason IN ('admin', 'tombstone')),
    archived_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE bridge_channel_archives IS 'Archived channels: the bridge and its agents left the room; the channel and its history stay';
COMMENT ON COLUMN bridge_channel_archives.channel_id IS 'The archived channel';
COMMENT ON COLUMN bridge_channel_archives.reason IS 'admin (DELETE /api/v1/admin/channels/{id}) | tombstone (the room was shut down without a replacement)';
COMMENT ON COLUMN bridge_channel_archives.archived_at IS 'When it was archived';

CREATE TABLE bridge_room_aliases (
    room_id     text PRIMARY KEY,
    channel_id  uuid NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    replaced_by text NOT NULL,
    replaced_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bridge_room_aliases_channel_id_idx ON bridge_room_aliases (channel_id);
COMMENT ON TABLE bridge_room_aliases IS 'Former Matrix rooms of a channel (room upgrades): events still arriving for an old room, and old messages, resolve to the channel';
COMMENT ON COLUMN bridge_room_aliases.room_id IS 'The old room id (!old:example.org)';
COMMENT ON COLUMN bridge_room_aliases.channel_id IS 'The channel the room belonged to (channels.matrix_room_id is now its replacement)';
COMMENT ON COLUMN bridge_room_aliases.replaced_by IS 'The room that replaced it (m.room.tombstone replacement_room)';
COMMENT ON COLUMN bridge_room_aliases.replaced_at IS 'When the bridge saw the tombstone';

CREATE TABLE bridge_channel_creations (
    microdao_id uuid NOT NULL REFERENCES microdaos (id) ON DELETE CASCADE,
    slug        text NOT NULL,
    channel_id  uuid NOT NULL UNIQUE,
    room_id     text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (microdao_id, slug)
);
COMMENT ON TABLE bridge_channel_creations IS 'Rooms the admin API creates (POST /api/v1/admin/channels), recorded before the homeserver is asked: the creation key that makes the request idempotent by (microdao, slug) and lets a retry after a crash find the room';
COMMENT ON COLUMN bridge_channel_creations.microdao_id IS 'The microDAO the channel is created in';
COMMENT ON COLUMN bridge_channel_creations.slug IS 'The channel''s slug in the microDAO (with microdao_id, the idempotency key)';
COMMENT ON COLUMN bridge_channel_creations.channel_id IS 'The channel id chosen before the room exists (also in the room''s city.daarion.channel state, so the mirror uses the same id)';
COMMENT ON COLUMN bridge_channel_creations.room_id IS 'The Matrix room once the homeserver created it; NULL: not created yet (or a crash before the answer was recorded)';
COMMENT ON COLUMN bridge_channel_creations.started_at IS 'When the creation was started (a creation older than a minute with no room may be taken over)';
COMMENT ON COLUMN bridge_channel_creations.finished_at IS 'When the channel row was written and the creation answered';
