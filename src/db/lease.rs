//! The leader lease (`bridge_leader_lease`) and the [`Fence`] on this process's writes.
//!
//! Replicas share one PostgreSQL; the one holding the lease leads. The lease has an **epoch**,
//! one more at every take-over, which is the fencing token. A leader that lost the lease (paused
//! past its TTL, partitioned) must commit nothing after a standby took over. Three things make
//! that so, cheapest first:
//! 1. **Connections are named** (`application_name = daarion-bridge/<token>`). A take-over
//!    terminates the previous holder's backends *after* its lease update commits: whatever the
//!    old leader had open (an idle transaction holding locks included) is gone before the new
//!    leader starts its work.
//! 2. **New connections are checked**: while this process believes it leads, a new connection
//!    first reads the lease; if the epoch moved, the connection is refused and the process
//!    knows it lost ([`Role::Lost`]). A lost replica opens no connection until its leader work
//!    has stopped.
//! 3. **The leader's own transactions carry the epoch**: the homeserver transaction's statement
//!    and the crypto store's writes call `bridge_leader_check(epoch, token)` inside their
//!    transaction (SQLSTATE `DBF01` when the lease moved), so neither commits under a stale
//!    epoch even on a connection that slipped through.
//!
//! SQLite is single-process (an exclusive lock on `<file>.lock`, taken by `run`): its lease is
//! taken at once, for status and the epoch, and needs no fence.

use std::{
    sync::atomic::{AtomicI64, Ordering},
    time::Duration,
};

use serde::Serialize;

use crate::{
    db::{Pool, Store, StoreError},
    model::Ts,
};

/// The mark of a connection refused by the fence (`sqlx::Error::Protocol`), read back as
/// [`StoreError::Fenced`].
pub(crate) const FENCED: &str = "daarion-bridge: leader lease lost";

/// PostgreSQL's SQLSTATE for `bridge_leader_check`'s refusal.
pub(crate) const FENCED_SQLSTATE: &str = "DBF01";

const OFF: i64 = 0;
const STANDBY: i64 = -1;
const LOST: i64 = -2;

/// What this process is among the replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// No leadership in play: a command-line tool, a test's store. Writes are not fenced.
    Off,
    /// Waiting for the lease: serves the agent and admin APIs, leads nothing.
    Standby,
    /// Holds the lease at this epoch.
    Leader(i64),
    /// Held the lease and lost it; refuses every new connection until its leader work stopped.
    Lost,
}

/// This process's place among the replicas, shared by every clone of the [`Store`] and read by
/// its connections' check.
#[derive(Debug)]
pub struct Fence {
    state: AtomicI64,
    /// The epoch whose leader work has started (0: none): a new leader takes homeserver
    /// transactions only from then on (see [`Fence::leads`]).
    serving: AtomicI64,
    token: String,
}

impl Default for Fence {
    fn default() -> Self {
        Self {
            state: AtomicI64::new(OFF),
            serving: AtomicI64::new(0),
            token: uuid::Uuid::new_v4().simple().to_string(),
        }
    }
}

impl Fence {
    /// This process's token: the lease's `holder` while it leads.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The `application_name` of this process's connections (≤ 63 bytes, PostgreSQL's limit).
    pub fn application_name(&self) -> String {
        application_name(&self.token)
    }

    /// The role now.
    pub fn role(&self) -> Role {
        match self.state.load(Ordering::SeqCst) {
            OFF => Role::Off,
            STANDBY => Role::Standby,
            LOST => Role::Lost,
            epoch => Role::Leader(epoch),
        }
    }

    /// Sets the role (the leadership loop does).
    pub fn set(&self, role: Role) {
        let value = match role {
            Role::Off => OFF,
            Role::Standby => STANDBY,
            Role::Lost => LOST,
            Role::Leader(epoch) => epoch.max(1),
        };
        self.state.store(value, Ordering::SeqCst);
    }

    /// Marks a leader as having lost the lease; a standby or an unfenced store stays as it is.
    fn lose(&self, epoch: i64) {
        let _ = self
            .state
            .compare_exchange(epoch, LOST, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Marks the leader work of `epoch` as started: its agents' crypto machines are loaded
    /// afresh and its tasks run, so it may take homeserver transactions.
    pub fn serve(&self, epoch: i64) {
        self.serving.store(epoch, Ordering::SeqCst);
    }

    /// Whether this process does the leader's work now (homeserver transactions above all):
    /// it holds the lease and its leader work has started, or no leadership is in play.
    ///
    /// Between taking the lease and starting its work a new leader answers like a standby: a
    /// transaction taken before its machines are loaded from the database would find no machine
    /// for its encrypted events (left waiting for a key they already have) and drop its room
    /// keys (to-device events for no machine are ignored).
    pub fn leads(&self) -> bool {
        match self.role() {
            Role::Off => true,
            Role::Leader(epoch) => self.serving.load(Ordering::SeqCst) == epoch,
            Role::Standby | Role::Lost => false,
        }
    }

    /// The epoch a leader's write must carry: `None` when nothing is fenced (`Off`), the
    /// refusal when this process does not lead.
    pub(crate) fn write_epoch(&self) -> Result<Option<i64>, StoreError> {
        match self.role() {
            Role::Off => Ok(None),
            Role::Leader(epoch) => Ok(Some(epoch)),
            Role::Standby | Role::Lost => Err(StoreError::Fenced),
        }
    }

    /// The check a new PostgreSQL connection passes before the pool hands it out (see the
    /// module's point 2). One indexed read of a one-row table, only while leading, only per new
    /// connection.
    pub(crate) async fn admit(&self, conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        match self.role() {
            Role::Off | Role::Standby => Ok(()),
            Role::Lost => Err(sqlx::Error::Protocol(FENCED.into())),
            Role::Leader(epoch) => {
                let held: Option<i64> = sqlx::query_scalar(
                    "SELECT epoch FROM bridge_leader_lease \
                     WHERE name = 'leader' AND epoch = $1 AND holder = $2",
                )
                .bind(epoch)
                .bind(&self.token)
                .fetch_optional(&mut *conn)
                .await?;
                if held.is_some() {
                    Ok(())
                } else {
                    self.lose(epoch);
                    tracing::error!(
                        epoch,
                        "the leader lease moved to another replica: this one commits nothing more and steps down"
                    );
                    Err(sqlx::Error::Protocol(FENCED.into()))
                }
            }
        }
    }
}

/// The `application_name` of a process's connections, by its token.
fn application_name(token: &str) -> String {
    format!("daarion-bridge/{token}")
}

/// The lease as the database has it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Lease {
    /// The fencing token.
    pub epoch: i64,
    /// The holding replica's name.
    pub replica: String,
    /// The holding process's token.
    #[serde(skip)]
    pub holder: String,
    /// When the holder took it.
    pub acquired_at: Ts,
    /// When the holder last renewed it.
    pub renewed_at: Ts,
    /// When it is free unless renewed.
    pub expires_at: Ts,
}

/// The lease this process took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    /// Its epoch.
    pub epoch: i64,
    /// The replica that held it before, if another did.
    pub previous: Option<String>,
}

/// `store.lease()`: taking, renewing and releasing the leader lease.
#[derive(Clone, Debug)]
pub struct LeaseStore {
    store: Store,
}

impl Store {
    /// The leader lease.
    pub fn lease(&self) -> LeaseStore {
        LeaseStore {
            store: self.clone(),
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl LeaseStore {
    /// Takes the lease for `replica` when it is free (expired, or never taken), or at once with
    /// `force` (SQLite, whose single process is proven by a file lock). On PostgreSQL the
    /// previous holder's connections are terminated before and after the update commits (see
    /// the module's point 1), so when this returns, the old leader can commit nothing more.
    /// `None`: another replica holds it.
    pub async fn acquire(
        &self,
        replica: &str,
        ttl: Duration,
        force: bool,
    ) -> Result<Option<Acquired>, StoreError> {
        let token = self.store.fence.token().to_owned();
        match &self.store.pool {
            Pool::Pg(pool) => {
                let current: Option<(String, String, bool)> = sqlx::query_as(
                    "SELECT holder, replica, expires_at < now() FROM bridge_leader_lease \
                     WHERE name = 'leader'",
                )
                .fetch_optional(pool)
                .await?;
                let previous = match &current {
                    Some((_, _, false)) if !force => return Ok(None),
                    // An empty holder released the lease on shutdown: nothing of it is left.
                    Some((holder, replica, _)) if *holder != token && !holder.is_empty() => {
                        self.terminate(holder).await?;
                        Some((holder.clone(), replica.clone()))
                    }
                    Some((_, replica, _)) => Some((String::new(), replica.clone())),
                    None => None,
                };
                let epoch: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO bridge_leader_lease (name, epoch, holder, replica, expires_at) \
                     VALUES ('leader', 1, $1, $2, now() + make_interval(secs => $3)) \
                     ON CONFLICT (name) DO UPDATE SET epoch = bridge_leader_lease.epoch + 1, \
                       holder = excluded.holder, replica = excluded.replica, \
                       acquired_at = now(), renewed_at = now(), expires_at = excluded.expires_at \
                     WHERE bridge_leader_lease.expires_at < now() OR $4 \
                     RETURNING epoch",
                )
                .bind(&token)
                .bind(replica)
                .bind(secs(ttl))
                .bind(force)
                .fetch_optional(pool)
                .await?;
                let Some(epoch) = epoch else {
                    return Ok(None);
                };
                if let Some((holder, _)) = previous.as_ref().filter(|(h, _)| !h.is_empty()) {
                    // A connection the old holder opened between the first termination and
                    // the update passed its check then; it goes now.
                    self.terminate(holder).await?;
                }
                Ok(Some(Acquired {
                    epoch,
                    previous: previous.map(|(_, replica)| replica),
                }))
            }
            Pool::Sqlite(pool) => {
                let now = Ts::now();
                let previous: Option<String> = sqlx::query_scalar(
                    "SELECT replica FROM bridge_leader_lease WHERE name = 'leader'",
                )
                .fetch_optional(pool)
                .await?;
                let epoch: i64 = sqlx::query_scalar(
                    "INSERT INTO bridge_leader_lease \
                       (name, epoch, holder, replica, acquired_at, renewed_at, expires_at) \
                     VALUES ('leader', 1, $1, $2, $3, $3, $4) \
                     ON CONFLICT (name) DO UPDATE SET epoch = bridge_leader_lease.epoch + 1, \
                       holder = excluded.holder, replica = excluded.replica, \
                       acquired_at = excluded.acquired_at, renewed_at = excluded.renewed_at, \
                       expires_at = excluded.expires_at \
                     RETURNING epoch",
                )
                .bind(&token)
                .bind(replica)
                .bind(now)
                .bind(Ts::from_millis(now.millis() + ttl.as_millis() as i64))
                .fetch_one(pool)
                .await?;
                Ok(Some(Acquired { epoch, previous }))
            }
        }
    }

    /// Extends the lease this process holds at `epoch` by `ttl` from now (the database's
    /// clock). `false`: it is no longer ours.
    pub async fn renew(&self, epoch: i64, ttl: Duration) -> Result<bool, StoreError> {
        let token = self.store.fence.token();
        let renewed: Option<i64> = match &self.store.pool {
            Pool::Pg(pool) => {
                sqlx::query_scalar(
                    "UPDATE bridge_leader_lease \
                     SET renewed_at = now(), expires_at = now() + make_interval(secs => $3) \
                     WHERE name = 'leader' AND epoch = $1 AND holder = $2 RETURNING epoch",
                )
                .bind(epoch)
                .bind(token)
                .bind(secs(ttl))
                .fetch_optional(pool)
                .await?
            }
            Pool::Sqlite(pool) => {
                let now = Ts::now();
                sqlx::query_scalar(
                    "UPDATE bridge_leader_lease SET renewed_at = $3, expires_at = $4 \
                     WHERE name = 'leader' AND epoch = $1 AND holder = $2 RETURNING epoch",
                )
                .bind(epoch)
                .bind(token)
                .bind(now)
                .bind(Ts::from_millis(now.millis() + ttl.as_millis() as i64))
                .fetch_optional(pool)
                .await?
            }
        };
        Ok(renewed.is_some())
    }

    /// Gives the lease up (a clean shutdown, after the leader's work drained): a standby takes
    /// over at its next try instead of waiting for the TTL. The holder is cleared, so the next
    /// leader terminates none of this process's connections (it leads nothing any more; its
    /// store stays usable, as a standby's).
    pub async fn release(&self, epoch: i64) -> Result<(), StoreError> {
        let token = self.store.fence.token();
        match &self.store.pool {
            Pool::Pg(pool) => {
                sqlx::query(
                    "UPDATE bridge_leader_lease SET expires_at = now() - interval '1 second', holder = '' \
                     WHERE name = 'leader' AND epoch = $1 AND holder = $2",
                )
                .bind(epoch)
                .bind(token)
                .execute(pool)
                .await?;
            }
            Pool::Sqlite(pool) => {
                sqlx::query(
                    "UPDATE bridge_leader_lease SET expires_at = $3, holder = '' \
                     WHERE name = 'leader' AND epoch = $1 AND holder = $2",
                )
                .bind(epoch)
                .bind(token)
                .bind(Ts::from_millis(Ts::now().millis() - 1000))
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    /// Confirms, just before a side effect the database cannot fence (a send to the
    /// homeserver), that this leader still holds its lease: `Fenced` otherwise (and the
    /// replica knows it lost). One indexed read; nothing to check without leadership or on
    /// SQLite (single-process).
    pub async fn confirm(&self) -> Result<(), StoreError> {
        let fence = &self.store.fence;
        let Some(epoch) = fence.write_epoch()? else {
            return Ok(());
        };
        if let Pool::Pg(pool) = &self.store.pool {
            let held: Result<bool, StoreError> =
                sqlx::query_scalar("SELECT bridge_leader_check($1, $2)")
                    .bind(epoch)
                    .bind(fence.token())
                    .fetch_one(pool)
                    .await
                    .map_err(StoreError::from);
            if let Err(StoreError::Fenced) = held {
                fence.lose(epoch);
            }
            held?;
        }
        Ok(())
    }

    /// The lease now, if it was ever taken.
    pub async fn current(&self) -> Result<Option<Lease>, StoreError> {
        Ok(
            crate::db::both!(self.store, pool => sqlx::query_as::<_, Lease>(
            "SELECT epoch, replica, holder, acquired_at, renewed_at, expires_at \
             FROM bridge_leader_lease WHERE name = 'leader'",
        )
        .fetch_optional(pool)
        .await?),
        )
    }

    /// Terminates the PostgreSQL backends of the process whose token is `holder`.
    async fn terminate(&self, holder: &str) -> Result<(), StoreError> {
        if let Pool::Pg(pool) = &self.store.pool {
            let ended: i64 = sqlx::query_scalar(
                // In FILTER, not WHERE: the planner may evaluate WHERE's conditions in any
                // order, and pg_terminate_backend must only ever see the holder's backends. The
                // timeout (PostgreSQL 14+) waits until each has exited: a commit it was making
                // is then over before this replica starts leading.
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity \
                 WHERE application_name = $1 AND pid <> pg_backend_pid()",
            )
            .bind(application_name(holder))
            .fetch_one(pool)
            .await?;
            if ended > 0 {
                tracing::warn!(
                    connections = ended,
                    "terminated the previous leader's database connections (fencing)"
                );
            }
        }
        Ok(())
    }
}

/// How often a start-up that waits for an older release's leader looks again.
const UPGRADE_WAIT_EVERY: Duration = Duration::from_secs(1);

/// Waits while a live replica leads a database whose schema is older than this release's
/// newest migration (`latest`): applying migrations under a running leader of an older release
/// would change its tables under its feet (docs/deployment.md, upgrades). Returns at once when
/// nothing is pending (a replica of the same release starting beside a leader), when there is
/// no lease table (a new database, or one from before replicas) and when the lease was released
/// or ran out (every replica of the older release stopped, or killed: at most its TTL).
pub(crate) async fn until_no_older_leader(
    pool: &sqlx::PgPool,
    latest: i64,
) -> Result<(), sqlx::Error> {
    let mut waited = 0u32;
    loop {
        // Two statements: a table that does not exist cannot be named in the one that reads it.
        let tables: bool = sqlx::query_scalar(
            "SELECT to_regclass('_sqlx_migrations') IS NOT NULL \
             AND to_regclass('bridge_leader_lease') IS NOT NULL",
        )
        .fetch_one(pool)
        .await?;
        if !tables {
            return Ok(());
        }
        let leader: Option<(String, i64, i64)> = sqlx::query_as(
            "SELECT l.replica, l.epoch, \
             (SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success) \
             FROM bridge_leader_lease l \
             WHERE l.name = 'leader' AND l.holder <> '' AND l.expires_at > now() \
             AND (SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success) < $1",
        )
        .bind(latest)
        .fetch_optional(pool)
        .await?;
        let Some((replica, epoch, schema)) = leader else {
            if waited > 0 {
                tracing::info!(
                    "the older release's leader is gone: applying this release's migrations"
                );
            }
            return Ok(());
        };
        // Once, then every half minute: an operator may be stopping replicas one by one.
        if waited.is_multiple_of(30) {
            tracing::warn!(
                %replica,
                epoch,
                schema,
                latest,
                "a replica of an older release leads this database: this one applies its migrations only once every replica of the older release has stopped (docs/deployment.md, upgrades)"
            );
        }
        waited += 1;
        tokio::time::sleep(UPGRADE_WAIT_EVERY).await;
    }
}
