//! Leadership among replicas: waiting as a standby, taking the lease, renewing it while leading,
//! stepping down when it is lost. `app` runs the leader's work while [`Leadership::hold`] lasts;
//! the lease and the fence themselves are `db::lease`.
//!
//! SQLite is single-process: [`Leadership::start`] takes an exclusive lock on `<file>.lock`
//! (released by the kernel when the process dies, kill -9 included) and refuses to start when
//! another process holds it; the lease is then taken at once.

use std::{
    fs::File,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use crate::{
    config::LeaderConfig,
    db::{
        Pool, Store,
        lease::{Fence, Role},
    },
    metrics::{Metrics, OutcomeLabel},
};

/// Why the leader's work ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The process is shutting down (the lease is released).
    Shutdown,
    /// Another replica holds the lease now, or it could not be renewed within its TTL.
    Lost,
    /// A background task keeps failing (the process stops).
    Broken,
}

/// Start-up refusals.
#[derive(Debug, thiserror::Error)]
pub enum LeadershipError {
    /// Another process has the SQLite file open as a bridge.
    #[error(
        "another daarion-bridge process is running on the SQLite database {0}: SQLite is single-process (one bridge per file); use PostgreSQL to run replicas (docs/deployment.md)"
    )]
    SqliteInUse(String),
    /// The lock file cannot be created.
    #[error("cannot create the SQLite lock file {path}: {source}")]
    LockFile {
        /// The lock file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// This process's leadership: its name, the lease's timings, the fence it sets.
pub struct Leadership {
    store: Store,
    fence: Arc<Fence>,
    metrics: Arc<Metrics>,
    replica: String,
    ttl: Duration,
    every: Duration,
    /// SQLite: the lease is taken at once (the file lock proves this is the only process).
    force: bool,
    /// SQLite: the lock held for the process's life.
    _lock: Option<File>,
}

impl Leadership {
    /// Becomes a standby (taking SQLite's file lock first).
    pub fn start(
        store: &Store,
        config: &LeaderConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, LeadershipError> {
        let lock = match store.pool() {
            Pool::Sqlite(pool) => lock_sqlite(pool)?,
            Pool::Pg(_) => None,
        };
        let fence = store.fence().clone();
        fence.set(Role::Standby);
        metrics.leader.set(0);
        Ok(Self {
            store: store.clone(),
            fence,
            metrics,
            replica: config.replica_name(),
            ttl: config.ttl,
            every: config.renew_interval,
            force: !store.is_postgres(),
            _lock: lock,
        })
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// One try at the lease: `Some(epoch)` when this replica leads now.
    pub async fn try_lead(&self) -> Option<i64> {
        match self
            .store
            .lease()
            .acquire(&self.replica, self.ttl, self.force)
            .await
        {
            Ok(Some(acquired)) => {
                self.fence.set(Role::Leader(acquired.epoch));
                self.metrics.leader.set(1);
                self.metrics.leader_epoch.set(acquired.epoch);
                self.count("acquired");
                tracing::info!(
                    replica = %self.replica,
                    epoch = acquired.epoch,
                    previous = acquired.previous.as_deref().unwrap_or("none"),
                    "this replica leads"
                );
                Some(acquired.epoch)
            }
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, "cannot try the leader lease; retrying");
                None
            }
        }
    }

    /// Waits as a standby until this replica leads (`Some(epoch)`) or `stop` is cancelled.
    pub async fn wait(&self, stop: &CancellationToken) -> Option<i64> {
        let mut announced = false;
        loop {
            if let Some(epoch) = self.try_lead().await {
                return Some(epoch);
            }
            if !announced {
                announced = true;
                let leader = self.store.lease().current().await.ok().flatten();
                tracing::info!(
                    replica = %self.replica,
                    leader = leader.as_ref().map(|l| l.replica.as_str()).unwrap_or("unknown"),
                    "another replica leads: this one is a standby (agent and admin APIs only)"
                );
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(self.every) => {}
            }
        }
    }

    /// Renews the lease at `epoch` until `stop` (shutdown), `broken` (a task keeps failing),
    /// or the lease is lost: another replica took it (the renewal or a new connection's check
    /// found out), or it could not be renewed for a whole TTL (the database away: the others
    /// may take over any moment, so this one stops leading first).
    pub async fn hold(
        &self,
        epoch: i64,
        stop: &CancellationToken,
        broken: &CancellationToken,
    ) -> Held {
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Held::Shutdown,
                _ = broken.cancelled() => return Held::Broken,
                _ = tokio::time::sleep(self.every) => {}
            }
            if self.fence.role() != Role::Leader(epoch) {
                return self.lost(epoch, "a new connection found the lease moved");
            }
            match self.store.lease().renew(epoch, self.ttl).await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => return self.lost(epoch, "another replica took the lease"),
                Err(error) if renewed.elapsed() >= self.ttl => {
                    tracing::warn!(%error, "cannot renew the leader lease");
                    return self.lost(epoch, "the lease could not be renewed within its ttl");
                }
                Err(error) => tracing::warn!(%error, "cannot renew the leader lease; retrying"),
            }
        }
    }

    fn lost(&self, epoch: i64, why: &'static str) -> Held {
        self.fence.set(Role::Lost);
        self.metrics.leader.set(0);
        self.count("lost");
        tracing::error!(replica = %self.replica, epoch, why, "leader lease lost: stepping down (nothing more is committed under this epoch)");
        Held::Lost
    }

    /// After the leader's work stopped: a standby again (new connections are let through).
    pub fn stand_by(&self) {
        self.fence.set(Role::Standby);
        self.metrics.leader.set(0);
    }

    /// Gives the lease up on shutdown, after the leader's work drained, so a standby takes
    /// over at its next try rather than after the TTL.
    pub async fn release(&self, epoch: i64) {
        self.fence.set(Role::Standby);
        self.metrics.leader.set(0);
        match self.store.lease().release(epoch).await {
            Ok(()) => {
                self.count("released");
                tracing::info!(replica = %self.replica, epoch, "leader lease released");
            }
            Err(error) => {
                tracing::warn!(%error, "cannot release the leader lease; it expires by itself")
            }
        }
    }

    fn count(&self, outcome: &'static str) {
        self.metrics
            .leader_changes
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}

/// Takes the exclusive lock on `<file>.lock` beside a SQLite file (none for in-memory
/// databases).
fn lock_sqlite(pool: &sqlx::SqlitePool) -> Result<Option<File>, LeadershipError> {
    let file: PathBuf = pool.connect_options().get_filename().to_owned();
    let name = file.to_string_lossy();
    if name.is_empty() || name == ":memory:" || name.starts_with("file::memory:") {
        return Ok(None);
    }
    let path = PathBuf::from(format!("{name}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| LeadershipError::LockFile {
            path: path.display().to_string(),
            source,
        })?;
    match lock.try_lock() {
        Ok(()) => Ok(Some(lock)),
        Err(std::fs::TryLockError::WouldBlock) => Err(LeadershipError::SqliteInUse(name.into())),
        Err(std::fs::TryLockError::Error(source)) => Err(LeadershipError::LockFile {
            path: path.display().to_string(),
            source,
        }),
    }
}
