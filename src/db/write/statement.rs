//! PostgreSQL: the one statement a batch becomes, under construction: SQL text with its bound
//! arguments and the CTEs written so far. Shared by the changes (`pg.rs`) and their events
//! (`pg_events.rs`), which write into the same statement.

use sqlx::{
    Arguments, Encode, Postgres, Type,
    postgres::{PgArguments, PgHasArrayType},
};

use crate::db::StoreError;

/// A statement under construction: SQL text plus its bound arguments.
pub(super) struct Statement {
    pub(super) sql: String,
    pub(super) args: PgArguments,
    pub(super) params: usize,
    /// The gate every CTE adds, empty when there is no transaction record.
    pub(super) gate: &'static str,
    /// Whether the batch's changes are published as events (the CTEs then return their rows).
    pub(super) events: bool,
    /// The CTEs written so far.
    pub(super) ctes: Vec<&'static str>,
}

impl Statement {
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

    pub(super) fn has(&self, name: &str) -> bool {
        self.ctes.contains(&name)
    }

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
