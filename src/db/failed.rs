//! Failed work, for operators: follow-up jobs (`bridge_jobs`), puppet sends (`agent_outbox`)
//! and runs (`agent_runs`) that ended `failed`, listed together in one keyset page and
//! re-queued one at a time, each retry audited (`failed.retried`) in its own transaction.
//!
//! What a retry does, per kind:
//! - a **job** goes back to `pending`, due now, with its attempts reset (refused while an
//!   equal job, same kind, room and user, is pending: that one does the work);
//! - a **send** goes back to `pending` with its attempts reset. It keeps its transaction id,
//!   so a send the homeserver did accept after all is not posted twice (the homeserver answers
//!   a repeated transaction id with the same event);
//! - a **run** is never resumed: the triggers it took go back to `pending` and the scheduler
//!   queues a new run for them (a new row, so the failed one keeps its record and is marked
//!   `retried_at`). Refused when the run answered or queued an answer (`reply_event_id`, or a
//!   send under its `run:{id}` idempotency key, whatever its state): a retry must never post a
//!   second answer. A failed send of that answer is retried as a send instead.

use serde::Serialize;

use crate::{
    db::{
        Store, StoreError,
        audit::{Actor, AppendAudit},
    },
    model::{
        AuditOutcome, Ts,
        ids::{JobId, OutboxId, RunId},
    },
};

/// Which kind of work failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedKind {
    /// A follow-up job (`bridge_jobs`).
    Job,
    /// A puppet send (`agent_outbox`).
    Send,
    /// An agent run (`agent_runs`).
    Run,
}

impl FailedKind {
    /// Every kind, in listing order.
    pub const ALL: [FailedKind; 3] = [FailedKind::Job, FailedKind::Send, FailedKind::Run];

    /// `job`, `send` or `run`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailedKind::Job => "job",
            FailedKind::Send => "send",
            FailedKind::Run => "run",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Its failed rows as the listing's columns, after `$1`, at most `$2` (an index walk of the
    /// table's partial failed index; the predicate repeats the index's word for word).
    fn select(self, after: &str) -> String {
        match self {
            FailedKind::Job => format!(
                "SELECT 'job' AS kind, CAST(j.id AS TEXT) AS id, j.kind AS what, j.room_id, \
                 CAST(c.id AS TEXT) AS channel_id, a.external_id AS agent, j.user_id, j.attempts, \
                 j.last_error, j.created_at, j.finished_at AS failed_at FROM bridge_jobs j \
                 LEFT JOIN channels c ON c.matrix_room_id = j.room_id \
                 LEFT JOIN agents a ON a.matrix_id = j.user_id \
                 WHERE j.status = 'failed' AND ($1 IS NULL OR j.id > {after}) ORDER BY j.id LIMIT $2"
            ),
            FailedKind::Send => format!(
                "SELECT 'send' AS kind, CAST(o.id AS TEXT) AS id, o.event_type AS what, o.room_id, \
                 CAST(c.id AS TEXT) AS channel_id, a.external_id AS agent, a.matrix_id AS user_id, \
                 o.attempts, o.error AS last_error, o.created_at, o.failed_at FROM agent_outbox o \
                 JOIN agents a ON a.id = o.agent_id \
                 LEFT JOIN channels c ON c.matrix_room_id = o.room_id \
                 WHERE o.status = 'failed' AND ($1 IS NULL OR o.id > {after}) ORDER BY o.id LIMIT $2"
            ),
            FailedKind::Run => format!(
                "SELECT 'run' AS kind, CAST(r.id AS TEXT) AS id, r.runtime AS what, c.matrix_room_id AS room_id, \
                 CAST(r.channel_id AS TEXT) AS channel_id, a.external_id AS agent, a.matrix_id AS user_id, \
                 r.attempts, r.error AS last_error, r.created_at, r.finished_at AS failed_at FROM agent_runs r \
                 JOIN agents a ON a.id = r.agent_id \
                 LEFT JOIN channels c ON c.id = r.channel_id \
                 WHERE r.status = 'failed' AND r.retried_at IS NULL AND ($1 IS NULL OR r.id > {after}) \
                 ORDER BY r.id LIMIT $2"
            ),
        }
    }
}

/// A failed job, send or run as the admin API lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct FailedRow {
    /// `job`, `send` or `run`.
    pub kind: String,
    /// Its row id (the `{id}` of its retry).
    pub id: String,
    /// What it is: the job's kind (`join`, `reject`, …), the send's event type, the run's
    /// runtime.
    pub what: Option<String>,
    /// The Matrix room.
    pub room_id: Option<String>,
    /// The channel of that room, when the bridge mirrors it.
    pub channel_id: Option<String>,
    /// The agent (external id), when an agent acted.
    pub agent: Option<String>,
    /// Who acted in Matrix: the job's user, the sending or answering agent's puppet.
    pub user_id: Option<String>,
    /// Attempts made.
    pub attempts: i32,
    /// The last error.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: Ts,
    /// When it failed for good.
    pub failed_at: Option<Ts>,
}

/// What a retry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// Re-queued.
    Queued,
    /// No failed row of that kind with that id.
    NotFound,
    /// Refused, and why.
    Refused(&'static str),
}

/// The store's view of failed work across `bridge_jobs`, `agent_outbox` and `agent_runs`.
#[derive(Clone, Debug)]
pub struct FailedStore {
    store: Store,
}

impl Store {
    /// The queries of failed work (jobs, sends, runs) for the admin API.
    pub fn failed(&self) -> FailedStore {
        FailedStore {
            store: self.clone(),
        }
    }
}

impl FailedStore {
    /// Failed work of `kinds`, in id order (UUIDv7: creation order) after `after`, at most
    /// `limit`. Each table is walked by its own partial index, then the pages are merged.
    pub async fn list(
        &self,
        kinds: &[FailedKind],
        after: Option<uuid::Uuid>,
        limit: i64,
    ) -> Result<Vec<FailedRow>, StoreError> {
        let pg = self.store.is_postgres();
        let cast = if pg { "$1::uuid" } else { "$1" };
        let union = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| format!("SELECT * FROM ({}) AS f{i}", k.select(cast)))
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let sql = format!("SELECT * FROM ({union}) AS f ORDER BY id LIMIT $2");
        Ok(match &self.store.pool {
            super::Pool::Pg(pool) => {
                sqlx::query_as(&sql)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            }
            super::Pool::Sqlite(pool) => {
                sqlx::query_as(&sql)
                    .bind(after.map(|a| a.hyphenated().to_string()))
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            }
        })
    }

    /// Re-queues failed `kind` `id` (see the module's comment for what each kind does),
    /// audited as `failed.retried` by `by` in the same transaction.
    pub async fn retry(
        &self,
        kind: FailedKind,
        id: uuid::Uuid,
        by: &Actor,
    ) -> Result<Retry, StoreError> {
        let now = Ts::now();
        let key = id.hyphenated().to_string();
        let audit = [by
            .did("failed.retried", Some(&key), AuditOutcome::Allowed)
            .details(serde_json::json!({ "kind": kind.as_str() }))];
        let pg = self.store.is_postgres();
        // SQLite: the store's one writer at a time, as every other write there.
        let _writer = match pg {
            true => None,
            false => Some(self.store.write_lock.lock().await),
        };
        super::both!(self.store, pool => {
            let mut tx = if pg {
                pool.begin().await?
            } else {
                pool.begin_with("BEGIN IMMEDIATE").await?
            };
            let outcome = match kind {
                FailedKind::Job => {
                    // Reset so the worker's attempt bound starts again; the unique pending index
                    // allows one pending job per (kind, room, user).
                    let n = sqlx::query(
                        "UPDATE bridge_jobs SET status = 'pending', attempts = 0, not_before = $2, \
                         claimed_until = NULL, finished_at = NULL WHERE id = $1 AND status = 'failed' \
                         AND NOT EXISTS (SELECT 1 FROM bridge_jobs p WHERE p.status = 'pending' \
                         AND p.kind = bridge_jobs.kind AND p.room_id = bridge_jobs.room_id \
                         AND p.user_id = bridge_jobs.user_id)",
                    )
                    .bind(JobId(id))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if n == 1 {
                        Retry::Queued
                    } else {
                        let failed: Option<i32> = sqlx::query_scalar(
                            "SELECT 1 FROM bridge_jobs WHERE id = $1 AND status = 'failed'",
                        )
                        .bind(JobId(id))
                        .fetch_optional(&mut *tx)
                        .await?;
                        match failed {
                            Some(_) => Retry::Refused("an equal job (same kind, room and user) is already pending"),
                            None => Retry::NotFound,
                        }
                    }
                }
                FailedKind::Send => {
                    let n = sqlx::query(
                        "UPDATE agent_outbox SET status = 'pending', attempts = 0, not_before = NULL, \
                         failed_at = NULL WHERE id = $1 AND status = 'failed'",
                    )
                    .bind(OutboxId(id))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if n == 1 { Retry::Queued } else { Retry::NotFound }
                }
                FailedKind::Run => {
                    let run: Option<(Option<String>, i64)> = sqlx::query_as(
                        "SELECT r.reply_event_id, (SELECT COUNT(*) FROM agent_outbox o WHERE o.agent_id = r.agent_id \
                         AND (o.idempotency_key = 'run:' || CAST(r.id AS TEXT) \
                         OR o.idempotency_key LIKE 'run:' || CAST(r.id AS TEXT) || ':%')) \
                         FROM agent_runs r WHERE r.id = $1 AND r.status = 'failed' AND r.retried_at IS NULL",
                    )
                    .bind(RunId(id))
                    .fetch_optional(&mut *tx)
                    .await?;
                    match run {
                        None => Retry::NotFound,
                        Some((Some(_), _)) | Some((_, 1..)) => Retry::Refused(
                            "the run answered (or queued its answer): retrying it would answer twice; retry its failed send instead",
                        ),
                        Some(_) => {
                            let n = sqlx::query(
                                "UPDATE bridge_triggers SET status = 'pending', run_id = NULL \
                                 WHERE run_id = $1 AND status = 'taken'",
                            )
                            .bind(RunId(id))
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                            if n == 0 {
                                Retry::Refused(
                                    "its triggers are gone (pruned after bridge.retention, or redacted)",
                                )
                            } else {
                                sqlx::query("UPDATE agent_runs SET retried_at = $2 WHERE id = $1")
                                    .bind(RunId(id))
                                    .bind(now)
                                    .execute(&mut *tx)
                                    .await?;
                                Retry::Queued
                            }
                        }
                    }
                }
            };
            if outcome == Retry::Queued {
                tx.append_audit(&audit).await?;
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            Ok(outcome)
        })
    }
}
