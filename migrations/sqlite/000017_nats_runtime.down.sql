-- Blueprints of the `nats` runtime fall back to echo (the runtime does not exist before 17).
UPDATE bridge_blueprints SET runtime = 'echo', settings = '{}' WHERE runtime = 'nats';
PRAGMA writable_schema = ON;
UPDATE sqlite_master SET sql = replace(sql, 'CHECK (runtime IN (''echo'', ''openai'', ''webhook'', ''nats''))', 'CHECK (runtime IN (''echo'', ''openai'', ''webhook''))')
    WHERE type = 'table' AND name = 'bridge_blueprints';
PRAGMA writable_schema = RESET;
CREATE INDEX bridge_migration_17_idx ON bridge_blueprints (runtime);
DROP INDEX bridge_migration_17_idx;
