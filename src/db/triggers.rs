//! `bridge_triggers`: messages that may address agents, written as candidates in the commit of
//! the transaction that mirrored them, evaluated by the run scheduler into per-agent triggers,
//! and taken by the run that answers them. Nothing between commit and answer lives only in
//! memory.

use sqlx::types::Json;

use crate::model::ids::{AgentId, ChannelId, TriggerId};
use crate::{
    db::{CandidatePayload, Store, StoreError, both},
    model::{TriggerStatus, Ts},
};

/// A trigger or candidate row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TriggerRow {
    /// The row.
    pub id: TriggerId,
    /// The addressed agent (none for a candidate).
    pub agent_id: Option<AgentId>,
    /// The channel.
    pub channel_id: ChannelId,
    /// The room.
    pub room_id: String,
    /// The message.
    pub event_id: String,
    /// Where it stands.
    pub status: TriggerStatus,
    /// What the rules read and the runtime receives.
    pub payload: Json<CandidatePayload>,
    /// `origin_server_ts` of the message.
    pub at: Ts,
    /// When the row was written.
    pub created_at: Ts,
}

/// Pending triggers of one agent in one channel, merged into one run once the newest is older
/// than the debounce.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TriggerGroup {
    /// The agent.
    pub agent_id: AgentId,
    /// The channel.
    pub channel_id: ChannelId,
    /// The room.
    pub room_id: String,
    /// When the newest pending trigger was written.
    pub newest: Ts,
}

const COLS: &str = "SELECT id, agent_id, channel_id, room_id, event_id, status, payload, at, created_at FROM bridge_triggers";

/// The store's view of trigger candidates and pending triggers (`bridge_triggers`). A component
/// given this handle, not the whole store, can touch nothing else.
#[derive(Clone, Debug)]
pub struct TriggerStore {
    store: Store,
}

impl Store {
    /// The queries of trigger candidates and pending triggers (`bridge_triggers`).
    pub fn triggers(&self) -> TriggerStore {
        TriggerStore {
            store: self.clone(),
        }
    }
}

impl TriggerStore {
    /// Candidates not evaluated yet, oldest first.
    pub async fn candidates(&self, limit: i64) -> Result<Vec<TriggerRow>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(&format!(
            "{COLS} WHERE status = 'candidate' ORDER BY created_at, id LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(pool)
        .await?))
    }

    /// Records a candidate's evaluation: a pending trigger per addressed agent, atomically with
    /// marking the candidate evaluated (a crash in between re-evaluates; the unique index on
    /// (event, agent) absorbs the repeat).
    pub async fn evaluate(
        &self,
        candidate: &TriggerRow,
        agents: &[AgentId],
    ) -> Result<(), StoreError> {
        let now = Ts::now();
        both!(self.store, pool => {
            let mut tx = pool.begin().await?;
            for agent in agents {
                sqlx::query(
                    "INSERT INTO bridge_triggers (id, agent_id, channel_id, room_id, event_id, status, payload, at, created_at) \
                     SELECT $1, $2, channel_id, room_id, event_id, 'pending', payload, at, $3 FROM bridge_triggers \
                     WHERE id = $4 AND status = 'candidate' \
                     ON CONFLICT (event_id, agent_id) WHERE agent_id IS NOT NULL DO NOTHING",
                )
                .bind(TriggerId::new())
                .bind(agent)
                .bind(now)
                .bind(candidate.id)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("UPDATE bridge_triggers SET status = 'evaluated' WHERE id = $1 AND status = 'candidate'")
                .bind(candidate.id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// (agent, channel) pairs with pending triggers, with the newest one's time.
    pub async fn groups(&self) -> Result<Vec<TriggerGroup>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(
            "SELECT agent_id, channel_id, room_id, MAX(created_at) AS newest FROM bridge_triggers \
             WHERE status = 'pending' AND agent_id IS NOT NULL GROUP BY agent_id, channel_id, room_id",
        )
        .fetch_all(pool)
        .await?))
    }

    /// The pending triggers of an agent in a channel, oldest first.
    pub async fn pending(
        &self,
        agent: AgentId,
        channel: ChannelId,
    ) -> Result<Vec<TriggerRow>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(&format!(
            "{COLS} WHERE agent_id = $1 AND channel_id = $2 AND status = 'pending' ORDER BY at, created_at"
        ))
        .bind(agent)
        .bind(channel)
        .fetch_all(pool)
        .await?))
    }

    /// Cancels one pending trigger (refused by the agent→agent chain limit).
    pub async fn cancel(&self, id: TriggerId) -> Result<(), StoreError> {
        both!(self.store, pool => sqlx::query(
            "UPDATE bridge_triggers SET status = 'cancelled' WHERE id = $1 AND status = 'pending'"
        )
        .bind(id)
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// Cancels every pending trigger of an agent in a channel (the agent is gone).
    pub async fn cancel_pending(
        &self,
        agent: AgentId,
        channel: ChannelId,
    ) -> Result<u64, StoreError> {
        Ok(both!(self.store, pool => sqlx::query(
            "UPDATE bridge_triggers SET status = 'cancelled' WHERE agent_id = $1 AND channel_id = $2 AND status = 'pending'"
        )
        .bind(agent)
        .bind(channel)
        .execute(pool)
        .await?
        .rows_affected()))
    }

    /// Deletes finished trigger rows older than `cutoff`.
    pub async fn prune(&self, cutoff: Ts) -> Result<u64, StoreError> {
        Ok(both!(self.store, pool => sqlx::query(
            "DELETE FROM bridge_triggers WHERE status IN ('evaluated', 'taken', 'cancelled') AND created_at < $1",
        )
        .bind(cutoff)
        .execute(pool)
        .await?
        .rows_affected()))
    }
}
