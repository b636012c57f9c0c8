DROP TABLE IF EXISTS bridge_puppets;
DROP TABLE IF EXISTS agent_outbox;
DROP INDEX IF EXISTS agent_sessions_active_idx;
DROP TABLE IF EXISTS access_key_caps;
DROP TABLE IF EXISTS access_keys;
DROP TABLE IF EXISTS bundle_caps;
DROP TABLE IF EXISTS bundles;
DROP TABLE IF EXISTS capabilities;
