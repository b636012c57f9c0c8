//! The transaction write path, one implementation per dialect: PostgreSQL pays one round trip
//! per transaction (every row kind in one statement of data-modifying CTEs, autocommitted), and
//! SQLite, in-process, runs cached prepared statements inside one `BEGIN IMMEDIATE`.

mod events;
pub(super) mod pg;
mod pg_events;
pub(super) mod sqlite;
mod statement;

/// A candidate's payload as JSON text the store accepts (no NUL anywhere in it).
pub(super) fn payload_json(payload: &crate::db::CandidatePayload) -> String {
    let text = serde_json::to_string(payload).unwrap_or_else(|_| "{}".into());
    // Text fields are plain strings here; only the raw event can carry an escaped NUL.
    if !text.contains("\\u0000") {
        return text;
    }
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    crate::db::text::clean_json(&mut value);
    value.to_string()
}
