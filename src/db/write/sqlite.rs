//! SQLite: the same effects as the PostgreSQL statement, as cached prepared statements inside
//! one `BEGIN IMMEDIATE` transaction (IMMEDIATE takes the write lock up front so two writers
//! never deadlock upgrading a read lock). Each statement is a handoff to the connection's
//! worker thread, so the bulk of a batch (messages, events) goes in one statement each, its
//! rows as a JSON array read with `json_each`; rarer rows keep a statement each.

use sqlx::{SqliteConnection, SqlitePool};

use super::events as draft;
use crate::{
    db::{
        Batch, Party, SessionChange, StoreError,
        audit::AppendAudit,
        events::AppendEvents,
        sessions::{SessionEventRow, session_draft},
    },
    model::{
        JobKind, SessionStatus, Ts,
        ids::{ChannelId, MessageId, SessionId},
        topics::{Draft, Topic},
    },
};

/// The events of the batch, when they are on: each write adds the drafts its result confirms.
type Events = Option<Vec<Draft>>;

pub(in crate::db) async fn apply(
    pool: &SqlitePool,
    batch: &Batch,
    events: bool,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    if let Some(txn) = &batch.txn {
        let fresh: Option<i64> = sqlx::query_scalar(
            "INSERT INTO bridge_transactions (txn_hash, fingerprint, processed_at, event_count) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1",
        )
        .bind(&txn.txn_hash)
        .bind(&txn.fingerprint)
        .bind(Ts::now())
        .bind(txn.event_count)
        .fetch_optional(&mut *tx)
        .await?;
        if fresh.is_none() {
            tx.rollback().await?;
            return Ok(false);
        }
    }
    let mut ev: Events = events.then(Vec::new);
    write(&mut tx, batch, &mut ev).await?;
    tx.append_audit(&batch.audits).await?;
    if let Some(drafts) = ev {
        tx.append_events(&drafts).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// The edit and redaction lookups' query plans (`EXPLAIN QUERY PLAN`), for tests that prove
/// they use the `matrix_event_id` index.
pub(in crate::db) async fn explain(pool: &SqlitePool) -> Result<String, StoreError> {
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

const EDIT: &str = "UPDATE messages SET content_preview = $1, edited_at = $2 \
     WHERE matrix_event_id = $3 AND redacted_at IS NULL AND (edited_at IS NULL OR edited_at <= $2) \
     AND (sender_user_id = $4 OR sender_agent_id = $5)";

/// What the edit and redaction statements return for their events.
const RETURNING: &str = "RETURNING id, channel_id";

const REDACT: &str = "UPDATE messages SET content_preview = '', redacted_at = $1 WHERE matrix_event_id = $2 AND redacted_at IS NULL";

async fn write(conn: &mut SqliteConnection, b: &Batch, ev: &mut Events) -> Result<(), sqlx::Error> {
    let now = Ts::now();
    for u in &b.users {
        sqlx::query(
            "INSERT INTO users (id, external_id, matrix_id, handle, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(u.id)
        .bind(format!("matrix:{}", u.matrix_id))
        .bind(u.matrix_id.as_str())
        .bind(u.matrix_id.localpart())
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    channels(conn, b, now, ev).await?;
    members(conn, b, ev).await?;
    messages(conn, b, ev).await?;
    sessions(conn, b, ev).await?;
    work(conn, b, now).await
}

async fn channels(
    conn: &mut SqliteConnection,
    b: &Batch,
    now: Ts,
    ev: &mut Events,
) -> Result<(), sqlx::Error> {
    for w in &b.channels {
        let changed = match &w.create {
            Some(create) => {
                sqlx::query(
                    "INSERT INTO channels (id, slug, name, microdao_id, matrix_room_id, visibility, topic, \
                     created_by_user_id, created_by_agent_id, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) ON CONFLICT (matrix_room_id) DO NOTHING",
                )
                .bind(w.channel_id)
                .bind(&create.slug)
                .bind(&w.name)
                .bind(create.microdao_id)
                .bind(w.room_id.as_str())
                .bind(w.visibility)
                .bind(&w.topic)
                .bind(create.created_by.and_then(Party::user))
                .bind(create.created_by.and_then(Party::agent))
                .bind(now)
                .execute(&mut *conn)
                .await?
                .rows_affected()
            }
            None => {
                sqlx::query(
                    "UPDATE channels SET name = $2, topic = $3, visibility = $4, updated_at = $5 WHERE id = $1 \
                     AND (name <> $2 OR topic IS NOT $3 OR visibility <> $4)",
                )
                .bind(w.channel_id)
                .bind(&w.name)
                .bind(&w.topic)
                .bind(w.visibility)
                .bind(now)
                .execute(&mut *conn)
                .await?
                .rows_affected()
            }
        };
        if let Some(ev) = ev
            && changed > 0
        {
            ev.push(draft::channel_changed(w, now));
        }
        sqlx::query(
            "INSERT INTO bridge_rooms (channel_id, name_source, visibility_pinned, power_levels, \
             state_synced_at, is_direct, canonical_alias) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (channel_id) DO UPDATE SET name_source = excluded.name_source, \
             visibility_pinned = excluded.visibility_pinned, power_levels = excluded.power_levels, \
             state_synced_at = COALESCE(excluded.state_synced_at, bridge_rooms.state_synced_at), \
             is_direct = excluded.is_direct, canonical_alias = excluded.canonical_alias",
        )
        .bind(w.channel_id)
        .bind(w.name_source)
        .bind(w.visibility_pinned)
        .bind(sqlx::types::Json(&w.power_levels))
        .bind(w.state_synced.then_some(now))
        .bind(w.is_direct)
        .bind(&w.alias)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn members(
    conn: &mut SqliteConnection,
    b: &Batch,
    ev: &mut Events,
) -> Result<(), sqlx::Error> {
    for m in &b.members {
        let col = match m.party {
            Party::User(_) => "member_user_id",
            Party::Agent(_) => "member_agent_id",
        };
        // Both id kinds are stored as hyphenated UUID text.
        let who = match m.party {
            Party::User(u) => u.0,
            Party::Agent(a) => a.0,
        }
        .hyphenated()
        .to_string();
        if m.joined_at.is_some() {
            let row = sqlx::query(&format!(
                "INSERT INTO channel_members (id, channel_id, {col}, role, joined_at, left_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (channel_id, {col}) DO UPDATE SET role = excluded.role, \
                 joined_at = CASE WHEN channel_members.left_at IS NULL THEN channel_members.joined_at \
                 ELSE excluded.joined_at END, left_at = excluded.left_at RETURNING joined_at, left_at"
            ))
            .bind(uuid::Uuid::now_v7().hyphenated().to_string())
            .bind(m.channel_id)
            .bind(&who)
            .bind(m.role)
            .bind(m.joined_at)
            .bind(m.left_at)
            .fetch_one(&mut *conn)
            .await?;
            if let Some(ev) = ev {
                let (joined, left): (Ts, Option<Ts>) =
                    (sqlx::Row::try_get(&row, 0)?, sqlx::Row::try_get(&row, 1)?);
                // A new membership period starts at this join; an active member's join time
                // is kept, and then nothing happened.
                if Some(joined) == m.joined_at {
                    ev.push(draft::member_changed(m, Topic::MemberJoined, joined));
                }
                if let Some(left) = left.filter(|l| Some(*l) == m.left_at) {
                    ev.push(draft::member_changed(m, Topic::MemberLeft, left));
                }
            }
        } else {
            let left = sqlx::query(&format!(
                "UPDATE channel_members SET left_at = $3 WHERE channel_id = $1 AND {col} = $2 AND left_at IS NULL"
            ))
            .bind(m.channel_id)
            .bind(&who)
            .bind(m.left_at)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if let Some(ev) = ev
                && left > 0
            {
                ev.push(draft::member_changed(
                    m,
                    Topic::MemberLeft,
                    m.left_at.unwrap_or_else(Ts::now),
                ));
            }
        }
    }
    for r in &b.roles {
        sqlx::query(
            "UPDATE channel_members SET role = $3 WHERE channel_id = $1 AND member_user_id = $2 AND role <> $3",
        )
        .bind(r.channel_id)
        .bind(r.user_id)
        .bind(r.role)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn messages(
    conn: &mut SqliteConnection,
    b: &Batch,
    ev: &mut Events,
) -> Result<(), sqlx::Error> {
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
        let inserted: Vec<MessageId> = sqlx::query_scalar(
            "INSERT INTO messages (id, channel_id, matrix_event_id, sender_user_id, sender_agent_id, \
             sender_type, content_preview, created_at, thread_root_event_id, edited_at, redacted_at) \
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, \
             CASE WHEN value ->> 4 IS NULL THEN 'human' ELSE 'agent' END, value ->> 5, value ->> 6, \
             value ->> 7, value ->> 8, value ->> 9 FROM json_each($1) WHERE true \
             ON CONFLICT (matrix_event_id) DO NOTHING RETURNING id",
        )
        .bind(serde_json::Value::Array(rows).to_string())
        .fetch_all(&mut *conn)
        .await?;
        if let Some(ev) = ev {
            let inserted: std::collections::HashSet<MessageId> = inserted.into_iter().collect();
            ev.extend(
                b.messages
                    .iter()
                    .filter(|m| inserted.contains(&m.id))
                    .map(draft::message_created),
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
            .fetch_optional(&mut *conn)
            .await?;
        if let (Some(ev), Some(row)) = (ev.as_mut(), row) {
            ev.push(draft::message_edited(e, Some(row)));
        }
    }
    for r in &b.redactions {
        let row: Option<(MessageId, ChannelId)> = sqlx::query_as(&format!("{REDACT} {RETURNING}"))
            .bind(r.at)
            .bind(r.target.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        if let (Some(ev), Some(row)) = (ev.as_mut(), row) {
            ev.push(draft::message_redacted(r, Some(row)));
        }
        // A redacted question is not answered (see the PostgreSQL statement).
        let runs: Vec<Option<String>> = sqlx::query_scalar(
            "UPDATE bridge_triggers SET status = 'cancelled' WHERE event_id = $1 \
             AND status IN ('candidate', 'pending', 'taken') \
             AND (run_id IS NULL OR run_id IN (SELECT id FROM agent_runs WHERE status = 'queued')) RETURNING run_id",
        )
        .bind(r.target.as_str())
        .fetch_all(&mut *conn)
        .await?;
        for run in runs.into_iter().flatten() {
            sqlx::query(
                "UPDATE agent_runs SET status = 'cancelled', error = 'its trigger was redacted', finished_at = $2 \
                 WHERE id = $1 AND status = 'queued' AND NOT EXISTS \
                 (SELECT 1 FROM bridge_triggers o WHERE o.run_id = $1 AND o.status <> 'cancelled')",
            )
            .bind(run)
            .bind(Ts::now())
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

const SESSION_ROW: &str = "RETURNING id, agent_id, channel_id, status, last_activity_at, closed_at";

async fn sessions(
    conn: &mut SqliteConnection,
    b: &Batch,
    ev: &mut Events,
) -> Result<(), sqlx::Error> {
    for op in &b.sessions {
        match (op.change, op.agent) {
            (SessionChange::Activate, Some(agent)) => {
                // Whether the status changes is known only from the state before the upsert.
                let before: Option<SessionStatus> = match ev {
                    Some(_) => sqlx::query_scalar(
                        "SELECT status FROM agent_sessions WHERE agent_id = $1 AND channel_id = $2 \
                             AND status <> 'closed'",
                    )
                    .bind(agent)
                    .bind(op.channel_id)
                    .fetch_optional(&mut *conn)
                    .await?,
                    None => None,
                };
                let row: SessionEventRow = sqlx::query_as(&format!(
                    "INSERT INTO agent_sessions (id, agent_id, channel_id, started_at, last_activity_at, status) \
                     VALUES ($1, $2, $3, $4, $4, 'active') \
                     ON CONFLICT (agent_id, channel_id) WHERE status <> 'closed' DO UPDATE SET status = 'active', \
                     last_activity_at = MAX(agent_sessions.last_activity_at, excluded.last_activity_at) {SESSION_ROW}"
                ))
                .bind(SessionId::new())
                .bind(agent)
                .bind(op.channel_id)
                .bind(op.at)
                .fetch_one(&mut *conn)
                .await?;
                if let Some(ev) = ev
                    && before != Some(SessionStatus::Active)
                {
                    ev.push(session_draft(&row));
                }
            }
            (SessionChange::Close, agent) => {
                let rows: Vec<SessionEventRow> = match agent {
                    Some(agent) => {
                        sqlx::query_as(&format!(
                            "UPDATE agent_sessions SET status = 'closed', closed_at = $1 \
                             WHERE agent_id = $2 AND channel_id = $3 AND status <> 'closed' {SESSION_ROW}"
                        ))
                        .bind(op.at)
                        .bind(agent)
                        .bind(op.channel_id)
                        .fetch_all(&mut *conn)
                        .await?
                    }
                    None => {
                        sqlx::query_as(&format!(
                            "UPDATE agent_sessions SET status = 'closed', closed_at = $1 \
                             WHERE channel_id = $2 AND status <> 'closed' {SESSION_ROW}"
                        ))
                        .bind(op.at)
                        .bind(op.channel_id)
                        .fetch_all(&mut *conn)
                        .await?
                    }
                };
                if let Some(ev) = ev {
                    ev.extend(rows.iter().map(session_draft));
                }
            }
            (SessionChange::Activate, None) => {}
        }
    }
    Ok(())
}

async fn work(conn: &mut SqliteConnection, b: &Batch, now: Ts) -> Result<(), sqlx::Error> {
    for j in &b.jobs {
        if j.kind == JobKind::Command {
            // One job per command event: a replayed or duplicated event adds none.
            sqlx::query(
                "INSERT INTO bridge_jobs (id, kind, room_id, user_id, event_id, body, status, not_before, created_at) \
                 VALUES ($1, 'command', $2, $3, $4, $5, 'pending', $6, $6) \
                 ON CONFLICT (event_id) WHERE kind = 'command' DO NOTHING",
            )
            .bind(crate::model::ids::JobId::new())
            .bind(j.room_id.as_str())
            .bind(j.user_id.as_str())
            .bind(j.event_id.as_ref().map(|e| e.as_str()))
            .bind(&j.body)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            continue;
        }
        sqlx::query(
            "INSERT INTO bridge_jobs (id, kind, room_id, user_id, reason, status, not_before, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6) \
             ON CONFLICT (kind, room_id, user_id) WHERE status = 'pending' AND kind <> 'command' DO NOTHING",
        )
        .bind(crate::model::ids::JobId::new())
        .bind(j.kind)
        .bind(j.room_id.as_str())
        .bind(j.user_id.as_str())
        .bind(&j.reason)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    for c in &b.candidates {
        sqlx::query(
            "INSERT INTO bridge_triggers (id, channel_id, room_id, event_id, status, payload, at, created_at) \
             VALUES ($1, $2, $3, $4, 'candidate', $5, $6, $7) ON CONFLICT (event_id) WHERE agent_id IS NULL DO NOTHING",
        )
        .bind(crate::model::ids::TriggerId::new())
        .bind(c.channel_id)
        .bind(c.room_id.as_str())
        .bind(c.event_id.as_str())
        .bind(super::payload_json(&c.payload))
        .bind(c.at)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    if let Some(sent) = &b.sent {
        sqlx::query(
            "UPDATE agent_outbox SET status = 'sent', event_id = $2, error = NULL, sent_at = $3, \
             attempts = attempts + 1, not_before = NULL WHERE id = $1",
        )
        .bind(sent.outbox_id)
        .bind(sent.event_id.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await?;
        if let Some(run) = sent.run {
            sqlx::query("UPDATE agent_runs SET reply_event_id = $2 WHERE id = $1 AND reply_event_id IS NULL")
                .bind(run)
                .bind(sent.event_id.as_str())
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}
