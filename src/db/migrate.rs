//! Embedded, reversible migrations per dialect (`migrations/postgres`, `migrations/sqlite`),
//! applied at start-up and by `daarion-bridge migrate`.

use std::borrow::Cow;

use futures_core::future::BoxFuture;
use sqlx::{
    error::BoxDynError,
    migrate::{Migration, MigrationSource, MigrationType},
};

/// One migration: version, description, up SQL, down SQL.
type Step = (i64, &'static str, &'static str, &'static str);

const POSTGRES: &[Step] = &[
    (
        1,
        "daarion_schema",
        include_str!("../../migrations/postgres/000001_daarion_schema.up.sql"),
        include_str!("../../migrations/postgres/000001_daarion_schema.down.sql"),
    ),
    (
        2,
        "agents",
        include_str!("../../migrations/postgres/000002_agents.up.sql"),
        include_str!("../../migrations/postgres/000002_agents.down.sql"),
    ),
    (
        3,
        "runs",
        include_str!("../../migrations/postgres/000003_runs.up.sql"),
        include_str!("../../migrations/postgres/000003_runs.down.sql"),
    ),
    (
        4,
        "durable_work",
        include_str!("../../migrations/postgres/000004_durable_work.up.sql"),
        include_str!("../../migrations/postgres/000004_durable_work.down.sql"),
    ),
    (
        5,
        "events",
        include_str!("../../migrations/postgres/000005_events.up.sql"),
        include_str!("../../migrations/postgres/000005_events.down.sql"),
    ),
    (
        6,
        "platform",
        include_str!("../../migrations/postgres/000006_platform.up.sql"),
        include_str!("../../migrations/postgres/000006_platform.down.sql"),
    ),
    (
        7,
        "crypto",
        include_str!("../../migrations/postgres/000007_crypto.up.sql"),
        include_str!("../../migrations/postgres/000007_crypto.down.sql"),
    ),
    (
        8,
        "hot_edits",
        include_str!("../../migrations/postgres/000008_hot_edits.up.sql"),
        include_str!("../../migrations/postgres/000008_hot_edits.down.sql"),
    ),
    (
        9,
        "context_budget",
        include_str!("../../migrations/postgres/000009_context_budget.up.sql"),
        include_str!("../../migrations/postgres/000009_context_budget.down.sql"),
    ),
    (
        10,
        "message_parts",
        include_str!("../../migrations/postgres/000010_message_parts.up.sql"),
        include_str!("../../migrations/postgres/000010_message_parts.down.sql"),
    ),
    (
        11,
        "tools",
        include_str!("../../migrations/postgres/000011_tools.up.sql"),
        include_str!("../../migrations/postgres/000011_tools.down.sql"),
    ),
    (
        12,
        "seeds",
        include_str!("../../migrations/postgres/000012_seeds.up.sql"),
        include_str!("../../migrations/postgres/000012_seeds.down.sql"),
    ),
    (
        13,
        "rooms",
        include_str!("../../migrations/postgres/000013_rooms.up.sql"),
        include_str!("../../migrations/postgres/000013_rooms.down.sql"),
    ),
    (
        14,
        "dead_letters",
        include_str!("../../migrations/postgres/000014_dead_letters.up.sql"),
        include_str!("../../migrations/postgres/000014_dead_letters.down.sql"),
    ),
    (
        15,
        "access_keys",
        include_str!("../../migrations/postgres/000015_access_keys.up.sql"),
        include_str!("../../migrations/postgres/000015_access_keys.down.sql"),
    ),
    (
        16,
        "leader_lease",
        include_str!("../../migrations/postgres/000016_leader_lease.up.sql"),
        include_str!("../../migrations/postgres/000016_leader_lease.down.sql"),
    ),
];

const SQLITE: &[Step] = &[
    (
        1,
        "daarion_schema",
        include_str!("../../migrations/sqlite/000001_daarion_schema.up.sql"),
        include_str!("../../migrations/sqlite/000001_daarion_schema.down.sql"),
    ),
    (
        2,
        "agents",
        include_str!("../../migrations/sqlite/000002_agents.up.sql"),
        include_str!("../../migrations/sqlite/000002_agents.down.sql"),
    ),
    (
        3,
        "runs",
        include_str!("../../migrations/sqlite/000003_runs.up.sql"),
        include_str!("../../migrations/sqlite/000003_runs.down.sql"),
    ),
    (
        4,
        "durable_work",
        include_str!("../../migrations/sqlite/000004_durable_work.up.sql"),
        include_str!("../../migrations/sqlite/000004_durable_work.down.sql"),
    ),
    (
        5,
        "events",
        include_str!("../../migrations/sqlite/000005_events.up.sql"),
        include_str!("../../migrations/sqlite/000005_events.down.sql"),
    ),
    (
        6,
        "platform",
        include_str!("../../migrations/sqlite/000006_platform.up.sql"),
        include_str!("../../migrations/sqlite/000006_platform.down.sql"),
    ),
    (
        7,
        "crypto",
        include_str!("../../migrations/sqlite/000007_crypto.up.sql"),
        include_str!("../../migrations/sqlite/000007_crypto.down.sql"),
    ),
    (
        8,
        "hot_edits",
        include_str!("../../migrations/sqlite/000008_hot_edits.up.sql"),
        include_str!("../../migrations/sqlite/000008_hot_edits.down.sql"),
    ),
    (
        9,
        "context_budget",
        include_str!("../../migrations/sqlite/000009_context_budget.up.sql"),
        include_str!("../../migrations/sqlite/000009_context_budget.down.sql"),
    ),
    (
        10,
        "message_parts",
        include_str!("../../migrations/sqlite/000010_message_parts.up.sql"),
        include_str!("../../migrations/sqlite/000010_message_parts.down.sql"),
    ),
    (
        11,
        "tools",
        include_str!("../../migrations/sqlite/000011_tools.up.sql"),
        include_str!("../../migrations/sqlite/000011_tools.down.sql"),
    ),
    (
        12,
        "seeds",
        include_str!("../../migrations/sqlite/000012_seeds.up.sql"),
        include_str!("../../migrations/sqlite/000012_seeds.down.sql"),
    ),
    (
        13,
        "rooms",
        include_str!("../../migrations/sqlite/000013_rooms.up.sql"),
        include_str!("../../migrations/sqlite/000013_rooms.down.sql"),
    ),
    (
        14,
        "dead_letters",
        include_str!("../../migrations/sqlite/000014_dead_letters.up.sql"),
        include_str!("../../migrations/sqlite/000014_dead_letters.down.sql"),
    ),
    (
        15,
        "access_keys",
        include_str!("../../migrations/sqlite/000015_access_keys.up.sql"),
        include_str!("../../migrations/sqlite/000015_access_keys.down.sql"),
    ),
    (
        16,
        "leader_lease",
        include_str!("../../migrations/sqlite/000016_leader_lease.up.sql"),
        include_str!("../../migrations/sqlite/000016_leader_lease.down.sql"),
    ),
];

/// The migrations of one dialect, as a sqlx source.
#[derive(Debug, Clone, Copy)]
pub struct Embedded {
    postgres: bool,
}

impl Embedded {
    /// PostgreSQL's migrations.
    pub fn postgres() -> Self {
        Self { postgres: true }
    }
    /// SQLite's migrations.
    pub fn sqlite() -> Self {
        Self { postgres: false }
    }
    /// The newest version this binary knows.
    pub fn latest(&self) -> i64 {
        self.steps().last().map(|s| s.0).unwrap_or(0)
    }
    fn steps(&self) -> &'static [Step] {
        if self.postgres { POSTGRES } else { SQLITE }
    }
}

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for &(version, desc, up, down) in self.steps() {
                out.push(Migration::new(
                    version,
                    Cow::Borrowed(desc),
                    MigrationType::ReversibleUp,
                    Cow::Borrowed(up),
                    false,
                ));
                out.push(Migration::new(
                    version,
                    Cow::Borrowed(desc),
                    MigrationType::ReversibleDown,
                    Cow::Borrowed(down),
                    false,
                ));
            }
            Ok(out)
        })
    }
}

/// The `agents.kind` CHECK of the first SQLite migration.
const OLD_KINDS: &str =
    "CHECK (kind IN ('assistant', 'specialist', 'orchestrator', 'service', 'system', 'bot'))";
/// The ERD's values (the old ones stay accepted, as the issue allows, for rows others wrote).
const ERD_KINDS: &str = "CHECK (kind IN ('system', 'assistant', 'node', 'quest', 'specialist', 'orchestrator', 'service', 'bot'))";

/// The ERD's `messages.created_at` default, which the first SQLite migration lacked.
const OLD_CREATED_AT: &str = "created_at      TEXT NOT NULL,\n    edited_at";
/// With the default (the bridge always writes it; other services may rely on the ERD's).
const ERD_CREATED_AT: &str =
    "created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),\n    edited_at";

/// SQLite: widens the `agents.kind` CHECK to the ERD's values and gives `messages.created_at`
/// the ERD's `now()` default, then moves rows to the ERD's kinds. Neither change alters what is
/// stored, so the tables' SQL is edited in place, SQLite's documented procedure for such
/// changes (`writable_schema`, then a new schema version so every connection re-reads the
/// schema), rather than copying `messages`, which may be large. It runs on a connection of its
/// own after the migrations (their transaction cannot do it: the pool's connections would keep
/// the old schema), and is idempotent.
pub(super) async fn sqlite_erd_kinds(pool: &sqlx::SqlitePool) -> Result<(), sqlx::Error> {
    use sqlx::{Connection, Executor};
    let patches = [
        ("agents", OLD_KINDS, ERD_KINDS),
        ("messages", OLD_CREATED_AT, ERD_CREATED_AT),
    ];
    for (table, old, new) in patches {
        let sql: Option<String> =
            sqlx::query_scalar("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = $1")
                .bind(table)
                .fetch_optional(pool)
                .await?;
        let Some(sql) = sql.filter(|s| s.contains(old)) else {
            continue;
        };
        let options = pool.connect_options();
        let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
        // IMMEDIATE: take the write lock before reading `schema_version`. A deferred
        // transaction that reads and then writes gets "database is locked" at once (SQLite's
        // busy handler cannot help a stale snapshot) when another connection, such as a running
        // bridge's job worker, commits in between.
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let version: i64 = sqlx::query_scalar("PRAGMA schema_version")
            .fetch_one(&mut *tx)
            .await?;
        tx.execute("PRAGMA writable_schema = ON").await?;
        sqlx::query("UPDATE sqlite_schema SET sql = $1 WHERE type = 'table' AND name = $2")
            .bind(sql.replace(old, new))
            .bind(table)
            .execute(&mut *tx)
            .await?;
        tx.execute(format!("PRAGMA schema_version = {}", version + 1).as_str())
            .await?;
        tx.execute("PRAGMA writable_schema = OFF").await?;
        tx.commit().await?;
        conn.close().await?;
    }
    sqlx::query(
        "UPDATE agents SET kind = CASE kind WHEN 'specialist' THEN 'assistant' WHEN 'orchestrator' THEN 'system' \
         WHEN 'service' THEN 'node' WHEN 'bot' THEN 'system' ELSE kind END \
         WHERE kind IN ('specialist', 'orchestrator', 'service', 'bot')",
    )
    .execute(pool)
    .await?;
    Ok(())
}
