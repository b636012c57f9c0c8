//! PostgreSQL's side of the pipeline: the whole batch is **one statement**, autocommitted, so a
//! transaction costs one round trip (no `BEGIN`/`COMMIT`). [`Statement`] is that statement
//! under construction: each stage adds data-modifying CTEs over `unnest` of bound arrays, every
//! one gated on the transaction record's insert, so a replay (the record exists) changes
//! nothing. CTEs cannot see each other's rows, which the stages account for: ids are bound (not
//! looked up), and no row is written twice.
//!
//! Lookups by Matrix event id are written `col = ANY(ARRAY[x.col])`: not hashable, so even a
//! generic plan cached while `messages` was small stays a nested loop over the unique index and
//! never turns into a hash join over a sequential scan as the table grows.

use sqlx::{
    Arguments, Encode, PgPool, Postgres, Type,
    postgres::{PgArguments, PgHasArrayType},
};

use crate::db::{Batch, StoreError};

/// The batch's statement under construction: SQL text plus its bound arguments.
pub(super) struct Statement {
    /// The text so far: `WITH` and the CTEs, then the final `SELECT`.
    pub(super) sql: String,
    args: PgArguments,
    params: usize,
    /// The gate every CTE adds, empty when there is no transaction record.
    pub(super) gate: &'static str,
    /// Whether the batch's changes are published as events (the CTEs then return their rows).
    pub(super) events: bool,
    /// The CTEs written so far.
    ctes: Vec<&'static str>,
    /// Events built in SQL from a stage's `RETURNING` rows (session changes, whose status
    /// change is only known there): `SELECT`s of `(ord, id, t, pk, p)` the events stage adds
    /// to the drafts it keeps.
    pub(super) event_rows: Vec<String>,
}

impl Statement {
    /// An empty statement for `b`.
    pub(super) fn new(b: &Batch, events: bool) -> Self {
        // Sized up front: a 50-event batch binds tens of KiB (previews, and payloads when events
        // are on), and growing the buffer by doubling copies it over and over.
        let rows = b.messages.len() + b.members.len() + b.edits.len() + b.redactions.len();
        let mut args = PgArguments::default();
        args.reserve(64, 2048 + rows * if events { 1536 } else { 512 });
        Self {
            sql: String::with_capacity(4096),
            args,
            params: 0,
            gate: "",
            events,
            ctes: Vec::new(),
            event_rows: Vec::new(),
        }
    }

    /// Runs the statement: whether the batch was applied (its final `SELECT`).
    pub(super) async fn apply(self, pool: &PgPool) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar_with::<_, bool, _>(&self.sql, self.args)
            .fetch_one(pool)
            .await?)
    }

    /// The plan PostgreSQL chooses for the statement (on the writer connections: a generic
    /// plan), as `EXPLAIN` prints it. For tests that prove lookups use their indexes.
    pub(super) async fn explain(self, pool: &PgPool) -> Result<String, StoreError> {
        let lines: Vec<String> =
            sqlx::query_scalar_with(&format!("EXPLAIN {}", self.sql), self.args)
                .fetch_all(pool)
                .await?;
        Ok(lines.join("\n"))
    }

    /// Binds `value` and returns its placeholder.
    pub(super) fn bind<'q, T>(&mut self, value: T) -> Result<String, StoreError>
    where
        T: Encode<'q, Postgres> + Type<Postgres> + 'q,
    {
        self.args
            .add(value)
            .map_err(|e| StoreError::Rejected(sqlx::Error::Encode(e)))?;
        self.params += 1;
        Ok(format!("${}", self.params))
    }

    /// Binds one array per column.
    pub(super) fn arrays<'q, T>(&mut self, value: Vec<T>) -> Result<String, StoreError>
    where
        T: Encode<'q, Postgres> + Type<Postgres> + PgHasArrayType + 'q,
    {
        self.bind(value)
    }

    /// `clause` when events are on (a `RETURNING` the event CTEs read), else nothing.
    pub(super) fn returning(&self, clause: &str) -> String {
        if self.events {
            format!(" {clause}")
        } else {
            String::new()
        }
    }

    /// Whether a CTE of this name was written (a stage with no rows writes none).
    pub(super) fn has(&self, name: &str) -> bool {
        self.ctes.contains(&name)
    }

    /// Appends the CTE `name AS (body)`.
    pub(super) fn cte(&mut self, name: &'static str, body: &str) {
        self.ctes.push(name);
        self.sql
            .push_str(if self.sql.is_empty() { "WITH " } else { ", " });
        self.sql.push_str(name);
        self.sql.push_str(" AS (");
        self.sql.push_str(body);
        self.sql.push(')');
    }
}
