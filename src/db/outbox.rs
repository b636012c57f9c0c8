//! `agent_outbox`: the durable, per-room ordered queue of everything puppets send.

use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId};
use sqlx::types::Json;

use crate::model::ids::{AgentId, OutboxId};
use crate::{
    db::{
        Store, StoreError, both,
        decode::{BadRow, Decoded, RawRow, decode_all, decode_one, parse_ids},
    },
    model::{OutboxKind, OutboxStatus, Ts},
};

/// One queued puppet send.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    /// Its id.
    pub id: OutboxId,
    /// The sending agent.
    pub agent_id: AgentId,
    /// The target room.
    pub room_id: OwnedRoomId,
    /// Matrix event type.
    pub event_type: String,
    /// Event content as sent (for redactions: `{"reason": …}`).
    pub content: Json<serde_json::Value>,
    /// The redacted event, for redactions.
    pub redacts: Option<OwnedEventId>,
    /// Client transaction id, reused on every retry.
    pub txn_id: String,
    /// Where it stands.
    pub status: OutboxStatus,
    /// Attempts so far.
    pub attempts: i32,
    /// The event the homeserver created.
    pub event_id: Option<OwnedEventId>,
    /// The last error.
    pub error: Option<String>,
    /// Idempotency key of the request that queued it (`run:{id}` for a run's answer).
    pub idempotency_key: Option<String>,
    /// Hash of the request that queued it.
    pub request_hash: Option<String>,
    /// Not retried before this time.
    pub not_before: Option<Ts>,
}

/// An outbox row as stored, its ids still text (see [`crate::db::decode`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RawOutboxItem {
    /// Its id.
    pub id: OutboxId,
    agent_id: AgentId,
    room_id: String,
    event_type: String,
    content: Json<serde_json::Value>,
    redacts: Option<String>,
    txn_id: String,
    status: OutboxStatus,
    attempts: i32,
    event_id: Option<String>,
    error: Option<String>,
    idempotency_key: Option<String>,
    request_hash: Option<String>,
    not_before: Option<Ts>,
}

impl RawRow for RawOutboxItem {
    type Row = OutboxItem;
    const TABLE: &'static str = "agent_outbox";

    fn key(&self) -> String {
        self.id.to_string()
    }

    fn decode(self) -> Result<OutboxItem, BadRow<Self>> {
        let (r, (room_id, redacts, event_id)) = parse_ids(self, |r| {
            Ok((
                RoomId::parse(&r.room_id)?,
                r.redacts.as_deref().map(EventId::parse).transpose()?,
                r.event_id.as_deref().map(EventId::parse).transpose()?,
            ))
        })?;
        Ok(OutboxItem {
            id: r.id,
            agent_id: r.agent_id,
            room_id,
            event_type: r.event_type,
            content: r.content,
            redacts,
            txn_id: r.txn_id,
            status: r.status,
            attempts: r.attempts,
            event_id,
            error: r.error,
            idempotency_key: r.idempotency_key,
            request_hash: r.request_hash,
            not_before: r.not_before,
        })
    }
}

/// What to queue.
#[derive(Debug, Clone)]
pub struct NewOutbox {
    /// The sending agent.
    pub agent_id: AgentId,
    /// The target room.
    pub room_id: OwnedRoomId,
    /// Message or redaction.
    pub kind: OutboxKind,
    /// Matrix event type.
    pub event_type: String,
    /// Event content.
    pub content: serde_json::Value,
    /// The redacted event, for redactions.
    pub redacts: Option<OwnedEventId>,
    /// Client transaction id.
    pub txn_id: String,
    /// Idempotency key of the request, if any.
    pub idempotency_key: Option<String>,
    /// Hash of the request, bound to the idempotency key.
    pub request_hash: String,
}

/// What queuing did.
#[derive(Debug, Clone)]
pub enum Enqueued {
    /// A new item.
    New(OutboxItem),
    /// The idempotency key (or the same content) was queued before: that item.
    Existing(OutboxItem),
    /// The idempotency key was used before for a different request.
    KeyReused(OutboxItem),
}

const COLS: &str = "SELECT id, agent_id, room_id, event_type, content, redacts, txn_id, status, attempts, \
     event_id, error, idempotency_key, request_hash, not_before FROM agent_outbox";

/// The store's view of the durable per-room queue of what puppets send (`agent_outbox`). A
/// component given this handle, not the whole store, can touch nothing else.
#[derive(Clone, Debug)]
pub struct OutboxStore {
    store: Store,
}

impl Store {
    /// The queries of the durable per-room queue of what puppets send (`agent_outbox`).
    pub fn outbox(&self) -> OutboxStore {
        OutboxStore {
            store: self.clone(),
        }
    }
}

impl OutboxStore {
    /// Queues a send. An idempotency key already used by this agent returns the earlier item
    /// when the request is the same, and [`Enqueued::KeyReused`] when it is not.
    pub async fn enqueue(&self, item: &NewOutbox) -> Result<Enqueued, StoreError> {
        let id = OutboxId::new();
        let inserted = both!(self.store, pool => sqlx::query(
            "INSERT INTO agent_outbox (id, agent_id, room_id, kind, event_type, content, redacts, txn_id, \
             idempotency_key, status, created_at, request_hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, $11) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(item.agent_id)
        .bind(item.room_id.as_str())
        .bind(item.kind)
        .bind(&item.event_type)
        .bind(Json(&item.content))
        .bind(item.redacts.as_ref().map(|r| r.as_str()))
        .bind(&item.txn_id)
        .bind(&item.idempotency_key)
        .bind(Ts::now())
        .bind(&item.request_hash)
        .execute(pool)
        .await?
        .rows_affected());
        if inserted == 1 {
            let new = self.get(id).await?.ok_or(StoreError::NotFound {
                what: "outbox item",
                key: id.to_string(),
            })?;
            return Ok(Enqueued::New(new));
        }
        // Conflict: the same idempotency key, or the same content queued twice (same txn id).
        let existing: Option<RawOutboxItem> = both!(self.store, pool => sqlx::query_as(&format!(
            "{COLS} WHERE (agent_id = $1 AND idempotency_key = $2) OR txn_id = $3"
        ))
        .bind(item.agent_id)
        .bind(&item.idempotency_key)
        .bind(&item.txn_id)
        .fetch_optional(pool)
        .await?);
        let existing = decode_one(existing).ok_or(StoreError::NotFound {
            what: "outbox item",
            key: item.txn_id.clone(),
        })?;
        Ok(match &existing.request_hash {
            Some(hash) if item.idempotency_key.is_some() && hash != &item.request_hash => {
                Enqueued::KeyReused(existing)
            }
            _ => Enqueued::Existing(existing),
        })
    }

    /// One item (none when its row holds an invalid id: it cannot be sent, and is failed by
    /// the delivery worker).
    pub async fn get(&self, id: OutboxId) -> Result<Option<OutboxItem>, StoreError> {
        let raw: Option<RawOutboxItem> = both!(self.store, pool => sqlx::query_as(&format!("{COLS} WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?);
        Ok(decode_one(raw))
    }

    /// The agent's item queued under an idempotency key, if any.
    pub async fn by_key(
        &self,
        agent: AgentId,
        key: &str,
    ) -> Result<Option<OutboxItem>, StoreError> {
        let raw: Option<RawOutboxItem> = both!(self.store, pool => sqlx::query_as(&format!(
            "{COLS} WHERE agent_id = $1 AND idempotency_key = $2"
        ))
        .bind(agent)
        .bind(key)
        .fetch_optional(pool)
        .await?);
        Ok(decode_one(raw))
    }

    /// The oldest pending item of every room with pending items (rooms are delivered in order:
    /// only a room's head may be sent), at most `limit` rooms. Each is decoded on its own: a
    /// head with an invalid id comes back in [`Decoded::bad`], for the worker to fail.
    pub async fn heads(&self, limit: i64) -> Result<Decoded<RawOutboxItem>, StoreError> {
        let raws: Vec<RawOutboxItem> = both!(self.store, pool => sqlx::query_as(&format!(
            "{COLS} o WHERE o.status = 'pending' AND NOT EXISTS (SELECT 1 FROM agent_outbox p \
             WHERE p.room_id = o.room_id AND p.status = 'pending' \
             AND (p.created_at < o.created_at OR (p.created_at = o.created_at AND p.id < o.id))) \
             ORDER BY o.created_at LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(pool)
        .await?);
        Ok(decode_all(raws))
    }

    /// Records a failed attempt that will be retried after `not_before`.
    pub async fn retry(&self, id: OutboxId, error: &str, not_before: Ts) -> Result<(), StoreError> {
        both!(self.store, pool => sqlx::query(
            "UPDATE agent_outbox SET attempts = attempts + 1, error = $2, not_before = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(error)
        .bind(not_before)
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// Records a send the homeserver refused for good.
    pub async fn fail(&self, id: OutboxId, error: &str) -> Result<(), StoreError> {
        both!(self.store, pool => sqlx::query(
            "UPDATE agent_outbox SET attempts = attempts + 1, error = $2, status = 'failed', failed_at = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(error)
        .bind(Ts::now())
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// Items waiting to be sent.
    pub async fn pending(&self) -> Result<i64, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM agent_outbox WHERE status = 'pending'"
        )
        .fetch_one(pool)
        .await?))
    }
}
