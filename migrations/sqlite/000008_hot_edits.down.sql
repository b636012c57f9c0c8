-- PostgreSQL only (messages' fillfactor, for HOT edits): SQLite has no such setting. Kept so
-- both dialects share their version numbers.
SELECT 1;
