//! `bridge_transactions`: the record of a homeserver transaction, written with its effects so
//! that replay detection is exact (both commit or neither does). It gates every other stage:
//! on PostgreSQL each CTE requires the record's insert, on SQLite a replay rolls back before
//! anything else is written.

use crate::{
    db::{
        Batch, StoreError,
        write::{pg::Statement, sqlite::Write},
    },
    model::Ts,
};

/// Adds the record's CTE, and the gate the other CTEs add, when the batch has a record.
pub(in crate::db::write) fn pg(s: &mut Statement, b: &Batch) -> Result<(), StoreError> {
    let Some(txn) = &b.txn else {
        return Ok(());
    };
    // A concurrent duplicate blocks on the primary key until the first commits, then sees the
    // conflict.
    let (h, f, n) = (
        s.bind(txn.txn_hash.as_str())?,
        s.bind(txn.fingerprint.as_str())?,
        s.bind(txn.event_count)?,
    );
    s.cte(
        "txn",
        &format!(
            "INSERT INTO bridge_transactions (txn_hash, fingerprint, event_count) \
             VALUES ({h}, {f}, {n}) ON CONFLICT DO NOTHING RETURNING 1"
        ),
    );
    s.gate = " AND EXISTS (SELECT 1 FROM txn)";
    Ok(())
}

/// The statement's final `SELECT`: whether the batch was applied (not a replay).
pub(in crate::db::write) fn pg_result(b: &Batch) -> &'static str {
    if b.txn.is_some() {
        " SELECT EXISTS (SELECT 1 FROM txn)"
    } else {
        " SELECT true"
    }
}

/// Inserts the record; `false` when it exists (a replay: the caller rolls back).
pub(in crate::db::write) async fn sqlite(w: &mut Write, b: &Batch) -> Result<bool, sqlx::Error> {
    let Some(txn) = &b.txn else {
        return Ok(true);
    };
    let fresh: Option<i64> = sqlx::query_scalar(
        "INSERT INTO bridge_transactions (txn_hash, fingerprint, processed_at, event_count) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1",
    )
    .bind(&txn.txn_hash)
    .bind(&txn.fingerprint)
    .bind(Ts::now())
    .bind(txn.event_count)
    .fetch_optional(w.conn())
    .await?;
    Ok(fresh.is_some())
}
