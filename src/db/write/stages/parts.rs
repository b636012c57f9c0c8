//! `message_parts`: the parts of the batch's new messages (media and their captions), written
//! for the messages the insert actually wrote (a duplicate message writes none), all in one
//! statement; and deleted with a redaction, so a redacted message keeps no content. A batch with
//! neither parts nor redactions adds nothing: plain text traffic costs what it did.

use crate::{
    db::{
        Batch, NewMessage, NewPart, StoreError,
        write::{pg::Statement, sqlite::Write},
    },
    model::ids::PartId,
};

use super::messages::{INSERTED, REDACTED_CTE};

/// The columns both dialects insert (`created_at` takes its default).
const INSERT: &str = "INSERT INTO message_parts (id, message_id, position, kind, mimetype, size_bytes, name, \
     width, height, duration_ms, voice, source, text)";

/// Every part to write with its message and position. A message redacted in its own batch has
/// none (the planner drops them; this holds whatever built the batch).
fn rows(b: &Batch) -> impl Iterator<Item = (&NewMessage, i32, &NewPart)> {
    b.messages
        .iter()
        .filter(|m| m.redacted_at.is_none())
        .flat_map(|m| {
            m.parts
                .iter()
                .enumerate()
                .map(move |(i, p)| (m, i32::try_from(i).unwrap_or(i32::MAX), p))
        })
}

/// PostgreSQL: adds the stage's CTEs.
pub(in crate::db::write) fn pg(s: &mut Statement, b: &Batch) -> Result<(), StoreError> {
    let rows: Vec<_> = rows(b).collect();
    if !rows.is_empty() {
        let ids = s.arrays(rows.iter().map(|_| PartId::new()).collect())?;
        let messages = s.arrays(rows.iter().map(|r| r.0.id).collect())?;
        let positions = s.arrays(rows.iter().map(|r| r.1).collect())?;
        let kinds = s.arrays(rows.iter().map(|r| r.2.kind).collect())?;
        let mimetypes = s.arrays(rows.iter().map(|r| r.2.mimetype.as_deref()).collect())?;
        let sizes = s.arrays(rows.iter().map(|r| r.2.size).collect())?;
        let names = s.arrays(rows.iter().map(|r| r.2.name.as_deref()).collect())?;
        let widths = s.arrays(rows.iter().map(|r| r.2.width).collect())?;
        let heights = s.arrays(rows.iter().map(|r| r.2.height).collect())?;
        let durations = s.arrays(rows.iter().map(|r| r.2.duration_ms).collect())?;
        let voices = s.arrays(rows.iter().map(|r| r.2.voice).collect())?;
        let sources = s.arrays(
            rows.iter()
                .map(|r| r.2.source.as_ref().map(|s| s.as_str()))
                .collect(),
        )?;
        let texts = s.arrays(rows.iter().map(|r| r.2.text.as_deref()).collect())?;
        // Only for the messages the insert returned (CTEs cannot see each other's rows, so the
        // foreign key is met by joining them, not by looking `messages` up): the insert is
        // gated on the transaction record, so a replay writes no part either.
        s.cte(
            "mp",
            &format!(
                "{INSERT} SELECT x.* FROM unnest({ids}::uuid[], {messages}::uuid[], {positions}::int[], \
                 {kinds}::text[], {mimetypes}::text[], {sizes}::bigint[], {names}::text[], {widths}::int[], \
                 {heights}::int[], {durations}::bigint[], {voices}::bool[], {sources}::text[], {texts}::text[]) \
                 AS x(id, m, pos, k, mt, sz, n, w, h, d, v, src, t) \
                 WHERE x.m IN (SELECT id FROM {INSERTED})"
            ),
        );
    }
    if !b.redactions.is_empty() {
        s.cte(
            "rp",
            &format!(
                "DELETE FROM message_parts p WHERE p.message_id IN (SELECT id FROM {REDACTED_CTE})"
            ),
        );
    }
    Ok(())
}

/// SQLite: runs the stage's statements.
pub(in crate::db::write) async fn sqlite(w: &mut Write, b: &Batch) -> Result<(), sqlx::Error> {
    let id = |u: uuid::Uuid| u.hyphenated().to_string();
    let rows: Vec<serde_json::Value> = rows(b)
        .map(|(m, position, p)| {
            serde_json::json!([
                id(PartId::new().0),
                id(m.id.0),
                position,
                p.kind.as_str(),
                p.mimetype.as_deref(),
                p.size,
                p.name.as_deref(),
                p.width,
                p.height,
                p.duration_ms,
                p.voice,
                p.source.as_ref().map(|s| s.as_str()),
                p.text.as_deref(),
            ])
        })
        .collect();
    if !rows.is_empty() {
        // One statement for every part of the batch, as for messages. A message whose insert
        // was a no-op (its event is stored already) has no row with this batch's id: its parts
        // are skipped, not refused by the foreign key.
        sqlx::query(&format!(
            "{INSERT} SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, \
             value ->> 5, value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10, \
             value ->> 11, value ->> 12 FROM json_each($1) \
             WHERE EXISTS (SELECT 1 FROM messages m WHERE m.id = value ->> 1)"
        ))
        .bind(serde_json::Value::Array(rows).to_string())
        .execute(w.conn())
        .await?;
    }
    if !b.redactions.is_empty() {
        let targets: Vec<&str> = b.redactions.iter().map(|r| r.target.as_str()).collect();
        sqlx::query(
            "DELETE FROM message_parts WHERE message_id IN (SELECT m.id FROM messages m \
             WHERE m.matrix_event_id IN (SELECT value FROM json_each($1)))",
        )
        .bind(serde_json::to_string(&targets).unwrap_or_else(|_| "[]".into()))
        .execute(w.conn())
        .await?;
    }
    Ok(())
}
