-- Issue #24 (seed 004): the parts of a message, in a bridge-owned table (the ERD's `messages` is
-- untouched). A message that carries media has one row per part: the media (image, file, audio,
-- video; a sticker is an image) and, when the sender wrote one, its caption as a `text` part.
-- A plain text message has no rows: its text is `messages.content_preview`, and the full content
-- stays in Matrix. Written in the same transaction as the message; a redaction deletes them.
-- Never stored: the media's bytes, and an encrypted file's key (both stay in Matrix).
CREATE TABLE message_parts (
    id          uuid PRIMARY KEY,
    message_id  uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    position    integer NOT NULL CHECK (position >= 0),
    kind        text NOT NULL CHECK (kind IN ('text', 'image', 'file', 'audio', 'video', 'tool_call', 'tool_result')),
    mimetype    text,
    size_bytes  bigint CHECK (size_bytes >= 0),
    name        text,
    width       integer CHECK (width >= 0),
    height      integer CHECK (height >= 0),
    duration_ms bigint CHECK (duration_ms >= 0),
    voice       boolean NOT NULL DEFAULT false,
    source      text CHECK (source = 'encrypted' OR source LIKE 'mxc://%'),
    text        text,
    tool        jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (message_id, position)
);
COMMENT ON TABLE message_parts IS 'daarion-bridge: the parts of a message (seed 004): its media and their caption; never the bytes or an encrypted file''s key, which stay in Matrix';
COMMENT ON COLUMN message_parts.id IS 'Primary key (UUIDv7)';
COMMENT ON COLUMN message_parts.message_id IS 'The message (messages.id); deleted with it';
COMMENT ON COLUMN message_parts.position IS 'Place of the part in its message, from 0';
COMMENT ON COLUMN message_parts.kind IS 'text | image | file | audio | video | tool_call | tool_result (a sticker is an image)';
COMMENT ON COLUMN message_parts.mimetype IS 'MIME type the event declares (info.mimetype), unchecked';
COMMENT ON COLUMN message_parts.size_bytes IS 'Size in bytes the event declares (info.size)';
COMMENT ON COLUMN message_parts.name IS 'File name (filename, else body), cut at 255 characters; NULL when previews of decrypted events are off';
COMMENT ON COLUMN message_parts.width IS 'Width in pixels (info.w) of an image or video';
COMMENT ON COLUMN message_parts.height IS 'Height in pixels (info.h) of an image or video';
COMMENT ON COLUMN message_parts.duration_ms IS 'Duration in milliseconds (info.duration) of audio or video';
COMMENT ON COLUMN message_parts.voice IS 'A voice message (MSC3245 org.matrix.msc3245.voice)';
COMMENT ON COLUMN message_parts.source IS 'Where the file lives: its mxc:// URI, or encrypted for an EncryptedFile (whose key is never stored); NULL when the event named no usable one';
COMMENT ON COLUMN message_parts.text IS 'Text of a text part (a caption; later a transcript or extracted text), cut at 4000 characters';
COMMENT ON COLUMN message_parts.tool IS 'The call or result of a tool_call / tool_result part (JSON); NULL otherwise';
COMMENT ON COLUMN message_parts.created_at IS 'When the row was written';
