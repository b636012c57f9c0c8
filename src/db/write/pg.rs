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

use crate::{
    db::{Batch, StoreError},
    model::{Ts, topics::Draft},
};

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
    /// The batch's time, for the event payloads drafted in Rust.
    pub(super) now: Ts,
    /// The events drafted by the stages so far, in the order a consumer should see them within
    /// a channel; the events stage keeps those their witnesses confirm.
    pub(super) drafts: Vec<Drafted>,
    /// Events built in SQL from a stage's `RETURNING` rows (session changes, whose status
    /// change is only known there): `SELECT`s of `(ord, id, t, pk, p)` the events stage adds
    /// to the drafts it keeps.
    pub(super) event_rows: Vec<String>,
}

/// Which CTE's rows confirm a draft, and how they match its key: a duplicate message inserts
/// no row, an edit of an unknown message updates none, and then the draft is not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Witness {
    /// The tag the statement filters drafts by (one per witness).
    pub(super) tag: &'static str,
    /// The CTE whose `RETURNING` rows confirm the draft.
    pub(super) cte: &'static str,
    /// How a row matches the draft's key.
    pub(super) key: Key,
}

impl Witness {
    /// The witness tagged `tag`: rows of the CTE `cte`, matched by `key`.
    pub(super) const fn new(tag: &'static str, cte: &'static str, key: Key) -> Self {
        Self { tag, cte, key }
    }
}

/// What a draft's key is, in the witness's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Key {
    /// The row's `id` (messages, channels).
    Id,
    /// The row's `matrix_event_id` (edits, redactions); the row supplies the channel and
    /// message ids the draft does not know.
    EventId,
    /// `channel_id:who` of a membership row, and when set, this column of the row must equal
    /// the draft's `at` (the period the draft describes started or ended in this batch).
    Member(Option<&'static str>),
}

/// A draft and the write it depends on.
#[derive(Debug)]
pub(super) struct Drafted {
    /// The write.
    pub(super) witness: Witness,
    /// How the witness's rows are matched.
    pub(super) key: String,
    /// The membership timestamp a member witness must show.
    pub(super) at: Option<Ts>,
    /// The event.
    pub(super) draft: Draft,
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
            now: Ts::now(),
            drafts: if events {
                Vec::with_capacity(b.messages.len() + b.edits.len() + b.redactions.len())
            } else {
                Vec::new()
            },
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

    /// Drafts an event that `witness` must confirm.
    pub(super) fn draft(&mut self, witness: Witness, key: String, at: Option<Ts>, draft: Draft) {
        self.drafts.push(Drafted {
            witness,
            key,
            at,
            draft,
        });
    }

    /// Appends the CTE `name AS (body)`.
    pub(super) fn cte(&mut self, name: &str, body: &str) {
        self.sql
            .push_str(if self.sql.is_empty() { "WITH " } else { ", " });
        self.sql.push_str(name);
        self.sql.push_str(" AS (");
        self.sql.push_str(body);
        self.sql.push(')');
    }
}
