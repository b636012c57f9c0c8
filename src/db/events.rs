//! `outbox_events` and `outbox_partitions`: appending events inside a writer's own database
//! transaction (both dialects), and what the publisher and the pruner read and mark.
//!
//! Ordering: each partition has a counter row in `outbox_partitions`. A writer takes its
//! sequence numbers by upserting that row, and the row lock it holds until commit serialises the
//! writers of one partition. So sequence order is commit order, and a row with sequence `n` is
//! visible only once every row before it is: the publisher may publish a partition strictly in
//! sequence order without ever skipping a row that commits later.

use futures_core::future::BoxFuture;
use sqlx::{PgConnection, SqliteConnection};

use crate::model::topics::Draft;
use crate::{
    db::{Store, StoreError, both},
    model::Ts,
};

/// A connection (usually inside a transaction) that events can be appended on.
pub trait AppendEvents {
    /// Appends `drafts` in order (sequence numbers per partition follow the slice's order).
    fn append_events<'a>(
        &'a mut self,
        drafts: &'a [Draft],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
}

impl AppendEvents for PgConnection {
    fn append_events<'a>(
        &'a mut self,
        drafts: &'a [Draft],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            if drafts.is_empty() {
                return Ok(());
            }
            // One statement: count per partition, bump the counters in key order (a fixed lock
            // order, so two writers of overlapping partitions cannot deadlock), then number the
            // rows of each partition after the counter's previous value.
            sqlx::query(
                "WITH d AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) \
                 WITH ORDINALITY AS d(id, topic, pk, payload, ord)), \
                 n AS (SELECT pk, count(*) AS c FROM d GROUP BY pk), \
                 p AS (INSERT INTO outbox_partitions AS p (partition_key, last_seq) \
                 SELECT pk, c FROM n ORDER BY pk \
                 ON CONFLICT (partition_key) DO UPDATE SET last_seq = p.last_seq + excluded.last_seq \
                 RETURNING partition_key, last_seq) \
                 INSERT INTO outbox_events (id, topic, payload, partition_key, seq) \
                 SELECT d.id, d.topic, d.payload::jsonb, d.pk, \
                 p.last_seq - n.c + row_number() OVER (PARTITION BY d.pk ORDER BY d.ord) \
                 FROM d JOIN n ON n.pk = d.pk JOIN p ON p.partition_key = d.pk",
            )
            .bind(drafts.iter().map(|d| d.id).collect::<Vec<_>>())
            .bind(drafts.iter().map(|d| d.topic.as_str()).collect::<Vec<_>>())
            .bind(drafts.iter().map(|d| d.partition.as_str()).collect::<Vec<_>>())
            .bind(drafts.iter().map(|d| d.payload.as_str()).collect::<Vec<_>>())
            .execute(self)
            .await?;
            Ok(())
        })
    }
}

impl AppendEvents for SqliteConnection {
    fn append_events<'a>(
        &'a mut self,
        drafts: &'a [Draft],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            if drafts.is_empty() {
                return Ok(());
            }
            let now = Ts::now();
            // Runs of one partition take their numbers with one counter update; the rows then
            // go in with one statement (a statement per row would cost a handoff to the
            // connection's worker thread each).
            let mut rows: Vec<serde_json::Value> = Vec::with_capacity(drafts.len());
            let mut start = 0;
            while start < drafts.len() {
                let pk = &drafts[start].partition;
                let end = drafts[start..]
                    .iter()
                    .position(|d| &d.partition != pk)
                    .map_or(drafts.len(), |n| start + n);
                let count = (end - start) as i64;
                let last: i64 = sqlx::query_scalar(
                    "INSERT INTO outbox_partitions (partition_key, last_seq) VALUES ($1, $2) \
                     ON CONFLICT (partition_key) DO UPDATE SET last_seq = last_seq + excluded.last_seq \
                     RETURNING last_seq",
                )
                .bind(pk)
                .bind(count)
                .fetch_one(&mut *self)
                .await?;
                for (i, d) in drafts[start..end].iter().enumerate() {
                    rows.push(serde_json::json!([
                        d.id.hyphenated().to_string(),
                        d.topic.as_str(),
                        d.payload,
                        pk,
                        last - count + 1 + i as i64,
                    ]));
                }
                start = end;
            }
            sqlx::query(
                "INSERT INTO outbox_events (id, topic, payload, created_at, partition_key, seq) \
                 SELECT value ->> 0, value ->> 1, value ->> 2, $2, value ->> 3, value ->> 4 \
                 FROM json_each($1)",
            )
            .bind(serde_json::Value::Array(rows).to_string())
            .bind(now)
            .execute(&mut *self)
            .await?;
            Ok(())
        })
    }
}

/// An event waiting to be published.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingEvent {
    /// Its id (the `Nats-Msg-Id`).
    pub id: uuid::Uuid,
    /// Its topic.
    pub topic: String,
    /// Its payload, as JSON text.
    pub payload: String,
    /// Its partition.
    pub partition_key: String,
    /// Its place in the partition.
    pub seq: i64,
    /// When it was committed.
    pub created_at: Ts,
}

/// What is waiting, for the metric and `/health/ready`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Events not published yet.
    pub pending: i64,
    /// Age of the oldest of them, in seconds.
    pub oldest_age_seconds: i64,
}

/// The store's view of the event outbox (`outbox_events`, `outbox_partitions`) as the publisher
/// reads it. A component given this handle, not the whole store, can touch nothing else.
#[derive(Clone, Debug)]
pub struct EventStore {
    pub(super) store: Store,
}

impl Store {
    /// The queries of the event outbox (`outbox_events`, `outbox_partitions`) as the publisher
    /// reads it.
    pub fn events(&self) -> EventStore {
        EventStore {
            store: self.clone(),
        }
    }
}

impl EventStore {
    /// Appends `drafts` in a transaction of their own (for writers with nothing else to commit
    /// atomically with them).
    pub async fn append(&self, drafts: &[Draft]) -> Result<(), StoreError> {
        if drafts.is_empty() {
            return Ok(());
        }
        both!(self.store, pool => {
            let mut tx = pool.begin().await?;
            tx.append_events(drafts).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The next events to publish: the first `per_partition` pending rows of each partition, in
    /// sequence order, at most `limit` in all. PostgreSQL walks the partitions and reads each
    /// one's head from the partial pending index, so a long backlog in one partition costs
    /// nothing here and cannot starve the others.
    pub async fn pending(
        &self,
        per_partition: i64,
        limit: i64,
    ) -> Result<Vec<PendingEvent>, StoreError> {
        Ok(match &self.store.pool {
            super::Pool::Pg(pool) => {
                // The partitions with pending rows, found by skipping through the partial pending
                // index (one probe per partition), then each one's head.
                sqlx::query_as(
                    "WITH RECURSIVE pk AS ( \
                     (SELECT partition_key FROM outbox_events WHERE NOT processed AND dead_at IS NULL \
                     ORDER BY partition_key LIMIT 1) \
                     UNION ALL SELECT (SELECT o.partition_key FROM outbox_events o WHERE NOT o.processed \
                     AND o.dead_at IS NULL AND o.partition_key > pk.partition_key ORDER BY o.partition_key LIMIT 1) \
                     FROM pk WHERE pk.partition_key IS NOT NULL) \
                     SELECT e.id, e.topic, e.payload::text AS payload, e.partition_key, e.seq, e.created_at \
                     FROM pk CROSS JOIN LATERAL (SELECT id, topic, payload, partition_key, seq, created_at \
                     FROM outbox_events o WHERE o.partition_key = pk.partition_key AND NOT o.processed \
                     AND o.dead_at IS NULL ORDER BY o.seq LIMIT $1) e WHERE pk.partition_key IS NOT NULL LIMIT $2",
                )
                .bind(per_partition)
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
            super::Pool::Sqlite(pool) => {
                let rows: Vec<(String, String, String, String, i64, Ts)> = sqlx::query_as(
                    "SELECT id, topic, payload, partition_key, seq, created_at FROM (SELECT id, topic, payload, \
                     partition_key, seq, created_at, \
                     row_number() OVER (PARTITION BY partition_key ORDER BY seq) AS rn FROM outbox_events \
                     WHERE NOT processed AND dead_at IS NULL) WHERE rn <= $1 ORDER BY partition_key, seq LIMIT $2",
                )
                .bind(per_partition)
                .bind(limit)
                .fetch_all(pool)
                .await?;
                rows.into_iter()
                    .filter_map(|(id, topic, payload, partition_key, seq, created_at)| {
                        Some(PendingEvent {
                            id: id.parse().ok()?,
                            topic,
                            payload,
                            partition_key,
                            seq,
                            created_at,
                        })
                    })
                    .collect()
            }
        })
    }

    /// Marks events published (JetStream acknowledged them).
    pub async fn mark_published(&self, ids: &[uuid::Uuid]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let now = Ts::now();
        match &self.store.pool {
            super::Pool::Pg(pool) => {
                sqlx::query(
                    "UPDATE outbox_events SET processed = true, processed_at = $2 WHERE id = ANY($1)",
                )
                .bind(ids)
                .bind(now)
                .execute(pool)
                .await?;
            }
            super::Pool::Sqlite(pool) => {
                let _writer = self.store.write_lock.lock().await;
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                for id in ids {
                    sqlx::query(
                        "UPDATE outbox_events SET processed = 1, processed_at = $2 WHERE id = $1",
                    )
                    .bind(id.hyphenated().to_string())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Records a failed publish of `id`. A `permanent` refusal (JetStream will never take the
    /// event as it is) counts towards the dead letter and a transient one resets the count, so
    /// only `dead_after` permanent refusals in a row make the row dead (`dead_at`): it is then
    /// no longer pending and its partition's head moves past it. Returns whether it died.
    pub async fn failed(
        &self,
        id: uuid::Uuid,
        error: &str,
        permanent: bool,
        dead_after: u32,
    ) -> Result<bool, StoreError> {
        let error = super::text::clean(error);
        // SET reads the row's old values, so `permanent_failures + 1` is this attempt's count.
        const SQL: &str = "UPDATE outbox_events SET attempts = attempts + 1, last_error = $2, \
             permanent_failures = CASE WHEN $3 THEN permanent_failures + 1 ELSE 0 END, \
             dead_at = CASE WHEN $3 AND permanent_failures + 1 >= $4 THEN $5 ELSE dead_at END \
             WHERE id = $1 AND NOT processed RETURNING dead_at IS NOT NULL";
        let dead: Option<bool> = match &self.store.pool {
            super::Pool::Pg(pool) => {
                sqlx::query_scalar(SQL)
                    .bind(id)
                    .bind(error.as_ref())
                    .bind(permanent)
                    .bind(dead_after as i32)
                    .bind(Ts::now())
                    .fetch_optional(pool)
                    .await?
            }
            super::Pool::Sqlite(pool) => {
                sqlx::query_scalar(SQL)
                    .bind(id.hyphenated().to_string())
                    .bind(error.as_ref())
                    .bind(permanent)
                    .bind(dead_after as i32)
                    .bind(Ts::now())
                    .fetch_optional(pool)
                    .await?
            }
        };
        Ok(dead.unwrap_or(false))
    }

    /// How many events wait, and since when.
    ///
    /// PostgreSQL answers from the partition heads rather than by counting: each partition is
    /// published strictly in `seq` order and `seq` is gapless (taken from
    /// `outbox_partitions.last_seq` in the row's own transaction), so a partition's pending rows
    /// are exactly `head ..= last_seq`, where head is its lowest pending seq. The heads come from
    /// the same skip-scan of the partial pending index as [`EventStore::pending`]: one probe
    /// per partition with pending rows, whatever the number of rows (a `COUNT(*)` over a million
    /// pending rows took seconds). The oldest pending row is the oldest head (its `created_at`,
    /// to within the few rows whose transactions began in another order than they committed).
    /// One statement, so the heads and the counters come from one snapshot. SQLite counts.
    pub async fn backlog(&self) -> Result<Backlog, StoreError> {
        let (pending, oldest): (i64, Option<Ts>) = match &self.store.pool {
            super::Pool::Pg(pool) => {
                sqlx::query_as(&format!(
                    "WITH {PG_HEADS_CTE} SELECT COALESCE(SUM(p.last_seq - h.seq + 1), 0)::bigint, MIN(h.created_at) \
                     FROM h JOIN outbox_partitions p ON p.partition_key = h.partition_key"
                ))
                .fetch_one(pool)
                .await?
            }
            super::Pool::Sqlite(pool) => {
                sqlx::query_as(
                    "SELECT COUNT(*), MIN(created_at) FROM outbox_events WHERE NOT processed AND dead_at IS NULL",
                )
                    .fetch_one(pool)
                    .await?
            }
        };
        Ok(Backlog {
            pending,
            oldest_age_seconds: oldest
                .map(|t| (Ts::now().millis() - t.millis()).max(0) / 1000)
                .unwrap_or(0),
        })
    }

    /// Deletes published events (`processed`) created before `published`, and, when
    /// `unpublished` is set, every event created before it, published or not (dead letters
    /// too). Deletes in bounded batches so no statement holds locks for long; returns how many.
    ///
    /// Each batch walks the `created_at` index from its oldest end (`ORDER BY created_at`, so
    /// even a generic plan of the prepared statement reads the index instead of the table) and
    /// stops after 5,000 rows or at the cutoff. For published rows the cutoff is also bounded by
    /// the oldest pending head (PostgreSQL): everything older is published (or dead), so the
    /// walk never wades through a long run of old unpublished rows only to skip them all. The
    /// `processed` filter stays, as the guarantee (the bound is only a pruning of the walk).
    pub async fn prune(&self, published: Ts, unpublished: Option<Ts>) -> Result<u64, StoreError> {
        let mut total = 0;
        if let Some(cutoff) = unpublished {
            // First, so the heads it removes no longer bound the published walk below. Rows
            // between the two cutoffs go only when unpublished (`retention` keeps published
            // ones); when `unpublished` is the older cutoff this is one index range.
            total += self
                .prune_batches(
                    "created_at < $1 AND (NOT processed OR created_at < $2)",
                    &[cutoff, published],
                )
                .await?;
        }
        total += match &self.store.pool {
            super::Pool::Pg(pool) => {
                // `<=` the oldest head: a published row of the same transaction as a waiting
                // one (same `created_at`) may go too. Both bounds are ranges of the index, so
                // the walk stops at the nearer one.
                let sql = format!(
                    "WITH {PG_HEADS_CTE} \
                     DELETE FROM outbox_events WHERE id IN (SELECT o.id FROM outbox_events o \
                     WHERE o.created_at < $1 \
                     AND o.created_at <= COALESCE((SELECT MIN(created_at) FROM h), $1) \
                     AND o.processed ORDER BY o.created_at LIMIT 5000)"
                );
                let mut n = 0;
                loop {
                    let done = sqlx::query(&sql)
                        .bind(published)
                        .execute(pool)
                        .await?
                        .rows_affected();
                    n += done;
                    if done < 5000 {
                        break n;
                    }
                }
            }
            super::Pool::Sqlite(_) => {
                self.prune_batches("created_at < $1 AND processed", &[published])
                    .await?
            }
        };
        Ok(total)
    }

    /// Deletes the rows matching `filter` (over `$1`, `$2`, … = `cutoffs`), oldest first,
    /// 5,000 at a time.
    async fn prune_batches(&self, filter: &str, cutoffs: &[Ts]) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = match &self.store.pool {
                super::Pool::Pg(pool) => {
                    let sql = format!(
                        "DELETE FROM outbox_events WHERE id IN (SELECT id FROM outbox_events \
                         WHERE {filter} ORDER BY created_at LIMIT 5000)"
                    );
                    let mut q = sqlx::query(&sql);
                    for c in cutoffs {
                        q = q.bind(*c);
                    }
                    q.execute(pool).await?.rows_affected()
                }
                super::Pool::Sqlite(pool) => {
                    let sql = format!(
                        "DELETE FROM outbox_events WHERE rowid IN (SELECT rowid FROM outbox_events \
                         WHERE {filter} ORDER BY created_at LIMIT 5000)"
                    );
                    let mut q = sqlx::query(&sql);
                    for c in cutoffs {
                        q = q.bind(*c);
                    }
                    q.execute(pool).await?.rows_affected()
                }
            };
            total += n;
            if n < 5000 {
                return Ok(total);
            }
        }
    }
}

/// The pending head of every partition with pending rows, as the recursive CTE `h`
/// (`partition_key`, `seq`, `created_at`), to follow a `WITH`: a skip-scan of `outbox_events_pending_idx`
/// (`(partition_key, seq) WHERE NOT processed AND dead_at IS NULL`: the predicate is repeated
/// word for word so the planner matches the partial index), whose first entry after a key is the next
/// partition's lowest pending seq. One index probe per partition.
const PG_HEADS_CTE: &str = "RECURSIVE h AS ( \
     (SELECT partition_key, seq, created_at FROM outbox_events WHERE NOT processed AND dead_at IS NULL \
     ORDER BY partition_key, seq LIMIT 1) \
     UNION ALL SELECT n.partition_key, n.seq, n.created_at FROM h CROSS JOIN LATERAL \
     (SELECT o.partition_key, o.seq, o.created_at FROM outbox_events o WHERE NOT o.processed \
     AND o.dead_at IS NULL AND o.partition_key > h.partition_key ORDER BY o.partition_key, o.seq LIMIT 1) n)";
