-- Issue #24 (seed 004): the parts of a message, in a bridge-owned table (the ERD's `messages` is
-- untouched). A message that carries media has one row per part: the media (image, file, audio,
-- video; a sticker is an image) and, when the sender wrote one, its caption as a `text` part.
-- A plain text message has no rows: its text is `messages.content_preview`, and the full content
-- stays in Matrix. Written in the same transaction as the message; a redaction deletes them.
-- Never stored: the media's bytes, and an encrypted file's key (both stay in Matrix).
CREATE TABLE message_parts (
    -- Primary key (UUIDv7).
    id          TEXT PRIMARY KEY,
    -- The message (messages.id); deleted with it.
    message_id  TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    -- Place of the part in its message, from 0.
    position    INTEGER NOT NULL CHECK (position >= 0),
    -- What the part is (a sticker is an image).
    kind        TEXT NOT NULL CHECK (kind IN ('text', 'image', 'file', 'audio', 'video', 'tool_call', 'tool_result')),
    -- MIME type the event declares (info.mimetype), unchecked.
    mimetype    TEXT,
    -- Size in bytes the event declares (info.size).
    size_bytes  INTEGER CHECK (size_bytes >= 0),
    -- File name (filename, else body), cut at 255 characters; NULL when previews of decrypted
    -- events are off.
    name        TEXT,
    -- Width in pixels (info.w) of an image or video.
    width       INTEGER CHECK (width >= 0),
    -- Height in pixels (info.h) of an image or video.
    height      INTEGER CHECK (height >= 0),
    -- Duration in milliseconds (info.duration) of audio or video.
    duration_ms INTEGER CHECK (duration_ms >= 0),
    -- A voice message (MSC3245 org.matrix.msc3245.voice): 1, else 0.
    voice       INTEGER NOT NULL DEFAULT 0 CHECK (voice IN (0, 1)),
    -- Where the file lives: its mxc:// URI, or 'encrypted' for an EncryptedFile (whose key is
    -- never stored); NULL when the event named no usable one.
    source      TEXT CHECK (source = 'encrypted' OR source LIKE 'mxc://%'),
    -- Text of a text part (a caption; later a transcript or extracted text), cut at 4000
    -- characters.
    text        TEXT,
    -- The call or result of a tool_call / tool_result part (JSON text); NULL otherwise.
    tool        TEXT,
    -- When the row was written.
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (message_id, position)
);
