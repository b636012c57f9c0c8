-- Issue #27: the `nats` runtime (runs published to NATS JetStream for workers).
ALTER TABLE bridge_blueprints DROP CONSTRAINT bridge_blueprints_runtime_check;
ALTER TABLE bridge_blueprints ADD CONSTRAINT bridge_blueprints_runtime_check
    CHECK (runtime IN ('echo', 'openai', 'webhook', 'nats'));
COMMENT ON COLUMN bridge_blueprints.runtime IS 'echo | openai | webhook | nats';
COMMENT ON COLUMN bridge_blueprints.settings IS 'Runtime settings: openai {base_url, api_key_env | api_key_ref, temperature, max_tokens, stream, timeout}; webhook {url, secret_env | secret_ref, timeout}; nats {timeout}';
COMMENT ON COLUMN agent_runs.runtime IS 'echo | openai | webhook | nats (bridge extension)';
