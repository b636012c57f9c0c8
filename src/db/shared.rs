//! Write statements whose SQL is valid in both dialects, expanded once per dialect by macro (the
//! executor types differ, the statements do not).

/// Creates or updates a channel row and its `bridge_rooms` row. Expands to an `async` block.
macro_rules! write_channel {
    ($conn:expr, $w:expr) => {
        async {
            let w: &$crate::db::ChannelWrite = $w;
            let now = $crate::db::types::Ts::now();
            if let Some(create) = &w.create {
                let slug = {
                    let pattern = format!("{}-%", create.slug);
                    let taken: Vec<String> = sqlx::query_scalar(
                        "SELECT slug FROM channels WHERE microdao_id = $1 AND (slug = $2 OR slug LIKE $3)",
                    )
                    .bind(create.microdao_id)
                    .bind(&create.slug)
                    .bind(pattern)
                    .fetch_all(&mut *$conn)
                    .await?;
                    $crate::db::pick_slug(&create.slug, &taken)
                };
                sqlx::query(
                    "INSERT INTO channels (id, slug, name, microdao_id, matrix_room_id, visibility, \
                     topic, created_by_user_id, created_by_agent_id, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, \
                     (SELECT id FROM users WHERE matrix_id = $8), \
                     (SELECT id FROM agents WHERE matrix_id = $9), $10, $10) \
                     ON CONFLICT (matrix_room_id) DO NOTHING",
                )
                .bind($crate::ids::ChannelId::new())
                .bind(slug)
                .bind(&w.name)
                .bind(create.microdao_id)
                .bind(&w.room_id)
                .bind(w.visibility.as_str())
                .bind(&w.topic)
                .bind(&create.created_by_user)
                .bind(&create.created_by_agent)
                .bind(now)
                .execute(&mut *$conn)
                .await?;
            } else {
                sqlx::query(
                    "UPDATE channels SET name = $2, topic = $3, visibility = $4, updated_at = $5 \
                     WHERE matrix_room_id = $1 \
                     AND (name <> $2 OR topic IS DISTINCT FROM $3 OR visibility <> $4)",
                )
                .bind(&w.room_id)
                .bind(&w.name)
                .bind(&w.topic)
                .bind(w.visibility.as_str())
                .bind(now)
                .execute(&mut *$conn)
                .await?;
            }
            sqlx::query(
                "INSERT INTO bridge_rooms (channel_id, name_source, visibility_pinned, power_levels, state_synced_at, is_direct) \
                 SELECT id, $2, $3, $4, $5, $6 FROM channels WHERE matrix_room_id = $1 \
                 ON CONFLICT (channel_id) DO UPDATE SET name_source = excluded.name_source, \
                 visibility_pinned = excluded.visibility_pinned, power_levels = excluded.power_levels, \
                 state_synced_at = COALESCE(excluded.state_synced_at, bridge_rooms.state_synced_at), \
                 is_direct = excluded.is_direct",
            )
            .bind(&w.room_id)
            .bind(w.name_source.as_str())
            .bind(w.visibility_pinned)
            .bind(sqlx::types::Json(&w.power_levels))
            .bind(if w.state_synced { Some(now) } else { None })
            .bind(w.is_direct)
            .execute(&mut *$conn)
            .await?;
            Ok::<(), sqlx::Error>(())
        }
    };
}
pub(crate) use write_channel;

/// Applies one agent-session change. Expands to an `async` block.
macro_rules! write_session {
    ($conn:expr, $op:expr) => {
        async {
            let op: &$crate::db::SessionOp = $op;
            match (op.change, &op.agent) {
                ($crate::db::SessionChange::Activate, Some(agent)) => {
                    // At most one open session per (agent, channel): the partial unique index is
                    // the conflict target, so activity revives an idle session instead of
                    // opening a second one.
                    sqlx::query(
                        "INSERT INTO agent_sessions (id, agent_id, channel_id, started_at, last_activity_at, status) \
                         SELECT $1, a.id, c.id, $2, $2, 'active' FROM agents a, channels c \
                         WHERE a.matrix_id = $3 AND c.matrix_room_id = $4 \
                         ON CONFLICT (agent_id, channel_id) WHERE status <> 'closed' DO UPDATE SET status = 'active', \
                         last_activity_at = CASE WHEN excluded.last_activity_at > agent_sessions.last_activity_at \
                         THEN excluded.last_activity_at ELSE agent_sessions.last_activity_at END",
                    )
                    .bind($crate::ids::SessionId::new())
                    .bind(op.at)
                    .bind(agent)
                    .bind(&op.room_id)
                    .execute(&mut *$conn)
                    .await?;
                }
                ($crate::db::SessionChange::Close, Some(agent)) => {
                    sqlx::query(
                        "UPDATE agent_sessions SET status = 'closed', closed_at = $1 WHERE status <> 'closed' \
                         AND agent_id = (SELECT id FROM agents WHERE matrix_id = $2) \
                         AND channel_id = (SELECT id FROM channels WHERE matrix_room_id = $3)",
                    )
                    .bind(op.at)
                    .bind(agent)
                    .bind(&op.room_id)
                    .execute(&mut *$conn)
                    .await?;
                }
                ($crate::db::SessionChange::Close, None) => {
                    sqlx::query(
                        "UPDATE agent_sessions SET status = 'closed', closed_at = $1 WHERE status <> 'closed' \
                         AND channel_id = (SELECT id FROM channels WHERE matrix_room_id = $2)",
                    )
                    .bind(op.at)
                    .bind(&op.room_id)
                    .execute(&mut *$conn)
                    .await?;
                }
                ($crate::db::SessionChange::Activate, None) => {}
            }
            Ok::<(), sqlx::Error>(())
        }
    };
}
pub(crate) use write_session;
