-- Issue #27: the `nats` runtime. The runtime's CHECK widens by editing the stored definition
-- (the procedure of migrations 12 and 15); the index made and dropped below changes the schema
-- version, so every connection reloads it.
PRAGMA writable_schema = ON;
UPDATE sqlite_master SET sql = replace(sql, 'CHECK (runtime IN (''echo'', ''openai'', ''webhook''))', 'CHECK (runtime IN (''echo'', ''openai'', ''webhook'', ''nats''))')
    WHERE type = 'table' AND name = 'bridge_blueprints';
PRAGMA writable_schema = RESET;
CREATE TEMP TABLE bridge_migration_17 (
    ok INTEGER CONSTRAINT the_table_definition_was_not_as_expected CHECK (ok)
);
INSERT INTO bridge_migration_17 (ok) SELECT instr(sql, 'CHECK (runtime IN (''echo'', ''openai'', ''webhook'', ''nats''))') > 0
    FROM sqlite_master WHERE type = 'table' AND name = 'bridge_blueprints';
DROP TABLE bridge_migration_17;
CREATE INDEX bridge_migration_17_idx ON bridge_blueprints (runtime);
DROP INDEX bridge_migration_17_idx;
