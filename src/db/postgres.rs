//! The PostgreSQL write path: one statement per kind of row, rows passed as arrays and expanded
//! with `UNNEST`, all inside one transaction, so a 100-event transaction costs a handful of round
//! trips rather than a hundred.

use sqlx::{PgPool, Postgres, Transaction};

use super::{
    Batch, StoreError,
    shared::{write_channel, write_session},
    types::Ts,
};
use crate::ids::MessageId;

pub(super) async fn apply(pool: &PgPool, batch: &Batch) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    if let Some((txn_id, fingerprint, count)) = &batch.txn {
        // Recording the txnId inside the same transaction as its effects makes replay detection
        // exact: either both commit or neither does. A concurrent duplicate blocks on the primary
        // key until the first commits, then sees the conflict.
        let fresh: Option<String> = sqlx::query_scalar(
            "INSERT INTO bridge_transactions (txn_id, fingerprint, event_count) VALUES ($1, $2, $3) \
             ON CONFLICT (txn_id, fingerprint) DO NOTHING RETURNING txn_id",
        )
        .bind(txn_id)
        .bind(fingerprint)
        .bind(count)
        .fetch_optional(&mut *tx)
        .await?;
        if fresh.is_none() {
            tx.rollback().await?;
            return Ok(false);
        }
    }
    write(&mut tx, batch).await?;
    tx.commit().await?;
    Ok(true)
}

async fn write(tx: &mut Transaction<'static, Postgres>, b: &Batch) -> Result<(), sqlx::Error> {
    if !b.users.is_empty() {
        let handles: Vec<&str> = b.users.iter().map(|u| localpart(u)).collect();
        let external: Vec<String> = b.users.iter().map(|u| format!("matrix:{u}")).collect();
        let ids: Vec<uuid::Uuid> = b.users.iter().map(|_| uuid::Uuid::now_v7()).collect();
        // DO NOTHING on any conflict: a row the platform already wrote for this Matrix id wins.
        sqlx::query(
            "INSERT INTO users (id, external_id, matrix_id, handle) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING",
        )
        .bind(ids)
        .bind(external)
        .bind(&b.users)
        .bind(handles)
        .execute(&mut **tx)
        .await?;
    }
    for w in &b.channels {
        write_channel!(&mut **tx, w).await?;
    }
    for (is_agent, target) in [(false, "member_user_id"), (true, "member_agent_id")] {
        let joins: Vec<_> = b.joins.iter().filter(|j| j.is_agent == is_agent).collect();
        if !joins.is_empty() {
            let (table, col) = if is_agent {
                ("agents", "a")
            } else {
                ("users", "u")
            };
            let sql = format!(
                "INSERT INTO channel_members (id, channel_id, {target}, role, joined_at) \
                 SELECT j.id, c.id, {col}.id, j.role, j.at \
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) AS j(id, room, mxid, role, at) \
                 JOIN channels c ON c.matrix_room_id = j.room \
                 JOIN {table} {col} ON {col}.matrix_id = j.mxid \
                 ON CONFLICT (channel_id, {target}) DO UPDATE SET role = excluded.role, \
                 joined_at = CASE WHEN channel_members.left_at IS NULL THEN channel_members.joined_at ELSE excluded.joined_at END, \
                 left_at = NULL"
            );
            sqlx::query(&sql)
                .bind(
                    joins
                        .iter()
                        .map(|_| uuid::Uuid::now_v7())
                        .collect::<Vec<_>>(),
                )
                .bind(joins.iter().map(|j| j.room_id.as_str()).collect::<Vec<_>>())
                .bind(joins.iter().map(|j| j.user_id.as_str()).collect::<Vec<_>>())
                .bind(joins.iter().map(|j| j.role).collect::<Vec<_>>())
                .bind(joins.iter().map(|j| j.at).collect::<Vec<Ts>>())
                .execute(&mut **tx)
                .await?;
        }
        let leaves: Vec<_> = b.leaves.iter().filter(|l| l.is_agent == is_agent).collect();
        if !leaves.is_empty() {
            let (table, col) = if is_agent {
                ("agents", "a")
            } else {
                ("users", "u")
            };
            let sql = format!(
                "UPDATE channel_members cm SET left_at = l.at \
                 FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) AS l(room, mxid, at) \
                 JOIN channels c ON c.matrix_room_id = l.room \
                 JOIN {table} {col} ON {col}.matrix_id = l.mxid \
                 WHERE cm.channel_id = c.id AND cm.{target} = {col}.id AND cm.left_at IS NULL"
            );
            sqlx::query(&sql)
                .bind(
                    leaves
                        .iter()
                        .map(|l| l.room_id.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    leaves
                        .iter()
                        .map(|l| l.user_id.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(leaves.iter().map(|l| l.at).collect::<Vec<Ts>>())
                .execute(&mut **tx)
                .await?;
        }
    }
    if !b.roles.is_empty() {
        sqlx::query(
            "UPDATE channel_members cm SET role = r.role \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) AS r(room, mxid, role) \
             JOIN channels c ON c.matrix_room_id = r.room \
             JOIN users u ON u.matrix_id = r.mxid \
             WHERE cm.channel_id = c.id AND cm.member_user_id = u.id AND cm.role <> r.role",
        )
        .bind(
            b.roles
                .iter()
                .map(|r| r.room_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            b.roles
                .iter()
                .map(|r| r.user_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(b.roles.iter().map(|r| r.role).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    if !b.messages.is_empty() {
        let m = &b.messages;
        // The event id's unique index makes a duplicate (same event in another txnId) a no-op.
        sqlx::query(
            "INSERT INTO messages (id, channel_id, matrix_event_id, sender_user_id, sender_agent_id, \
             sender_type, content_preview, created_at, thread_root_event_id) \
             SELECT m.id, c.id, m.event_id, u.id, a.id, \
             CASE WHEN m.is_agent THEN 'agent' ELSE 'human' END, m.preview, m.at, m.thread \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::text[], $7::timestamptz[], $8::text[]) \
             AS m(id, room, event_id, sender, is_agent, preview, at, thread) \
             JOIN channels c ON c.matrix_room_id = m.room \
             LEFT JOIN users u ON NOT m.is_agent AND u.matrix_id = m.sender \
             LEFT JOIN agents a ON m.is_agent AND a.matrix_id = m.sender \
             ON CONFLICT (matrix_event_id) DO NOTHING",
        )
        .bind(m.iter().map(|_| MessageId::new()).collect::<Vec<_>>())
        .bind(m.iter().map(|x| x.room_id.as_str()).collect::<Vec<_>>())
        .bind(m.iter().map(|x| x.event_id.as_str()).collect::<Vec<_>>())
        .bind(m.iter().map(|x| x.sender.as_str()).collect::<Vec<_>>())
        .bind(m.iter().map(|x| x.is_agent).collect::<Vec<_>>())
        .bind(m.iter().map(|x| x.preview.as_str()).collect::<Vec<_>>())
        .bind(m.iter().map(|x| x.at).collect::<Vec<Ts>>())
        .bind(m.iter().map(|x| x.thread_root.as_deref()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    if !b.edits.is_empty() {
        let e = &b.edits;
        // Only the original sender may edit, a redacted message stays redacted, and an older
        // edit never overwrites a newer one.
        sqlx::query(
            "UPDATE messages m SET content_preview = e.preview, edited_at = e.at \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS e(target, sender, preview, at) \
             WHERE m.matrix_event_id = e.target AND m.redacted_at IS NULL \
             AND (m.edited_at IS NULL OR m.edited_at <= e.at) \
             AND (m.sender_user_id = (SELECT id FROM users WHERE matrix_id = e.sender) \
                  OR m.sender_agent_id = (SELECT id FROM agents WHERE matrix_id = e.sender))",
        )
        .bind(e.iter().map(|x| x.target_event_id.as_str()).collect::<Vec<_>>())
        .bind(e.iter().map(|x| x.sender.as_str()).collect::<Vec<_>>())
        .bind(e.iter().map(|x| x.preview.as_str()).collect::<Vec<_>>())
        .bind(e.iter().map(|x| x.at).collect::<Vec<Ts>>())
        .execute(&mut **tx)
        .await?;
    }
    if !b.redactions.is_empty() {
        let r = &b.redactions;
        sqlx::query(
            "UPDATE messages m SET content_preview = '', redacted_at = r.at \
             FROM UNNEST($1::text[], $2::timestamptz[]) AS r(target, at) \
             WHERE m.matrix_event_id = r.target AND m.redacted_at IS NULL",
        )
        .bind(
            r.iter()
                .map(|x| x.target_event_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(r.iter().map(|x| x.at).collect::<Vec<Ts>>())
        .execute(&mut **tx)
        .await?;
    }
    for op in &b.sessions {
        write_session!(&mut **tx, op).await?;
    }
    Ok(())
}

pub(super) fn localpart(user_id: &str) -> &str {
    user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or(user_id)
}
