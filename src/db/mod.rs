//! Storage: one [`Store`] over PostgreSQL or SQLite. Reads share SQL between dialects through
//! [`both!`]; the transaction write path ([`Store::apply`]) has one implementation per dialect
//! because PostgreSQL gets one batched statement per kind of row (arrays + `UNNEST`) while
//! SQLite, in-process, runs prepared statements per row inside one `BEGIN IMMEDIATE`.

pub mod agents;
pub mod batch;
pub mod migrate;
mod postgres;
pub mod runs;
mod seed;
mod sqlite;
pub mod types;

use std::{str::FromStr, time::Duration};

use sqlx::{
    PgPool, Row, SqlitePool,
    migrate::Migrator,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    types::Json,
};

pub use self::batch::*;
use self::migrate::Embedded;
use crate::ids::{AgentId, MicrodaoId};

/// Errors at the storage boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid database url `{url}`: {problem}")]
    Url { url: String, problem: String },
    #[error("{0}")]
    Seed(String),
}

/// The two supported databases.
#[derive(Clone, Debug)]
pub enum Pool {
    Pg(PgPool),
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

/// Maps a `load_rooms` row (same columns in both dialects).
macro_rules! stored_room {
    ($r:expr) => {
        StoredRoom {
            room_id: $r.try_get(0)?,
            microdao_id: $r.try_get(1)?,
            name: $r.try_get(2)?,
            topic: $r.try_get(3)?,
            visibility: Visibility::parse($r.try_get::<&str, _>(4)?).unwrap_or(Visibility::Private),
            name_source: $r
                .try_get::<Option<&str>, _>(5)?
                .map(NameSource::parse)
                .unwrap_or(NameSource::Platform),
            visibility_pinned: $r.try_get::<Option<bool>, _>(6)?.unwrap_or(true),
            power_levels: $r
                .try_get::<Option<Json<PowerLevels>>, _>(7)?
                .map(|j| j.0)
                .unwrap_or_default(),
            is_direct: $r.try_get::<Option<bool>, _>(8)?.unwrap_or(false),
            agents: Vec::new(),
        }
    };
}

/// A mirrored room as stored: its channel row plus the bridge's bookkeeping.
#[derive(Debug, Clone)]
pub struct StoredRoom {
    pub room_id: String,
    pub microdao_id: MicrodaoId,
    pub name: String,
    pub topic: Option<String>,
    pub visibility: Visibility,
    pub name_source: NameSource,
    pub visibility_pinned: bool,
    pub power_levels: PowerLevels,
    pub is_direct: bool,
    /// Active agent members: (agent matrix id, respond setting).
    pub agents: Vec<(String, String)>,
}

/// An agent row, as the mirror needs it.
#[derive(Debug, Clone)]
pub struct StoredAgent {
    pub id: AgentId,
    pub matrix_id: String,
    pub name: String,
    pub microdao_id: Option<MicrodaoId>,
}

#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) pool: Pool,
    /// SQLite has one writer at a time; queueing writers here (FIFO) beats SQLite's busy handler,
    /// which sleeps in growing steps and turns contention into 100 ms+ tail latencies.
    write_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Store {
    /// Opens a pool. SQLite files are created when missing and run in WAL mode.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let pool = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Pool::Pg(
                PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect(url)
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
            write_lock: Default::default(),
        })
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.pool, Pool::Pg(_))
    }

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

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = Migrator::new(self.source()).await?;
        both!(self, pool => migrator.run(pool).await?);
        Ok(())
    }

    /// Reverts every migration (down steps), newest first.
    pub async fn migrate_down_all(&self) -> Result<(), StoreError> {
        let migrator = Migrator::new(self.source()).await?;
        both!(self, pool => migrator.undo(pool, 0).await?);
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

    /// Loads the mirrored rooms among `room_ids`.
    pub async fn load_rooms(&self, room_ids: &[&str]) -> Result<Vec<StoredRoom>, StoreError> {
        if room_ids.is_empty() {
            return Ok(Vec::new());
        }
        const COLS: &str = "SELECT c.matrix_room_id, c.microdao_id, c.name, c.topic, c.visibility, \
             br.name_source, br.visibility_pinned, br.power_levels, br.is_direct \
             FROM channels c LEFT JOIN bridge_rooms br ON br.channel_id = c.id WHERE ";
        let rows = match &self.pool {
            Pool::Pg(pool) => {
                let ids: Vec<&str> = room_ids.to_vec();
                sqlx::query(&format!("{COLS} c.matrix_room_id = ANY($1)"))
                    .bind(ids)
                    .fetch_all(pool)
                    .await?
                    .into_iter()
                    .map(|r| Ok::<_, sqlx::Error>(stored_room!(r)))
                    .collect::<Result<Vec<_>, _>>()?
            }
            Pool::Sqlite(pool) => {
                let ids = serde_json::to_string(room_ids).expect("strings serialize");
                sqlx::query(&format!(
                    "{COLS} c.matrix_room_id IN (SELECT value FROM json_each($1))"
                ))
                .bind(ids)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| Ok::<_, sqlx::Error>(stored_room!(r)))
                .collect::<Result<Vec<_>, _>>()?
            }
        };
        let mut rows = rows;
        if !rows.is_empty() {
            const AGENTS: &str = "SELECT c.matrix_room_id, a.matrix_id, COALESCE(s.respond, 'mentions') \
                 FROM channel_members cm JOIN channels c ON c.id = cm.channel_id \
                 JOIN agents a ON a.id = cm.member_agent_id \
                 LEFT JOIN agent_channel_settings s ON s.agent_id = a.id AND s.channel_id = c.id \
                 WHERE cm.left_at IS NULL AND a.matrix_id IS NOT NULL AND ";
            let ids: Vec<&str> = rows.iter().map(|r| r.room_id.as_str()).collect();
            let agents: Vec<(String, String, String)> = match &self.pool {
                Pool::Pg(pool) => {
                    sqlx::query_as(&format!("{AGENTS} c.matrix_room_id = ANY($1)"))
                        .bind(ids)
                        .fetch_all(pool)
                        .await?
                }
                Pool::Sqlite(pool) => {
                    sqlx::query_as(&format!(
                        "{AGENTS} c.matrix_room_id IN (SELECT value FROM json_each($1))"
                    ))
                    .bind(serde_json::to_string(&ids).expect("strings serialize"))
                    .fetch_all(pool)
                    .await?
                }
            };
            for (room, agent, respond) in agents {
                if let Some(r) = rows.iter_mut().find(|r| r.room_id == room) {
                    r.agents.push((agent, respond));
                }
            }
        }
        Ok(rows)
    }

    /// Which of `matrix_ids` already have a `users` row.
    pub async fn known_users(&self, matrix_ids: &[&str]) -> Result<Vec<String>, StoreError> {
        if matrix_ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(match &self.pool {
            Pool::Pg(pool) => {
                sqlx::query_scalar("SELECT matrix_id FROM users WHERE matrix_id = ANY($1)")
                    .bind(matrix_ids.to_vec())
                    .fetch_all(pool)
                    .await?
            }
            Pool::Sqlite(pool) => sqlx::query_scalar(
                "SELECT matrix_id FROM users WHERE matrix_id IN (SELECT value FROM json_each($1))",
            )
            .bind(serde_json::to_string(matrix_ids).expect("strings serialize"))
            .fetch_all(pool)
            .await?,
        })
    }

    /// Every agent that has a Matrix id.
    pub async fn agents(&self) -> Result<Vec<StoredAgent>, StoreError> {
        let rows = both!(self, pool => {
            sqlx::query("SELECT id, matrix_id, name, microdao_id FROM agents WHERE matrix_id IS NOT NULL")
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| Ok::<_, sqlx::Error>(StoredAgent {
                    id: r.try_get(0)?,
                    matrix_id: r.try_get(1)?,
                    name: r.try_get(2)?,
                    microdao_id: r.try_get(3)?,
                }))
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// `microdaos.id` for an external id such as `microdao:7`.
    pub async fn microdao_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<MicrodaoId>, StoreError> {
        Ok(
            both!(self, pool => sqlx::query_scalar("SELECT id FROM microdaos WHERE external_id = $1")
            .bind(external_id)
            .fetch_optional(pool)
            .await?),
        )
    }

    /// Applies a batch atomically. Returns `false` (and changes nothing) when the batch's txnId
    /// was already applied.
    pub async fn apply(&self, batch: &Batch) -> Result<bool, StoreError> {
        match &self.pool {
            Pool::Pg(pool) => postgres::apply(pool, batch).await,
            Pool::Sqlite(pool) => {
                let _writer = self.write_lock.lock().await;
                sqlite::apply(pool, batch).await
            }
        }
    }

    /// Upserts the microDAOs, blueprints and agents the config declares.
    pub async fn seed(&self, config: &crate::config::Config) -> Result<(), StoreError> {
        seed::seed(self, config).await
    }
}

mod shared;

/// `base`, or the first of `base-2`, `base-3`, … not in `taken`.
pub(crate) fn pick_slug(base: &str, taken: &[String]) -> String {
    if !taken.iter().any(|t| t == base) {
        return base.to_owned();
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|candidate| !taken.iter().any(|t| t == candidate))
        .expect("an unbounded range always has a free slug")
}
