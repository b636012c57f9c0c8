DROP TABLE audit_log;
DROP TABLE outbox_partitions;
DROP TABLE outbox_events;
