//! `messages`: new messages, edits and redactions of messages stored earlier; a redaction also
//! cancels the trigger candidates and queued runs of the message it removes. Publishes
//! `message.created` / `.edited` / `.redacted` for the rows actually written.

use sqlx::SqlitePool;

use crate::{
    db::{
        Batch, Edit, NewMessage, PartSource, Party, Redaction, StoreError,
        write::{
            pg::{Key, Statement, Witness},
            sqlite::Write,
        },
    },
    model::{
        SenderType, Ts,
        ids::{ChannelId, MessageId},
        topics::{
            Draft, MessageCreated, MessageEdited, MessageRedacted, PAYLOAD_VERSION, PartInfo,
            Topic, channel_partition,
        },
    },
};

/// The insert of messages, both dialects. The event id's unique index makes a duplicate (the
/// same event in another txnId, or the echo of a puppet send mirrored at delivery) a no-op.
const INSERT: &str = "INSERT INTO messages (id, channel_id, matrix_event_id, sender_user_id, sender_agent_id, \
     sender_type, content_preview, created_at, thread_root_event_id, edited_at, redacted_at)";
const INSERT_CONFLICT: &str = "ON CONFLICT (matrix_event_id) DO NOTHING";

/// PostgreSQL: a `message.created` event is kept when the insert (`mi`) returned the message.
const CREATED: Witness = Witness::new("m", INSERTED, Key::Id);
/// PostgreSQL: the CTE inserting messages; it returns the ids written when events or parts
/// need them (`super::parts` writes parts for those only).
pub(in crate::db::write) const INSERTED: &str = "mi";
/// PostgreSQL: a `message.edited` event is kept when the edit (`ed`) updated its target.
const EDITED: Witness = Witness::new("e", "ed", Key::EventId);
/// PostgreSQL: a `message.redacted` event is kept when the redaction (`rd`) updated its target.
const REDACTED: Witness = Witness::new("r", REDACTED_CTE, Key::EventId);
/// PostgreSQL: the CTE redacting messages; it always returns the rows it redacted
/// (`super::parts` deletes their parts).
pub(in crate::db::write) const REDACTED_CTE: &str = "rd";

fn sender_type(p: Party) -> SenderType {
    match p {
        Party::User(_) => SenderType::Human,
        Party::Agent(_) => SenderType::Agent,
    }
}

/// The event of a new message.
fn created(m: &NewMessage) -> Draft {
    Draft::new(
        Topic::MessageCreated,
        channel_partition(m.channel_id),
        &MessageCreated {
            v: PAYLOAD_VERSION,
            channel_id: m.channel_id,
            message_id: m.id,
            matrix_event_id: m.event_id.as_str(),
            sender_type: sender_type(m.sender),
            sender_user_id: m.sender.user(),
            sender_agent_id: m.sender.agent(),
            content_preview: m.preview.as_str(),
            thread_root_event_id: m.thread_root.as_ref().map(|t| t.as_str()),
            created_at: m.at,
            edited_at: m.edited_at,
            redacted_at: m.redacted_at,
            parts: m
                .parts
                .iter()
                .map(|p| PartInfo {
                    kind: p.kind,
                    mimetype: p.mimetype.as_deref(),
                    size: p.size,
                    name: p.name.as_deref(),
                    width: p.width,
                    height: p.height,
                    duration_ms: p.duration_ms,
                    voice: p.voice,
                    encrypted: p.source == Some(PartSource::Encrypted),
                })
                .collect(),
        },
    )
}

/// An edit's event; `row` (message id, channel id) is known to SQLite, and merged from the
/// `RETURNING` row by PostgreSQL. The partition is then the channel (empty until known).
fn edited(e: &Edit, row: Option<(MessageId, ChannelId)>) -> Draft {
    Draft::new(
        Topic::MessageEdited,
        row.map(|r| channel_partition(r.1)).unwrap_or_default(),
        &MessageEdited {
            v: PAYLOAD_VERSION,
            channel_id: row.map(|r| r.1),
            message_id: row.map(|r| r.0),
            matrix_event_id: e.target.as_str(),
            sender_type: sender_type(e.sender),
            sender_user_id: e.sender.user(),
            sender_agent_id: e.sender.agent(),
            content_preview: e.preview.as_str(),
            edited_at: e.at,
        },
    )
}

/// A redaction's event (see [`edited`] for `row`).
fn redacted(r: &Redaction, row: Option<(MessageId, ChannelId)>) -> Draft {
    Draft::new(
        Topic::MessageRedacted,
        row.map(|r| channel_partition(r.1)).unwrap_or_default(),
        &MessageRedacted {
            v: PAYLOAD_VERSION,
            channel_id: row.map(|r| r.1),
            message_id: row.map(|r| r.0),
            matrix_event_id: r.target.as_str(),
            redacted_at: r.at,
        },
    )
}

/// PostgreSQL: adds the stage's CTEs.
pub(in crate::db::write) fn pg(s: &mut Statement, b: &Batch) -> Result<(), StoreError> {
    let gate = s.gate;
    if !b.messages.is_empty() {
        let m = &b.messages;
        let ids = s.arrays(m.iter().map(|m| m.id).collect())?;
        let chans = s.arrays(m.iter().map(|m| m.channel_id).collect())?;
        let events = s.arrays(m.iter().map(|m| m.event_id.as_str()).collect())?;
        let users = s.arrays(m.iter().map(|m| m.sender.user()).collect())?;
        let agents = s.arrays(m.iter().map(|m| m.sender.agent()).collect())?;
        let previews = s.arrays(m.iter().map(|m| m.preview.as_str()).collect())?;
        let at = s.arrays(m.iter().map(|m| m.at).collect())?;
        let threads = s.arrays(
            m.iter()
                .map(|m| m.thread_root.as_ref().map(|t| t.as_str()))
                .collect(),
        )?;
        let edited = s.arrays(m.iter().map(|m| m.edited_at).collect())?;
        let redacted = s.arrays(m.iter().map(|m| m.redacted_at).collect())?;
        s.cte(
            CREATED.cte,
            &format!(
                "{INSERT} \
                 SELECT x.id, x.ch, x.ev, x.u, x.a, CASE WHEN x.a IS NULL THEN 'human' ELSE 'agent' END, \
                 x.p, x.at, x.th, x.ed, x.rd \
                 FROM unnest({ids}::uuid[], {chans}::uuid[], {events}::text[], {users}::uuid[], {agents}::uuid[], \
                 {previews}::text[], {at}::timestamptz[], {threads}::text[], {edited}::timestamptz[], \
                 {redacted}::timestamptz[]) AS x(id, ch, ev, u, a, p, at, th, ed, rd) \
                 WHERE true{gate} {INSERT_CONFLICT}{ret}",
                // The parts stage writes parts for the returned ids only.
                ret = if s.events || b.messages.iter().any(|m| !m.parts.is_empty()) {
                    " RETURNING id"
                } else {
                    ""
                }
            ),
        );
    }
    if !b.edits.is_empty() {
        let e = &b.edits;
        let targets = s.arrays(e.iter().map(|e| e.target.as_str()).collect())?;
        let previews = s.arrays(e.iter().map(|e| e.preview.as_str()).collect())?;
        let at = s.arrays(e.iter().map(|e| e.at).collect())?;
        let users = s.arrays(e.iter().map(|e| e.sender.user()).collect())?;
        let agents = s.arrays(e.iter().map(|e| e.sender.agent()).collect())?;
        // Only the original sender may edit, a redacted message stays redacted, and an older
        // edit never overwrites a newer one.
        s.cte(
            EDITED.cte,
            &format!(
                "UPDATE messages m SET content_preview = x.p, edited_at = x.at \
                 FROM unnest({targets}::text[], {previews}::text[], {at}::timestamptz[], {users}::uuid[], \
                 {agents}::uuid[]) AS x(t, p, at, u, a) \
                 WHERE m.matrix_event_id = ANY(ARRAY[x.t]) AND m.redacted_at IS NULL \
                 AND (m.edited_at IS NULL OR m.edited_at <= x.at) \
                 AND (m.sender_user_id = x.u OR m.sender_agent_id = x.a){gate}{ret}",
                ret = s.returning("RETURNING m.id, m.channel_id, m.matrix_event_id")
            ),
        );
    }
    if !b.redactions.is_empty() {
        let r = &b.redactions;
        let targets = s.arrays(r.iter().map(|r| r.target.as_str()).collect())?;
        let at = s.arrays(r.iter().map(|r| r.at).collect())?;
        s.cte(
            REDACTED.cte,
            &format!(
                "UPDATE messages m SET content_preview = '', redacted_at = x.at \
                 FROM unnest({targets}::text[], {at}::timestamptz[]) AS x(t, at) \
                 WHERE m.matrix_event_id = ANY(ARRAY[x.t]) AND m.redacted_at IS NULL{gate} \
                 RETURNING m.id, m.channel_id, m.matrix_event_id"
            ),
        );
        // A redacted question is not answered: its candidate and triggers are cancelled, and a
        // run still queued with nothing else to answer is cancelled with them (CTEs share one
        // snapshot, hence the explicit exclusion of the triggers cancelled here).
        s.cte(
            "tc",
            &format!(
                "UPDATE bridge_triggers t SET status = 'cancelled' \
                 WHERE t.event_id = ANY({targets}::text[]) AND t.status IN ('candidate', 'pending', 'taken') \
                 AND (t.run_id IS NULL OR t.run_id IN (SELECT id FROM agent_runs WHERE status = 'queued')){gate} \
                 RETURNING t.run_id"
            ),
        );
        s.cte(
            "rc",
            &format!(
                "UPDATE agent_runs r SET status = 'cancelled', error = 'its trigger was redacted', finished_at = now() \
                 WHERE r.id IN (SELECT run_id FROM tc WHERE run_id IS NOT NULL) AND r.status = 'queued' \
                 AND NOT EXISTS (SELECT 1 FROM bridge_triggers o WHERE o.run_id = r.id \
                 AND o.status <> 'cancelled' AND o.event_id <> ALL({targets}::text[]))"
            ),
        );
    }
    if s.events {
        for m in &b.messages {
            let key = m.id.0.hyphenated();
            let key = key
                .encode_lower(&mut uuid::Uuid::encode_buffer())
                .to_owned();
            s.draft(CREATED, key, None, created(m));
        }
        for e in &b.edits {
            s.draft(EDITED, e.target.as_str().to_owned(), None, edited(e, None));
        }
        for r in &b.redactions {
            s.draft(
                REDACTED,
                r.target.as_str().to_owned(),
                None,
                redacted(r, None),
            );
        }
    }
    Ok(())
}

/// SQLite's edit of one message (see the PostgreSQL CTE for the conditions).
const EDIT: &str = "UPDATE messages SET content_preview = $1, edited_at = $2 \
     WHERE matrix_event_id = $3 AND redacted_at IS NULL AND (edited_at IS NULL OR edited_at <= $2) \
     AND (sender_user_id = $4 OR sender_agent_id = $5)";

/// SQLite's redaction of one message.
const REDACT: &str = "UPDATE messages SET content_preview = '', redacted_at = $1 WHERE matrix_event_id = $2 AND redacted_at IS NULL";

/// What the edit and redaction statements return for their events.
const RETURNING: &str = "RETURNING id, channel_id";

/// SQLite: runs the stage's statements.
pub(in crate::db::write) async fn sqlite(w: &mut Write, b: &Batch) -> Result<(), sqlx::Error> {
    if !b.messages.is_empty() {
        // One statement for every message of the batch: sqlx runs each SQLite statement on the
        // connection's worker thread, so a statement per row costs a thread handoff per row
        // (most of the CPU a transaction took). The rows travel as one JSON array.
        let id = |u: uuid::Uuid| u.hyphenated().to_string();
        let rows: Vec<serde_json::Value> = b
            .messages
            .iter()
            .map(|m| {
                serde_json::json!([
                    id(m.id.0),
                    id(m.channel_id.0),
                    m.event_id.as_str(),
                    m.sender.user().map(|u| id(u.0)),
                    m.sender.agent().map(|a| id(a.0)),
                    m.preview.as_str(),
                    m.at.sqlite_text(),
                    m.thread_root.as_ref().map(|t| t.as_str()),
                    m.edited_at.map(|t| t.sqlite_text()),
                    m.redacted_at.map(|t| t.sqlite_text()),
                ])
            })
            .collect();
        let inserted: Vec<MessageId> = sqlx::query_scalar(&format!(
            "{INSERT} \
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, \
             CASE WHEN value ->> 4 IS NULL THEN 'human' ELSE 'agent' END, value ->> 5, value ->> 6, \
             value ->> 7, value ->> 8, value ->> 9 FROM json_each($1) WHERE true \
             {INSERT_CONFLICT} RETURNING id"
        ))
        .bind(serde_json::Value::Array(rows).to_string())
        .fetch_all(w.conn())
        .await?;
        if let Some(ev) = &mut w.events {
            let inserted: std::collections::HashSet<MessageId> = inserted.into_iter().collect();
            ev.extend(
                b.messages
                    .iter()
                    .filter(|m| inserted.contains(&m.id))
                    .map(created),
            );
        }
    }
    for e in &b.edits {
        let row: Option<(MessageId, ChannelId)> = sqlx::query_as(&format!("{EDIT} {RETURNING}"))
            .bind(&e.preview)
            .bind(e.at)
            .bind(e.target.as_str())
            .bind(e.sender.user())
            .bind(e.sender.agent())
            .fetch_optional(w.conn())
            .await?;
        if let (Some(ev), Some(row)) = (&mut w.events, row) {
            ev.push(edited(e, Some(row)));
        }
    }
    for r in &b.redactions {
        let row: Option<(MessageId, ChannelId)> = sqlx::query_as(&format!("{REDACT} {RETURNING}"))
            .bind(r.at)
            .bind(r.target.as_str())
            .fetch_optional(w.conn())
            .await?;
        if let (Some(ev), Some(row)) = (&mut w.events, row) {
            ev.push(redacted(r, Some(row)));
        }
        // A redacted question is not answered (see the PostgreSQL statement).
        let runs: Vec<Option<String>> = sqlx::query_scalar(
            "UPDATE bridge_triggers SET status = 'cancelled' WHERE event_id = $1 \
             AND status IN ('candidate', 'pending', 'taken') \
             AND (run_id IS NULL OR run_id IN (SELECT id FROM agent_runs WHERE status = 'queued')) RETURNING run_id",
        )
        .bind(r.target.as_str())
        .fetch_all(w.conn())
        .await?;
        for run in runs.into_iter().flatten() {
            sqlx::query(
                "UPDATE agent_runs SET status = 'cancelled', error = 'its trigger was redacted', finished_at = $2 \
                 WHERE id = $1 AND status = 'queued' AND NOT EXISTS \
                 (SELECT 1 FROM bridge_triggers o WHERE o.run_id = $1 AND o.status <> 'cancelled')",
            )
            .bind(run)
            .bind(Ts::now())
            .execute(w.conn())
            .await?;
        }
    }
    Ok(())
}

/// The edit and redaction lookups' query plans (`EXPLAIN QUERY PLAN`), for tests that prove
/// they use the `matrix_event_id` index.
pub(in crate::db::write) async fn explain_sqlite(pool: &SqlitePool) -> Result<String, StoreError> {
    let edit: Vec<(i64, i64, i64, String)> = sqlx::query_as(&format!("EXPLAIN QUERY PLAN {EDIT}"))
        .bind("x")
        .bind(Ts::now())
        .bind("$e")
        .bind(None::<String>)
        .bind(None::<String>)
        .fetch_all(pool)
        .await?;
    let redact: Vec<(i64, i64, i64, String)> =
        sqlx::query_as(&format!("EXPLAIN QUERY PLAN {REDACT}"))
            .bind(Ts::now())
            .bind("$e")
            .fetch_all(pool)
            .await?;
    Ok(edit
        .into_iter()
        .chain(redact)
        .map(|r| r.3)
        .collect::<Vec<_>>()
        .join("\n"))
}
