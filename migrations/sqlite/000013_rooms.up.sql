-- Issue #26, "the platform creates rooms": see migrations/postgres/000013_rooms.up.sql for the
-- meaning of every column.
CREATE TABLE bridge_channel_archives (
    channel_id  TEXT PRIMARY KEY REFERENCES channels (id) ON DELETE CASCADE,
    reason      TEXT NOT NULL CHECK (reason IN ('admin', 'tombstone')),
    archived_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);

CREATE TABLE bridge_room_aliases (
    room_id     TEXT PRIMARY KEY,
    channel_id  TEXT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    replaced_by TEXT NOT NULL,
    replaced_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE INDEX bridge_room_aliases_channel_id_idx ON bridge_room_aliases (channel_id);

CREATE TABLE bridge_channel_creations (
    microdao_id TEXT NOT NULL REFERENCES microdaos (id) ON DELETE CASCADE,
    slug        TEXT NOT NULL,
    channel_id  TEXT NOT NULL UNIQUE,
    room_id     TEXT,
    started_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    finished_at TEXT,
    PRIMARY KEY (microdao_id, slug)
);
