//! Dead-lettered outbox events (`outbox_events.dead_at`): events JetStream refused for good,
//! which the publisher stepped past so their partition moves on. Listed and retried by the
//! admin API.
//!
//! A retry gives the event a new `seq` at the end of its partition, taken from
//! `outbox_partitions` under the same row lock writers take: the pending rows of a partition
//! stay the gapless range `head ..= last_seq` the backlog arithmetic and the publisher's
//! in-order walk rely on (putting it back at its old `seq`, below rows already published, would
//! make the arithmetic count those published rows as pending). Its old place becomes a hole
//! below the head, which nothing reads.

use serde::Serialize;

use crate::{
    db::{
        StoreError,
        audit::{Actor, AppendAudit},
        events::EventStore,
    },
    model::{AuditOutcome, Ts},
};

/// A dead-lettered event as the admin API lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadEvent {
    /// The event id (its `Nats-Msg-Id`).
    pub id: String,
    /// Its topic.
    pub topic: String,
    /// Its partition (a channel id, `agent:<uuid>`).
    pub partition: String,
    /// Its place in the partition.
    pub seq: i64,
    /// Failed publish attempts.
    pub attempts: i32,
    /// JetStream's last refusal.
    pub last_error: Option<String>,
    /// When its change committed.
    pub created_at: Ts,
    /// When the publisher gave up on it.
    pub dead_at: Ts,
}

/// What a retry of a dead event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retried {
    /// Pending again, at this new `seq` at the end of its partition.
    Pending(i64),
    /// No such event, or it is not dead.
    NotDead,
}

/// Ordered by `e.id`, the column (a bare `id` would be the text alias, sorted after reading).
const LIST: &str = "SELECT CAST(e.id AS TEXT) AS id, e.topic, e.partition_key AS partition, e.seq, \
     e.attempts, e.last_error, e.created_at, e.dead_at FROM outbox_events e WHERE e.dead_at IS NOT NULL";

impl EventStore {
    /// Dead events in id order (UUIDv7: creation order) after `after`, at most `limit`: a
    /// keyset walk of the partial index `outbox_events_dead_idx`.
    pub async fn dead(
        &self,
        after: Option<uuid::Uuid>,
        limit: i64,
    ) -> Result<Vec<DeadEvent>, StoreError> {
        Ok(match &self.store.pool {
            super::Pool::Pg(pool) => {
                sqlx::query_as(&format!(
                    "{LIST} AND ($1::uuid IS NULL OR e.id > $1) ORDER BY e.id LIMIT $2"
                ))
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
            super::Pool::Sqlite(pool) => {
                sqlx::query_as(&format!(
                    "{LIST} AND ($1 IS NULL OR e.id > $1) ORDER BY e.id LIMIT $2"
                ))
                .bind(after.map(|a| a.hyphenated().to_string()))
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
        })
    }

    /// How many events are dead (for the gauge; few rows, from their partial index).
    pub async fn dead_count(&self) -> Result<i64, StoreError> {
        Ok(super::both!(self.store, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM outbox_events WHERE dead_at IS NOT NULL"
        )
        .fetch_one(pool)
        .await?))
    }

    /// Puts dead event `id` back to pending, at a new `seq` at the end of its partition (see
    /// the module's comment): it is published after everything its partition committed before
    /// the retry, out of its original order, with its id and payload unchanged. The refusal
    /// count starts again; `attempts` and `last_error` stay as history. Audited as
    /// `event.retried` by `by` in the same transaction.
    pub async fn retry_dead(&self, id: uuid::Uuid, by: &Actor) -> Result<Retried, StoreError> {
        let key = id.hyphenated().to_string();
        let audit = |pk: &str, was: i64, seq: i64| {
            [by.did("event.retried", Some(&key), AuditOutcome::Allowed)
                .details(serde_json::json!({ "partition": pk, "seq_was": was, "seq": seq }))]
        };
        let seq: Option<i64> = match &self.store.pool {
            super::Pool::Pg(pool) => {
                let mut tx = pool.begin().await?;
                // One statement: the dead row locked, the partition's counter bumped (the
                // lock writers take, so the new seq is in commit order), the row renumbered.
                let row: Option<(String, i64, i64)> = sqlx::query_as(
                    "WITH d AS (SELECT partition_key, seq FROM outbox_events WHERE id = $1 \
                     AND dead_at IS NOT NULL AND NOT processed FOR UPDATE), \
                     p AS (UPDATE outbox_partitions p SET last_seq = p.last_seq + 1 FROM d \
                     WHERE p.partition_key = d.partition_key RETURNING p.last_seq) \
                     UPDATE outbox_events e SET seq = p.last_seq, dead_at = NULL, permanent_failures = 0 \
                     FROM p, d WHERE e.id = $1 RETURNING e.partition_key, d.seq, e.seq",
                )
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((pk, was, seq)) = row else {
                    return Ok(Retried::NotDead);
                };
                tx.append_audit(&audit(&pk, was, seq)).await?;
                tx.commit().await?;
                Some(seq)
            }
            super::Pool::Sqlite(pool) => {
                let _writer = self.store.write_lock.lock().await;
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let row: Option<(String, i64)> = sqlx::query_as(
                    "SELECT partition_key, seq FROM outbox_events WHERE id = $1 AND dead_at IS NOT NULL \
                     AND NOT processed",
                )
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((pk, was)) = row else {
                    return Ok(Retried::NotDead);
                };
                let seq: i64 = sqlx::query_scalar(
                    "UPDATE outbox_partitions SET last_seq = last_seq + 1 WHERE partition_key = $1 \
                     RETURNING last_seq",
                )
                .bind(&pk)
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE outbox_events SET seq = $2, dead_at = NULL, permanent_failures = 0 WHERE id = $1",
                )
                .bind(&key)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
                tx.append_audit(&audit(&pk, was, seq)).await?;
                tx.commit().await?;
                Some(seq)
            }
        };
        if seq.is_some() {
            self.store.wake_publisher();
        }
        Ok(seq.map_or(Retried::NotDead, Retried::Pending))
    }
}
