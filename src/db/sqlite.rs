//! The SQLite write path: the same statements as PostgreSQL, run per row with cached prepared
//! statements inside one `BEGIN IMMEDIATE` transaction (SQLite is in-process, so per-row
//! statements cost microseconds, not round trips; IMMEDIATE takes the write lock up front so two
//! writers never deadlock upgrading a read lock).

use sqlx::{SqliteConnection, SqlitePool};

use super::{
    Batch, StoreError,
    postgres::localpart,
    shared::{write_channel, write_session},
};
use crate::ids::{MessageId, UserRowId};

pub(super) async fn apply(pool: &SqlitePool, batch: &Batch) -> Result<bool, StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    if let Some((txn_id, fingerprint, count)) = &batch.txn {
        let fresh: Option<String> = sqlx::query_scalar(
            "INSERT INTO bridge_transactions (txn_id, fingerprint, processed_at, event_count) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (txn_id, fingerprint) DO NOTHING RETURNING txn_id",
        )
        .bind(txn_id)
        .bind(fingerprint)
        .bind(super::types::Ts::now())
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

async fn write(conn: &mut SqliteConnection, b: &Batch) -> Result<(), sqlx::Error> {
    for user in &b.users {
        sqlx::query(
            "INSERT INTO users (id, external_id, matrix_id, handle, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(UserRowId::new())
        .bind(format!("matrix:{user}"))
        .bind(user)
        .bind(localpart(user))
        .bind(super::types::Ts::now())
        .execute(&mut *conn)
        .await?;
    }
    for w in &b.channels {
        write_channel!(&mut *conn, w).await?;
    }
    for j in &b.joins {
        let (target, table) = if j.is_agent {
            ("member_agent_id", "agents")
        } else {
            ("member_user_id", "users")
        };
        sqlx::query(&format!(
            "INSERT INTO channel_members (id, channel_id, {target}, role, joined_at) \
             SELECT $1, c.id, x.id, $2, $3 FROM channels c JOIN {table} x ON x.matrix_id = $5 \
             WHERE c.matrix_room_id = $4 \
             ON CONFLICT (channel_id, {target}) DO UPDATE SET role = excluded.role, \
             joined_at = CASE WHEN channel_members.left_at IS NULL THEN channel_members.joined_at ELSE excluded.joined_at END, \
             left_at = NULL"
        ))
        .bind(UserRowId::new())
        .bind(j.role)
        .bind(j.at)
        .bind(&j.room_id)
        .bind(&j.user_id)
        .execute(&mut *conn)
        .await?;
    }
    for l in &b.leaves {
        let (target, table) = if l.is_agent {
            ("member_agent_id", "agents")
        } else {
            ("member_user_id", "users")
        };
        sqlx::query(&format!(
            "UPDATE channel_members SET left_at = $1 \
             WHERE channel_id = (SELECT id FROM channels WHERE matrix_room_id = $2) \
             AND {target} = (SELECT id FROM {table} WHERE matrix_id = $3) AND left_at IS NULL"
        ))
        .bind(l.at)
        .bind(&l.room_id)
        .bind(&l.user_id)
        .execute(&mut *conn)
        .await?;
    }
    for r in &b.roles {
        sqlx::query(
            "UPDATE channel_members SET role = $1 \
             WHERE channel_id = (SELECT id FROM channels WHERE matrix_room_id = $2) \
             AND member_user_id = (SELECT id FROM users WHERE matrix_id = $3) AND role <> $1",
        )
        .bind(r.role)
        .bind(&r.room_id)
        .bind(&r.user_id)
        .execute(&mut *conn)
        .await?;
    }
    for m in &b.messages {
        sqlx::query(
            "INSERT INTO messages (id, channel_id, matrix_event_id, sender_user_id, sender_agent_id, \
             sender_type, content_preview, created_at, thread_root_event_id) \
             SELECT $1, c.id, $2, \
             CASE WHEN $4 THEN NULL ELSE (SELECT id FROM users WHERE matrix_id = $3) END, \
             CASE WHEN $4 THEN (SELECT id FROM agents WHERE matrix_id = $3) ELSE NULL END, \
             CASE WHEN $4 THEN 'agent' ELSE 'human' END, $5, $6, $8 \
             FROM channels c WHERE c.matrix_room_id = $7 \
             ON CONFLICT (matrix_event_id) DO NOTHING",
        )
        .bind(MessageId::new())
        .bind(&m.event_id)
        .bind(&m.sender)
        .bind(m.is_agent)
        .bind(&m.preview)
        .bind(m.at)
        .bind(&m.room_id)
        .bind(&m.thread_root)
        .execute(&mut *conn)
        .await?;
    }
    for e in &b.edits {
        sqlx::query(
            "UPDATE messages SET content_preview = $1, edited_at = $2 \
             WHERE matrix_event_id = $3 AND redacted_at IS NULL \
             AND (edited_at IS NULL OR edited_at <= $2) \
             AND (sender_user_id = (SELECT id FROM users WHERE matrix_id = $4) \
                  OR sender_agent_id = (SELECT id FROM agents WHERE matrix_id = $4))",
        )
        .bind(&e.preview)
        .bind(e.at)
        .bind(&e.target_event_id)
        .bind(&e.sender)
        .execute(&mut *conn)
        .await?;
    }
    for r in &b.redactions {
        sqlx::query(
            "UPDATE messages SET content_preview = '', redacted_at = $1 \
             WHERE matrix_event_id = $2 AND redacted_at IS NULL",
        )
        .bind(r.at)
        .bind(&r.target_event_id)
        .execute(&mut *conn)
        .await?;
    }
    for op in &b.sessions {
        write_session!(&mut *conn, op).await?;
    }
    Ok(())
}
