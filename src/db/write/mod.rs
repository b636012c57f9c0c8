//! The transaction write path: one pipeline of stages ([`PIPELINE`]), each written once for
//! both dialects in `stages/` (the rows it takes from the batch, its PostgreSQL CTEs and its
//! SQLite statements side by side). This module drives them: PostgreSQL builds one statement of
//! data-modifying CTEs (`pg.rs`: one round trip, autocommitted), SQLite runs cached prepared
//! statements inside one `BEGIN IMMEDIATE` (`sqlite.rs`).

mod pg;
mod sqlite;
mod stages;

use futures_core::future::BoxFuture;
use sqlx::{PgPool, SqlitePool};

use self::{pg::Statement, sqlite::Write, stages::*};
use crate::db::{Batch, StoreError};

/// One stage of the write path: what both dialects write for some row kinds of a batch.
struct Stage {
    /// Adds the stage's CTEs to the PostgreSQL statement (none when the batch has no such rows).
    pg: fn(&mut Statement, &Batch) -> Result<(), StoreError>,
    /// Runs the stage's statements inside the SQLite transaction.
    sqlite: for<'a> fn(&'a mut Write, &'a Batch) -> BoxFuture<'a, Result<(), sqlx::Error>>,
}

/// The stage a module of `stages/` defines with its `pg` and `sqlite` functions.
macro_rules! stage {
    ($module:ident) => {
        Stage {
            pg: $module::pg,
            sqlite: |w, b| Box::pin($module::sqlite(w, b)),
        }
    };
}

/// The stages in the order they write, after the transaction record (`stages::txn`), which
/// gates them all. Rows are written before what refers to them (users and channels before
/// members and messages, messages before their parts); events come last because they are kept
/// by what the other stages wrote (PostgreSQL reads their CTEs' `RETURNING` rows, SQLite their
/// results).
const PIPELINE: [Stage; 10] = [
    stage!(users),
    stage!(channels),
    stage!(rooms),
    stage!(members),
    stage!(messages),
    stage!(parts),
    stage!(sessions),
    stage!(work),
    stage!(audit),
    stage!(events),
];

/// PostgreSQL: applies the batch as one statement. `false` when its transaction was applied
/// before (then nothing changed).
///
/// `fence` (a leader's epoch and token) makes the statement call `bridge_leader_check`: a
/// replica that lost the lease commits none of it (`db::lease`). The check is one indexed read
/// of a one-row table inside the same statement: no round trip added.
pub(super) async fn apply_pg(
    pool: &PgPool,
    b: &Batch,
    events: bool,
    fence: Option<(i64, &str)>,
) -> Result<bool, StoreError> {
    pg_statement(b, events, fence)?.apply(pool).await
}

/// PostgreSQL: the plan of the batch's statement (see [`Statement::explain`]).
pub(super) async fn explain_pg(
    pool: &PgPool,
    b: &Batch,
    events: bool,
) -> Result<String, StoreError> {
    pg_statement(b, events, None)?.explain(pool).await
}

fn pg_statement(
    b: &Batch,
    events: bool,
    fence: Option<(i64, &str)>,
) -> Result<Statement, StoreError> {
    let mut s = Statement::new(b, events);
    txn::pg(&mut s, b)?;
    for stage in &PIPELINE {
        (stage.pg)(&mut s, b)?;
    }
    if let Some((epoch, token)) = fence {
        let (e, t) = (s.bind(epoch)?, s.bind(token.to_owned())?);
        // The final SELECT reads it, so it is evaluated; if it raises, the whole statement
        // (every data-modifying CTE with it) rolls back. Tested by
        // `replicas::a_leader_whose_lease_moved_commits_nothing_and_steps_down`.
        s.cte(
            "fence",
            &format!("SELECT bridge_leader_check({e}, {t}) AS held"),
        );
        // `held` must be read: PostgreSQL drops a CTE column nobody reads, call and all.
        let result = txn::pg_result(b);
        let value = result.trim_start().trim_start_matches("SELECT ");
        s.sql
            .push_str(&format!(" SELECT held AND {value} FROM fence"));
    } else {
        s.sql.push_str(txn::pg_result(b));
    }
    Ok(s)
}

/// SQLite: applies the batch inside one `BEGIN IMMEDIATE` transaction. `false` when its
/// transaction was applied before (then nothing changed).
pub(super) async fn apply_sqlite(
    pool: &SqlitePool,
    b: &Batch,
    events: bool,
) -> Result<bool, StoreError> {
    let mut w = Write::begin(pool, events).await?;
    if !txn::sqlite(&mut w, b).await? {
        w.tx.rollback().await?;
        return Ok(false);
    }
    for stage in &PIPELINE {
        (stage.sqlite)(&mut w, b).await?;
    }
    w.tx.commit().await?;
    Ok(true)
}

/// SQLite: the query plans of the edit and redaction lookups (`EXPLAIN QUERY PLAN`), for tests
/// that prove they use the `matrix_event_id` index.
pub(super) async fn explain_sqlite(pool: &SqlitePool) -> Result<String, StoreError> {
    messages::explain_sqlite(pool).await
}

/// A candidate's payload as JSON text the store accepts (no NUL anywhere in it).
fn payload_json(payload: &crate::db::CandidatePayload) -> String {
    let text = serde_json::to_string(payload).unwrap_or_else(|_| "{}".into());
    // Text fields are plain strings here; only the raw event can carry an escaped NUL.
    if !text.contains("\\u0000") {
        return text;
    }
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    crate::db::text::clean_json(&mut value);
    value.to_string()
}
