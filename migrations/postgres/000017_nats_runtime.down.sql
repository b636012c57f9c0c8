-- Blueprints of the `nats` runtime fall back to echo (the runtime does not exist before 17).
UPDATE bridge_blueprints SET runtime = 'echo', settings = '{}' WHERE runtime = 'nats';
ALTER TABLE bridge_blueprints DROP CONSTRAINT bridge_blueprints_runtime_check;
ALTER TABLE bridge_blueprints ADD CONSTRAINT bridge_blueprints_runtime_check
    CHECK (runtime IN ('echo', 'openai', 'webhook'));
COMMENT ON COLUMN bridge_blueprints.runtime IS 'echo | openai | webhook';
COMMENT ON COLUMN bridge_blueprints.settings IS 'Runtime settings: openai {base_url, api_key_env | api_key_ref, temperature, max_tokens, stream, timeout}; webhook {url, secret_env | secret_ref, timeout}';
COMMENT ON COLUMN agent_runs.runtime IS 'echo | openai | webhook (bridge extension)';
