//! `agent_sessions`: the idle sweep, counts for the metric, and the agent API's listing.

use std::time::Duration;

use serde::Serialize;

use crate::model::{
    ids::{AgentId, ChannelId, SessionId},
    topics::{Draft, PAYLOAD_VERSION, SessionChanged, Topic, channel_partition},
};
use crate::{
    db::{Store, StoreError, both, events::AppendEvents},
    model::{SessionStatus, Ts},
};

/// A session as its `agent.session.changed` event carries it.
pub(crate) type SessionEventRow = (SessionId, AgentId, ChannelId, SessionStatus, Ts, Option<Ts>);

pub(crate) fn session_draft(r: &SessionEventRow) -> Draft {
    let &(session_id, agent_id, channel_id, status, last_activity_at, closed_at) = r;
    Draft::new(
        Topic::SessionChanged,
        channel_partition(channel_id),
        &SessionChanged {
            v: PAYLOAD_VERSION,
            session_id,
            agent_id,
            channel_id,
            status,
            last_activity_at,
            closed_at,
        },
    )
}

/// A session as the agent API lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SessionRow {
    /// The session.
    pub id: SessionId,
    /// Its channel.
    pub channel_id: ChannelId,
    /// The channel's room.
    pub room_id: String,
    /// Where it stands.
    pub status: SessionStatus,
    /// When it opened.
    pub started_at: Ts,
    /// Last activity.
    pub last_activity_at: Ts,
    /// When it closed.
    pub closed_at: Option<Ts>,
}

/// The store's view of agent sessions (`agent_sessions`). A component given this handle, not the
/// whole store, can touch nothing else.
#[derive(Clone, Debug)]
pub struct SessionStore {
    store: Store,
}

impl Store {
    /// The queries of agent sessions (`agent_sessions`).
    pub fn sessions(&self) -> SessionStore {
        SessionStore {
            store: self.clone(),
        }
    }
}

impl SessionStore {
    /// Marks active sessions idle after their quiet period (`overrides` per agent, `default_after`
    /// for the rest). Touches only active sessions (a partial index), so the work does not grow
    /// with the number of closed sessions. Returns how many turned idle.
    pub async fn sweep_idle(
        &self,
        now: Ts,
        default_after: Duration,
        overrides: &[(AgentId, Duration)],
    ) -> Result<u64, StoreError> {
        let ret = "RETURNING id, agent_id, channel_id, status, last_activity_at, closed_at";
        let exclude: Vec<String> = (0..overrides.len())
            .map(|i| format!("${}", i + 2))
            .collect();
        let exclude = if exclude.is_empty() {
            String::new()
        } else {
            format!(" AND agent_id NOT IN ({})", exclude.join(", "))
        };
        let default_sql = format!(
            "UPDATE agent_sessions SET status = 'idle' WHERE status = 'active' AND last_activity_at < $1{exclude} {ret}"
        );
        let override_sql = format!(
            "UPDATE agent_sessions SET status = 'idle' WHERE status = 'active' AND last_activity_at < $1 \
             AND agent_id = $2 {ret}"
        );
        let changed = both!(self.store, pool => {
            let mut tx = pool.begin().await?;
            let mut rows: Vec<SessionEventRow> = Vec::new();
            for (agent, after) in overrides {
                rows.extend(
                    sqlx::query_as::<_, SessionEventRow>(&override_sql)
                        .bind(now.minus(*after))
                        .bind(agent)
                        .fetch_all(&mut *tx)
                        .await?,
                );
            }
            let mut q = sqlx::query_as::<_, SessionEventRow>(&default_sql).bind(now.minus(default_after));
            for (agent, _) in overrides {
                q = q.bind(*agent);
            }
            rows.extend(q.fetch_all(&mut *tx).await?);
            if self.store.events_enabled() {
                let drafts: Vec<_> = rows.iter().map(session_draft).collect();
                tx.append_events(&drafts).await?;
            }
            tx.commit().await?;
            rows.len() as u64
        });
        if changed > 0 {
            self.store.wake_publisher();
        }
        Ok(changed)
    }

    /// Closes every open session of an agent (it was disabled), with their events.
    pub async fn close_agent(&self, agent: AgentId) -> Result<u64, StoreError> {
        let now = Ts::now();
        let n = both!(self.store, pool => {
            let mut tx = pool.begin().await?;
            let rows: Vec<SessionEventRow> = sqlx::query_as(
                "UPDATE agent_sessions SET status = 'closed', closed_at = $2 WHERE agent_id = $1 AND status <> 'closed' \
                 RETURNING id, agent_id, channel_id, status, last_activity_at, closed_at",
            )
            .bind(agent)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            if self.store.events_enabled() {
                let drafts: Vec<_> = rows.iter().map(session_draft).collect();
                tx.append_events(&drafts).await?;
            }
            tx.commit().await?;
            rows.len() as u64
        });
        if n > 0 {
            self.store.wake_publisher();
        }
        Ok(n)
    }

    /// Sessions by status, for the metric.
    pub async fn counts(&self) -> Result<Vec<(SessionStatus, i64)>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(
            "SELECT status, COUNT(*) FROM agent_sessions GROUP BY status"
        )
        .fetch_all(pool)
        .await?))
    }

    /// The agent's sessions (of one status, when given), newest first.
    pub async fn of_agent(
        &self,
        agent: AgentId,
        status: Option<SessionStatus>,
    ) -> Result<Vec<SessionRow>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(
            "SELECT s.id, s.channel_id, c.matrix_room_id AS room_id, s.status, s.started_at, s.last_activity_at, \
             s.closed_at FROM agent_sessions s JOIN channels c ON c.id = s.channel_id \
             WHERE s.agent_id = $1 AND ($2 = '' OR s.status = $2) ORDER BY s.started_at DESC LIMIT 500",
        )
        .bind(agent)
        .bind(status.map(SessionStatus::as_str).unwrap_or(""))
        .fetch_all(pool)
        .await?))
    }

    /// A channel's sessions, newest first (at most `limit`), with the agent of each.
    pub async fn of_channel(
        &self,
        channel: ChannelId,
        limit: i64,
    ) -> Result<Vec<ChannelSession>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(
            "SELECT s.id, a.external_id AS agent, a.name AS agent_name, s.status, s.started_at, \
             s.last_activity_at, s.closed_at FROM agent_sessions s JOIN agents a ON a.id = s.agent_id \
             WHERE s.channel_id = $1 ORDER BY s.started_at DESC, s.id LIMIT $2",
        )
        .bind(channel)
        .bind(limit)
        .fetch_all(pool)
        .await?))
    }
}

/// A session of a channel, with its agent.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct ChannelSession {
    /// The session.
    pub id: SessionId,
    /// The agent's external id.
    pub agent: String,
    /// The agent's name.
    pub agent_name: String,
    /// Where it stands.
    pub status: SessionStatus,
    /// When it opened.
    pub started_at: Ts,
    /// Last activity.
    pub last_activity_at: Ts,
    /// When it closed.
    pub closed_at: Option<Ts>,
}
