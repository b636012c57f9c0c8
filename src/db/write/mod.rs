//! The transaction write path, one implementation per dialect: PostgreSQL pays one round trip
//! per transaction (every row kind in one statement of data-modifying CTEs, autocommitted), and
//! SQLite, in-process, runs cached prepared statements inside one `BEGIN IMMEDIATE`.

pub(super) mod pg;
pub(super) mod sqlite;

/// A candidate's payload as JSON text the store accepts (no NUL anywhere in it).
pub(super) fn payload_json(payload: &crate::db::CandidatePayload) -> String {
    let mut value = serde_json::to_value(payload).unwrap_or_default();
    crate::db::text::clean_json(&mut value);
    value.to_string()
}
