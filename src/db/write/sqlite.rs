//! SQLite's side of the pipeline: the same effects as the PostgreSQL statement, as cached
//! prepared statements inside one `BEGIN IMMEDIATE` transaction (IMMEDIATE takes the write lock
//! up front so two writers never deadlock upgrading a read lock). Each statement is a handoff
//! to the connection's worker thread, so the bulk of a batch (messages, events) goes in one
//! statement each, its rows as a JSON array read with `json_each`; rarer rows keep a statement
//! each.

use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};

use crate::model::{Ts, topics::Draft};

/// The transaction the stages write into, and what they share.
pub(super) struct Write {
    /// The open `BEGIN IMMEDIATE` transaction.
    pub(super) tx: Transaction<'static, Sqlite>,
    /// The batch's time, for the columns PostgreSQL fills with `now()`.
    pub(super) now: Ts,
    /// The events of the batch when they are on: each stage adds the drafts its results
    /// confirm, and the events stage appends them.
    pub(super) events: Option<Vec<Draft>>,
}

impl Write {
    /// Opens the transaction.
    pub(super) async fn begin(pool: &SqlitePool, events: bool) -> Result<Self, sqlx::Error> {
        Ok(Self {
            tx: pool.begin_with("BEGIN IMMEDIATE").await?,
            now: Ts::now(),
            events: events.then(Vec::new),
        })
    }

    /// The connection to run a statement on.
    pub(super) fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}
