ALTER TABLE bridge_rooms DROP COLUMN is_direct;
DROP INDEX IF EXISTS messages_thread_root_idx;
ALTER TABLE messages DROP COLUMN thread_root_event_id;
DROP TABLE IF EXISTS agent_channel_settings;
DROP TABLE IF EXISTS agent_runs;
