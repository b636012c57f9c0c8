//! `audit_log`: the append-only record of security-relevant actions (keys created, revoked or
//! used after expiry, denied API calls, invites accepted and refused, operator actions). Rows
//! are only ever inserted; the one delete is the documented retention prune.

use futures_core::future::BoxFuture;
use serde::Serialize;
use sqlx::{PgConnection, SqliteConnection, types::Json};

use crate::{
    db::{Store, StoreError, both, text::DbText},
    model::{ActorType, AuditOutcome, Ts},
};

/// Who performs an operator action (key management, settings, the admin API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The kind of actor.
    pub kind: ActorType,
    /// Which one.
    pub id: Option<String>,
}

impl Actor {
    /// The command line (`daarion-bridge access-key …`, `respond …`).
    pub fn cli() -> Self {
        Self {
            kind: ActorType::Admin,
            id: Some("cli".into()),
        }
    }

    /// A record of this actor doing `action` on `target`.
    pub fn did(
        &self,
        action: &'static str,
        target: Option<&str>,
        outcome: AuditOutcome,
    ) -> NewAudit {
        NewAudit::new(self.kind, self.id.as_deref(), action, target, outcome)
    }
}

/// One audit record to write.
#[derive(Debug, Clone)]
pub struct NewAudit {
    /// Who acted.
    pub actor_type: ActorType,
    /// Which one: a Matrix user id, an agent's external id, a key prefix, `cli`.
    pub actor_id: Option<DbText>,
    /// What: `access_key.created`, `api.denied`, `invite.refused`, ….
    pub action: &'static str,
    /// On what: a room, channel, key or agent.
    pub target: Option<DbText>,
    /// Allowed or denied.
    pub outcome: AuditOutcome,
    /// Why, and the action's parameters.
    pub details: serde_json::Value,
}

impl NewAudit {
    /// A record with empty details.
    pub fn new(
        actor_type: ActorType,
        actor_id: Option<&str>,
        action: &'static str,
        target: Option<&str>,
        outcome: AuditOutcome,
    ) -> Self {
        Self {
            actor_type,
            actor_id: actor_id.map(DbText::new),
            action,
            target: target.map(DbText::new),
            outcome,
            details: serde_json::Value::Object(Default::default()),
        }
    }

    /// With `details`.
    pub fn details(mut self, mut details: serde_json::Value) -> Self {
        super::text::clean_json(&mut details);
        self.details = details;
        self
    }
}

/// A connection (usually inside a transaction) audit records can be written on.
pub trait AppendAudit {
    /// Inserts `entries`.
    fn append_audit<'a>(
        &'a mut self,
        entries: &'a [NewAudit],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
}

/// Seed 001's `audit_log.user_id`: the acting person's `users` row, for an insert whose actor
/// columns are `x.ty` and `x.ac`.
pub(crate) const USER_ID: &str =
    "CASE WHEN x.ty = 'user' THEN (SELECT u.id FROM users u WHERE u.matrix_id = x.ac) END";

macro_rules! append_audit_impl {
    ($conn:ty, $id:expr) => {
        impl AppendAudit for $conn {
            fn append_audit<'a>(
                &'a mut self,
                entries: &'a [NewAudit],
            ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    let now = Ts::now();
                    for e in entries {
                        sqlx::query(
                            &format!("INSERT INTO audit_log (id, actor_type, actor_id, action, target, outcome, details, created_at, user_id) \
                             SELECT x.id, x.ty, x.ac, $4, $5, $6, $7, $8, {USER_ID} FROM (SELECT $1 AS id, $2 AS ty, $3 AS ac) AS x"),
                        )
                        .bind($id(uuid::Uuid::now_v7()))
                        .bind(e.actor_type)
                        .bind(&e.actor_id)
                        .bind(e.action)
                        .bind(&e.target)
                        .bind(e.outcome)
                        .bind(Json(&e.details))
                        .bind(now)
                        .execute(&mut *self)
                        .await?;
                    }
                    Ok(())
                })
            }
        }
    };
}

append_audit_impl!(PgConnection, |id: uuid::Uuid| id);
append_audit_impl!(SqliteConnection, |id: uuid::Uuid| id
    .hyphenated()
    .to_string());

/// An audit record as read back.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditRow {
    /// Its id (time-ordered: the pagination keyset).
    pub id: String,
    /// Who acted.
    pub actor_type: ActorType,
    /// Which one.
    pub actor_id: Option<String>,
    /// What.
    pub action: String,
    /// On what.
    pub target: Option<String>,
    /// Allowed or denied.
    pub outcome: AuditOutcome,
    /// Why, and the parameters.
    pub details: Json<serde_json::Value>,
    /// When.
    pub created_at: Ts,
}

/// Which audit records to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this action.
    pub action: Option<String>,
    /// Only this actor id.
    pub actor: Option<String>,
    /// Only this outcome.
    pub outcome: Option<AuditOutcome>,
    /// Created at or after.
    pub since: Option<Ts>,
    /// Created before.
    pub until: Option<Ts>,
    /// Older than this record (the `next` of the previous page): newest first.
    pub before: Option<String>,
    /// Page size.
    pub limit: i64,
}

/// The store's view of the audit log (`audit_log`). A component given this handle, not the whole
/// store, can touch nothing else.
#[derive(Clone, Debug)]
pub struct AuditStore {
    store: Store,
}

impl Store {
    /// The queries of the audit log (`audit_log`).
    pub fn audit(&self) -> AuditStore {
        AuditStore {
            store: self.clone(),
        }
    }
}

impl AuditStore {
    /// Writes audit records on their own.
    pub async fn record(&self, entries: &[NewAudit]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        both!(self.store, pool => {
            let mut conn = pool.acquire().await?;
            conn.append_audit(entries).await?;
        });
        Ok(())
    }

    /// Audit records, newest first, one page: keyset pagination by id (UUIDv7, so id order is
    /// time order), which stays fast on any page.
    pub async fn list(&self, f: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
        let id = if self.store.is_postgres() {
            "CAST(id AS TEXT)"
        } else {
            "id"
        };
        let before = if self.store.is_postgres() {
            "CAST($6 AS uuid)"
        } else {
            "$6"
        };
        let sql = format!(
            "SELECT {id} AS id, actor_type, actor_id, action, target, outcome, details, created_at FROM audit_log \
             WHERE ($1 = '' OR action = $1) AND ($2 = '' OR actor_id = $2) AND ($3 = '' OR outcome = $3) \
             AND ($4 IS NULL OR created_at >= $4) AND ($5 IS NULL OR created_at < $5) \
             AND ($6 IS NULL OR id < {before}) ORDER BY id DESC LIMIT $7"
        );
        Ok(both!(self.store, pool => sqlx::query_as(&sql)
            .bind(f.action.as_deref().unwrap_or(""))
            .bind(f.actor.as_deref().unwrap_or(""))
            .bind(f.outcome.map(AuditOutcome::as_str).unwrap_or(""))
            .bind(f.since)
            .bind(f.until)
            .bind(f.before.as_deref())
            .bind(f.limit.clamp(1, 1000))
            .fetch_all(pool)
            .await?))
    }

    /// Deletes audit records created before `cutoff` (the `audit.retention` prune), in bounded
    /// batches. Returns how many.
    pub async fn prune(&self, cutoff: Ts) -> Result<u64, StoreError> {
        let key = if self.store.is_postgres() {
            "id"
        } else {
            "rowid"
        };
        let sql = format!(
            "DELETE FROM audit_log WHERE {key} IN (SELECT {key} FROM audit_log WHERE created_at < $1 LIMIT 5000)"
        );
        // The table is append-only (triggers refuse updates and deletes); the pruner is let
        // through for rows older than its cutoff, which it sets only inside its own transaction
        // and removes before committing, so no other writer ever sees it.
        let open = "INSERT INTO bridge_settings (key, value) VALUES ('audit_prune_before', $1) \
                    ON CONFLICT (key) DO UPDATE SET value = excluded.value";
        let close = "DELETE FROM bridge_settings WHERE key = 'audit_prune_before'";
        let mut total = 0;
        loop {
            let n = both!(self.store, pool => {
                let mut tx = pool.begin().await?;
                sqlx::query(open).bind(cutoff.sqlite_text()).execute(&mut *tx).await?;
                let n = sqlx::query(&sql).bind(cutoff).execute(&mut *tx).await?.rows_affected();
                sqlx::query(close).execute(&mut *tx).await?;
                tx.commit().await?;
                n
            });
            total += n;
            if n < 5000 {
                return Ok(total);
            }
        }
    }
}
