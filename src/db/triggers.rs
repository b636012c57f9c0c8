//! `bridge_triggers`: messages that may address agents, written as candidates in the commit of
//! the transaction that mirrored them, evaluated by the run scheduler into per-agent triggers,
//! and taken by the run that answers them. Nothing between commit and answer lives only in
//! memory.

use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId};
use sqlx::types::Json;

use crate::model::ids::{AgentId, ChannelId, TriggerId};
use crate::{
    db::{
        CandidatePayload, Store, StoreError, both,
        decode::{BadRow, Decoded, RawRow, decode_all, decode_good, parse_ids},
    },
    model::{TriggerStatus, Ts},
};

/// A trigger or candidate row.
#[derive(Debug, Clone)]
pub struct TriggerRow {
    /// The row.
    pub id: TriggerId,
    /// The addressed agent (none for a candidate).
    pub agent_id: Option<AgentId>,
    /// The channel.
    pub channel_id: ChannelId,
    /// The room.
    pub room_id: OwnedRoomId,
    /// The message.
    pub event_id: OwnedEventId,
    /// Where it stands.
    pub status: TriggerStatus,
    /// What the rules read and the runtime receives.
    pub payload: Json<CandidatePayload>,
    /// `origin_server_ts` of the message.
    pub at: Ts,
    /// When the row was written.
    pub created_at: Ts,
}

/// A trigger row as stored, its ids still text (see [`crate::db::decode`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RawTriggerRow {
    /// The row.
    pub id: TriggerId,
    agent_id: Option<AgentId>,
    channel_id: ChannelId,
    room_id: String,
    event_id: String,
    status: TriggerStatus,
    payload: Json<CandidatePayload>,
    at: Ts,
    created_at: Ts,
}

impl RawRow for RawTriggerRow {
    type Row = TriggerRow;
    const TABLE: &'static str = "bridge_triggers";

    fn key(&self) -> String {
        self.id.to_string()
    }

    fn decode(self) -> Result<TriggerRow, BadRow<Self>> {
        let (r, (room_id, event_id)) = parse_ids(self, |r| {
            Ok((RoomId::parse(&r.room_id)?, EventId::parse(&r.event_id)?))
        })?;
        Ok(TriggerRow {
            id: r.id,
            agent_id: r.agent_id,
            channel_id: r.channel_id,
            room_id,
            event_id,
            status: r.status,
            payload: r.payload,
            at: r.at,
            created_at: r.created_at,
        })
    }
}

/// Pending triggers of one agent in one channel, merged into one run once the newest is older
/// than the debounce.
#[derive(Debug, Clone)]
pub struct TriggerGroup {
    /// The agent.
    pub agent_id: AgentId,
    /// The channel.
    pub channel_id: ChannelId,
    /// The room.
    pub room_id: OwnedRoomId,
    /// When the newest pending trigger was written.
    pub newest: Ts,
}

/// A [`TriggerGroup`] as read, its room id still text.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RawTriggerGroup {
    /// The agent.
    pub agent_id: AgentId,
    /// The channel.
    pub channel_id: ChannelId,
    room_id: String,
    newest: Ts,
}

impl RawRow for RawTriggerGroup {
    type Row = TriggerGroup;
    const TABLE: &'static str = "bridge_triggers";

    fn key(&self) -> String {
        format!("agent {} in channel {}", self.agent_id, self.channel_id)
    }

    fn decode(self) -> Result<TriggerGroup, BadRow<Self>> {
        let (r, room_id) = parse_ids(self, |r| RoomId::parse(&r.room_id))?;
        Ok(TriggerGroup {
            agent_id: r.agent_id,
            channel_id: r.channel_id,
            room_id,
            newest: r.newest,
        })
    }
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
    /// Candidates not evaluated yet, oldest first. Each is decoded on its own: a candidate
    /// with an invalid id comes back in [`Decoded::bad`], for the scheduler to cancel.
    pub async fn candidates(&self, limit: i64) -> Result<Decoded<RawTriggerRow>, StoreError> {
        let raws: Vec<RawTriggerRow> = both!(self.store, pool => sqlx::query_as(&format!(
            "{COLS} WHERE status = 'candidate' ORDER BY created_at, id LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(pool)
        .await?);
        Ok(decode_all(raws))
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

    /// (agent, channel) pairs with pending triggers, with the newest one's time. A group whose
    /// room id is invalid comes back in [`Decoded::bad`], for the scheduler to cancel.
    pub async fn groups(&self) -> Result<Decoded<RawTriggerGroup>, StoreError> {
        let raws: Vec<RawTriggerGroup> = both!(self.store, pool => sqlx::query_as(
            "SELECT agent_id, channel_id, room_id, MAX(created_at) AS newest FROM bridge_triggers \
             WHERE status = 'pending' AND agent_id IS NOT NULL GROUP BY agent_id, channel_id, room_id",
        )
        .fetch_all(pool)
        .await?);
        Ok(decode_all(raws))
    }

    /// The pending triggers of an agent in a channel, oldest first (one with an invalid id is
    /// left out: the run that takes it leaves it out too).
    pub async fn pending(
        &self,
        agent: AgentId,
        channel: ChannelId,
    ) -> Result<Vec<TriggerRow>, StoreError> {
        let raws: Vec<RawTriggerRow> = both!(self.store, pool => sqlx::query_as(&format!(
            "{COLS} WHERE agent_id = $1 AND channel_id = $2 AND status = 'pending' ORDER BY at, created_at"
        ))
        .bind(agent)
        .bind(channel)
        .fetch_all(pool)
        .await?);
        Ok(decode_good(raws))
    }

    /// Cancels one candidate (its row holds an invalid id) or pending trigger (refused by the
    /// agent→agent chain limit).
    pub async fn cancel(&self, id: TriggerId) -> Result<(), StoreError> {
        both!(self.store, pool => sqlx::query(
            "UPDATE bridge_triggers SET status = 'cancelled' WHERE id = $1 AND status IN ('candidate', 'pending')"
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
