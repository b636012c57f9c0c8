//! `bridge_jobs`: follow-ups (joins, invite refusals) written in the commit of the transaction
//! that asked for them, claimed by workers under a lease so a crash never loses one.

use std::time::Duration;

use ruma::{EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};

use crate::model::ids::JobId;
use crate::{
    db::{
        Store, StoreError, both,
        decode::{BadRow, Decoded, RawRow, decode_all, parse_ids},
    },
    model::{JobKind, Ts},
};

/// A claimed job.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// The job.
    pub id: JobId,
    /// What to do.
    pub kind: JobKind,
    /// In which room.
    pub room_id: OwnedRoomId,
    /// As whom.
    pub user_id: OwnedUserId,
    /// Why (refusals).
    pub reason: Option<String>,
    /// The command's event (commands).
    pub event_id: Option<OwnedEventId>,
    /// The command text (commands).
    pub body: Option<String>,
    /// Attempts so far, this one included.
    pub attempts: i32,
}

/// A job row as stored, its ids still text (see [`crate::db::decode`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RawJobRow {
    /// The job.
    pub id: JobId,
    /// What to do.
    pub kind: JobKind,
    /// In which room.
    pub room_id: String,
    /// As whom.
    pub user_id: String,
    reason: Option<String>,
    event_id: Option<String>,
    body: Option<String>,
    attempts: i32,
}

impl RawRow for RawJobRow {
    type Row = JobRow;
    const TABLE: &'static str = "bridge_jobs";

    fn key(&self) -> String {
        self.id.to_string()
    }

    fn decode(self) -> Result<JobRow, BadRow<Self>> {
        let (r, (room_id, user_id, event_id)) = parse_ids(self, |r| {
            Ok((
                RoomId::parse(&r.room_id)?,
                UserId::parse(&r.user_id)?,
                r.event_id.as_deref().map(EventId::parse).transpose()?,
            ))
        })?;
        Ok(JobRow {
            id: r.id,
            kind: r.kind,
            room_id,
            user_id,
            reason: r.reason,
            event_id,
            body: r.body,
            attempts: r.attempts,
        })
    }
}

/// The store's view of follow-up jobs (`bridge_jobs`). A component given this handle, not the whole
/// store, can touch nothing else.
#[derive(Clone, Debug)]
pub struct JobStore {
    store: Store,
}

impl Store {
    /// The queries of follow-up jobs (`bridge_jobs`).
    pub fn jobs(&self) -> JobStore {
        JobStore {
            store: self.clone(),
        }
    }
}

impl JobStore {
    /// Claims up to `limit` due jobs for `lease`: concurrent workers never take the same job
    /// (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite's single writer serialises the claim),
    /// and a worker that dies lets its lease run out. Each is decoded on its own: a job with an
    /// invalid id comes back in [`Decoded::bad`], claimed like the others, for the worker to
    /// fail.
    pub async fn claim(
        &self,
        limit: i64,
        lease: Duration,
    ) -> Result<Decoded<RawJobRow>, StoreError> {
        let now = Ts::now();
        let until = now.plus(lease);
        let raws: Vec<RawJobRow> = match &self.store.pool {
            super::Pool::Pg(pool) => {
                sqlx::query_as(
                    "UPDATE bridge_jobs SET claimed_until = $2, attempts = attempts + 1 WHERE id IN \
                     (SELECT id FROM bridge_jobs WHERE status = 'pending' AND not_before <= $1 \
                     AND (claimed_until IS NULL OR claimed_until < $1) ORDER BY created_at LIMIT $3 \
                     FOR UPDATE SKIP LOCKED) RETURNING id, kind, room_id, user_id, reason, event_id, body, attempts",
                )
                .bind(now)
                .bind(until)
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
            super::Pool::Sqlite(pool) => {
                let _writer = self.store.write_lock.lock().await;
                sqlx::query_as(
                    "UPDATE bridge_jobs SET claimed_until = $2, attempts = attempts + 1 WHERE id IN \
                     (SELECT id FROM bridge_jobs WHERE status = 'pending' AND not_before <= $1 \
                     AND (claimed_until IS NULL OR claimed_until < $1) ORDER BY created_at LIMIT $3) \
                     RETURNING id, kind, room_id, user_id, reason, event_id, body, attempts",
                )
                .bind(now)
                .bind(until)
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
        };
        Ok(decode_all(raws))
    }

    /// When the next pending job is due (none: nothing pending).
    pub async fn next_due(&self) -> Result<Option<Ts>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_scalar(
            "SELECT MIN(CASE WHEN claimed_until IS NOT NULL AND claimed_until > not_before \
             THEN claimed_until ELSE not_before END) FROM bridge_jobs WHERE status = 'pending'",
        )
        .fetch_one(pool)
        .await?))
    }

    /// The job is done.
    pub async fn done(&self, id: JobId) -> Result<(), StoreError> {
        both!(self.store, pool => sqlx::query(
            "UPDATE bridge_jobs SET status = 'done', finished_at = $2, claimed_until = NULL, last_error = NULL WHERE id = $1",
        )
        .bind(id)
        .bind(Ts::now())
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// The job failed; it is retried after `retry_at`, or given up when `retry_at` is `None`.
    pub async fn failed(
        &self,
        id: JobId,
        error: &str,
        retry_at: Option<Ts>,
    ) -> Result<(), StoreError> {
        both!(self.store, pool => sqlx::query(
            "UPDATE bridge_jobs SET last_error = $2, claimed_until = NULL, \
             status = CASE WHEN $3 IS NULL THEN 'failed' ELSE 'pending' END, \
             not_before = COALESCE($3, not_before), finished_at = CASE WHEN $3 IS NULL THEN $4 END WHERE id = $1",
        )
        .bind(id)
        .bind(error)
        .bind(retry_at)
        .bind(Ts::now())
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// Jobs waiting.
    pub async fn pending(&self) -> Result<i64, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM bridge_jobs WHERE status = 'pending'"
        )
        .fetch_one(pool)
        .await?))
    }

    /// Deletes done jobs queued before `done`, and failed ones that failed before `failed`
    /// (kept longer, for operators to see and retry: `bridge.failed_retention`).
    pub async fn prune(&self, done: Ts, failed: Ts) -> Result<u64, StoreError> {
        Ok(both!(self.store, pool => sqlx::query(
            "DELETE FROM bridge_jobs WHERE (status = 'done' AND created_at < $1) \
             OR (status = 'failed' AND COALESCE(finished_at, created_at) < $2)"
        )
        .bind(done)
        .bind(failed)
        .execute(pool)
        .await?
        .rows_affected()))
    }
}
