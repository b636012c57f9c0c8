//! Storage: one [`Store`] over PostgreSQL or SQLite. Reads and rare writes share SQL between
//! dialects through `both!`. The transaction write path ([`Store::apply`]) is one pipeline of
//! stages (`write/`): each stage is a file in `write/stages/` holding the rows it takes from
//! the [`Batch`], its PostgreSQL CTEs and its SQLite statements side by side, and the pipeline
//! drives either dialect (`write::pg`: one statement, one round trip; `write::sqlite`: prepared
//! statements inside one `BEGIN IMMEDIATE`). One file per table group holds that group's
//! **store handle** (`store.outbox()` → [`outbox::OutboxStore`], `store.runs()` →
//! [`runs::RunStore`], …): the group's queries, and nothing else. A component that needs one
//! group keeps that handle, so what it may touch shows in its fields; [`Store`] itself keeps
//! only what concerns the whole database (connecting, migrations, readiness, the transaction
//! write, start-up seeding).

pub mod admin;
pub mod admin_keys;
pub mod agents;
pub mod audit;
pub mod batch;
pub mod crypto;
pub mod dead_letters;
pub mod decode;
pub mod events;
pub mod failed;
pub mod jobs;
pub mod keys;
pub mod lease;
pub mod lifecycle;
pub mod listings;
pub mod messages;
pub mod migrate;
pub mod outbox;
pub mod parts;
pub mod rooms;
pub mod runs;
pub mod seed;
pub mod sessions;
pub mod steps;
pub mod text;
pub mod triggers;
mod write;

use std::{str::FromStr, time::Duration};

use sqlx::{
    PgPool, SqlitePool,
    migrate::Migrator,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use self::migrate::Embedded;
pub use self::{batch::*, text::DbText};
use crate::model::Ts;

/// Errors at the storage boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is down, unreachable, overloaded or busy: retry later (a transaction gets
    /// 503 so the homeserver retries it).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The database refused what was written (a constraint, a value out of range, a row too
    /// large): retrying the same input fails again, so the input must be isolated.
    #[error("database refused the write: {0}")]
    Rejected(#[source] sqlx::Error),
    /// A migration failed.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// `database.url` is not usable.
    #[error("invalid database url `{url}`: {problem}")]
    Url {
        /// The URL (password redacted by the caller's logging).
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A row the operation needs does not exist.
    #[error("no {what} `{key}`")]
    NotFound {
        /// What kind of row.
        what: &'static str,
        /// How it was looked up.
        key: String,
    },
    /// The operation's input is invalid (an unknown capability, say).
    #[error("{0}")]
    Invalid(String),
    /// A write of the leader's paths from a replica that does not hold the leader lease (a
    /// standby, or a leader that lost it): refused, the leader does it.
    #[error("this replica does not hold the leader lease")]
    Fenced,
}

impl StoreError {
    /// Whether trying again later may succeed (the database, not the input, is the problem).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Fenced)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_fenced(&error) {
            StoreError::Fenced
        } else if is_transient(&error) {
            StoreError::Unavailable(error)
        } else {
            StoreError::Rejected(error)
        }
    }
}

/// Whether the fence refused the write: `bridge_leader_check`'s SQLSTATE, or a connection the
/// fence did not admit (`db::lease`).
fn is_fenced(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().as_deref() == Some(lease::FENCED_SQLSTATE),
        sqlx::Error::Protocol(message) => message == lease::FENCED,
        _ => false,
    }
}

/// Whether a database error is about the database's availability rather than the statement's
/// input. Unknown cases count as transient: a wrong "transient" costs a retry, a wrong
/// "rejected" would drop data.
fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                // SQLSTATE classes: 22 data exception, 23 integrity constraint violation,
                // 42 syntax/access rule, 54 program limit exceeded (a row too large for an
                // index), XX internal: the input. Everything else (08 connection, 40
                // serialization, 53 resources, 55 object state, 57 operator intervention, 58
                // system) is the server's condition.
                let class = &pg.code()[..2.min(pg.code().len())];
                return !matches!(class, "22" | "23" | "42" | "54" | "2B" | "P0");
            }
            // SQLite: extended result codes; constraint (19), too big (18), mismatch (20) and
            // range (25) are the input's fault; busy, locked, I/O, full, cannot open are not.
            let primary = code.parse::<i32>().map(|c| c & 0xff).unwrap_or(0);
            !matches!(primary, 18..=20 | 25)
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::Encode(_)
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::RowNotFound
        | sqlx::Error::InvalidArgument(_) => false,
        _ => true,
    }
}

/// The pool's check of a new PostgreSQL connection against the fence (`db::lease`).
#[allow(clippy::type_complexity)]
fn admit(
    fence: &std::sync::Arc<lease::Fence>,
) -> impl for<'c> Fn(
    &'c mut sqlx::PgConnection,
    sqlx::pool::PoolConnectionMetadata,
) -> futures_core::future::BoxFuture<'c, Result<(), sqlx::Error>>
+ Send
+ Sync
+ 'static {
    let fence = fence.clone();
    move |conn, _| {
        let fence = fence.clone();
        Box::pin(async move { fence.admit(conn).await })
    }
}

/// The two supported databases.
#[derive(Clone, Debug)]
pub enum Pool {
    /// PostgreSQL (production).
    Pg(PgPool),
    /// SQLite (the zero-setup default).
    Sqlite(SqlitePool),
}

/// Runs the same block against whichever pool is configured; the block is type-checked once per
/// dialect, so shared SQL must be valid in both.
macro_rules! both {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            $crate::db::Pool::Pg($pool) => $body,
            $crate::db::Pool::Sqlite($pool) => $body,
        }
    };
}
pub(crate) use both;

/// The bridge's database.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) pool: Pool,
    /// PostgreSQL: the connections of the transaction write path, set to generic plans: the
    /// statement's many CTEs cost more to plan than to run (custom plans would re-plan it on
    /// every execution), and its lookups are written to use their indexes whatever the plan
    /// (see `write::pg`).
    writer: Option<PgPool>,
    /// SQLite has one writer at a time; queueing writers here (FIFO) beats SQLite's busy handler,
    /// which sleeps in growing steps and turns contention into 100 ms+ tail latencies.
    write_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Whether writes append events to `outbox_events` (`events.enabled`).
    events: bool,
    /// Poked after a commit that appended events, so the publisher does not wait for its poll.
    events_written: std::sync::Arc<tokio::sync::Notify>,
    /// This process's place among the replicas: what its connections and the leader's writes
    /// are checked against (`db::lease`).
    fence: std::sync::Arc<lease::Fence>,
}

impl Store {
    /// Opens a pool. SQLite files are created when missing and run in WAL mode.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let fence = std::sync::Arc::new(lease::Fence::default());
        let mut writer = None;
        let pool = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            writer = Some(
                PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(5))
                    // No ping before each use: it would double the transaction's round trips,
                    // and a connection that died (a database restart) fails its statement with
                    // 503, which the homeserver retries on a fresh one.
                    .test_before_acquire(false)
                    // Generic plans: the write statement is planned once per connection, not
                    // per transaction. A generic plan made while `messages` was small would
                    // look edits and redactions up with a sequential scan for as long as the
                    // connection lives (a full scan per edit once the table is large), so
                    // sequential scans are priced out on these connections: every lookup of
                    // the write path has an index, and it is used whatever the statistics
                    // said when the plan was made. That price would make every plan look
                    // expensive enough for JIT compilation (hundreds of milliseconds per
                    // execution for a statement that takes one), so JIT is off: short OLTP
                    // statements never gain from it. All three travel in the startup packet:
                    // no extra round trip.
                    .after_connect(admit(&fence))
                    .connect_with(
                        url.parse::<sqlx::postgres::PgConnectOptions>()?
                            .application_name(&fence.application_name())
                            .options([
                                ("plan_cache_mode", "force_generic_plan"),
                                ("enable_seqscan", "off"),
                                ("jit", "off"),
                            ]),
                    )
                    .await?,
            );
            Pool::Pg(
                PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(5))
                    .after_connect(admit(&fence))
                    // Reads are short or paged (exports, listings): compiling one with JIT costs
                    // far more than running it.
                    .connect_with(
                        url.parse::<sqlx::postgres::PgConnectOptions>()?
                            .application_name(&fence.application_name())
                            .options([("jit", "off")]),
                    )
                    .await?,
            )
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| StoreError::Url {
                    url: url.into(),
                    problem: e.to_string(),
                })?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // WAL + NORMAL: a commit survives a process crash; only an OS crash can lose the
                // last commits, which the homeserver then resends (their txnIds are not recorded).
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10));
            Pool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .test_before_acquire(false)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(options)
                    .await?,
            )
        } else {
            return Err(StoreError::Url {
                url: url.into(),
                problem: "expected sqlite://… or postgres://…".into(),
            });
        };
        Ok(Self {
            pool,
            writer,
            write_lock: Default::default(),
            events: true,
            events_written: Default::default(),
            fence,
        })
    }

    /// The fence a leader's statement carries: its epoch and this process's token.
    fn fenced(&self, epoch: Option<i64>) -> Option<(i64, &str)> {
        epoch.map(|e| (e, self.fence.token()))
    }

    /// This process's place among the replicas (`db::lease`).
    pub fn fence(&self) -> &std::sync::Arc<lease::Fence> {
        &self.fence
    }

    /// Turns event appending on or off (`events.enabled`; on by default).
    pub fn with_events(mut self, enabled: bool) -> Self {
        self.events = enabled;
        self
    }

    /// Whether writes append events.
    pub fn events_enabled(&self) -> bool {
        self.events
    }

    /// Notified after commits that appended events (the publisher waits on it).
    pub fn events_written(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.events_written.clone()
    }

    /// Tells the publisher that events were committed.
    pub(crate) fn wake_publisher(&self) {
        if self.events {
            self.events_written.notify_one();
        }
    }

    /// Whether this is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self.pool, Pool::Pg(_))
    }

    /// The pool, for tests and tools that run their own SQL.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    fn source(&self) -> Embedded {
        if self.is_postgres() {
            Embedded::postgres()
        } else {
            Embedded::sqlite()
        }
    }

    /// Applies pending migrations. On PostgreSQL it first waits while a replica of an older
    /// release leads (`lease::until_no_older_leader`): its tables must not change under it.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = Migrator::new(self.source()).await?;
        if let Pool::Pg(pool) = &self.pool {
            lease::until_no_older_leader(pool, self.source().latest()).await?;
        }
        both!(self, pool => migrator.run(pool).await?);
        if let Pool::Sqlite(pool) = &self.pool {
            migrate::sqlite_erd_kinds(pool).await?;
        }
        Ok(())
    }

    /// Reverts every migration (down steps), newest first.
    pub async fn migrate_down_all(&self) -> Result<(), StoreError> {
        let migrator = Migrator::new(self.source()).await?;
        both!(self, pool => migrator.undo(pool, 0).await?);
        Ok(())
    }

    /// Reverts the migrations newer than `version`, newest first (upgrade tests, and an
    /// operator stepping back one release).
    pub async fn migrate_down_to(&self, version: i64) -> Result<(), StoreError> {
        let migrator = Migrator::new(self.source()).await?;
        both!(self, pool => migrator.undo(pool, version).await?);
        Ok(())
    }

    /// Ready = the database answers and the newest migration is applied.
    pub async fn ready(&self) -> Result<bool, StoreError> {
        let latest = self.source().latest();
        let applied: Option<i64> = both!(self, pool => sqlx::query_scalar(
            "SELECT MAX(version) FROM _sqlx_migrations WHERE success"
        )
        .fetch_one(pool)
        .await?);
        Ok(applied.unwrap_or(0) >= latest)
    }

    /// Applies a batch atomically. Returns `false` (and changes nothing) when the batch's
    /// transaction was already applied.
    pub async fn apply(&self, batch: &Batch) -> Result<bool, StoreError> {
        let applied = match (&self.pool, &self.writer) {
            (_, Some(writer)) => {
                let epoch = self.fence.write_epoch()?;
                write::apply_pg(writer, batch, self.events, self.fenced(epoch)).await
            }
            (Pool::Pg(pool), None) => {
                let epoch = self.fence.write_epoch()?;
                write::apply_pg(pool, batch, self.events, self.fenced(epoch)).await
            }
            (Pool::Sqlite(pool), None) => {
                // Single-process (a file lock): a standby never reaches here, but a step-down
                // is honoured all the same.
                self.fence.write_epoch()?;
                let _writer = self.write_lock.lock().await;
                write::apply_sqlite(pool, batch, self.events).await
            }
        }?;
        if applied {
            self.wake_publisher();
        }
        Ok(applied)
    }

    /// How the database executes the write path's lookups by Matrix event id (edits and
    /// redactions): `EXPLAIN` of the batch's statement on PostgreSQL (a generic plan, as the
    /// writer connections run it), `EXPLAIN QUERY PLAN` of the edit and redaction statements on
    /// SQLite. For tests that prove the lookups use the `matrix_event_id` index.
    #[doc(hidden)]
    pub async fn explain_apply(&self, batch: &Batch) -> Result<String, StoreError> {
        match (&self.pool, &self.writer) {
            (_, Some(writer)) => write::explain_pg(writer, batch, self.events).await,
            (Pool::Pg(pool), None) => write::explain_pg(pool, batch, self.events).await,
            (Pool::Sqlite(pool), None) => write::explain_sqlite(pool).await,
        }
    }

    /// Deletes transaction records older than `cutoff` (the homeserver's retry window is
    /// minutes to hours; records far older than it protect nothing). Returns how many.
    pub async fn prune_transactions(&self, cutoff: Ts) -> Result<u64, StoreError> {
        Ok(both!(self, pool => sqlx::query(
            "DELETE FROM bridge_transactions WHERE processed_at < $1"
        )
        .bind(cutoff)
        .execute(pool)
        .await?
        .rows_affected()))
    }
}

/// `base`, or the first of `base-2`, `base-3`, … not in `taken`.
pub(crate) fn pick_slug(base: &str, taken: &[String]) -> String {
    if !taken.iter().any(|t| t == base) {
        return base.to_owned();
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|candidate| !taken.iter().any(|t| t == candidate))
        .unwrap_or_else(|| format!("{base}-{}", uuid::Uuid::now_v7().simple()))
}
