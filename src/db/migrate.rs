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
