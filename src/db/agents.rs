//! Storage of the agent side: sessions (sweeper, listings), access keys and capabilities, the
//! puppet outbox, puppet state, and the reads behind the agent API.

use std::time::Duration;

use serde::Serialize;
use sqlx::{Row, types::Json};

use super::{Store, StoreError, both, types::Ts};
use crate::ids::{AccessKeyId, AgentId, ChannelId, MessageId, OutboxId, SessionId};

#[derive(Debug, Clone, Serialize)]
pub struct SessionRow {
    pub id: SessionId,
    pub channel_id: ChannelId,
    pub room_id: String,
    pub status: String,
    #[serde(with = "ts_rfc3339")]
    pub started_at: Ts,
    #[serde(with = "ts_rfc3339")]
    pub last_activity_at: Ts,
    #[serde(with = "ts_rfc3339_opt")]
    pub closed_at: Option<Ts>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentChannel {
    pub id: ChannelId,
    pub matrix_room_id: String,
    pub name: String,
    pub slug: String,
    pub topic: Option<String>,
    pub visibility: String,
    pub microdao: String,
    #[serde(with = "ts_rfc3339")]
    pub joined_at: Ts,
    pub session_status: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageRow {
    pub id: MessageId,
    pub event_id: String,
    pub sender: Option<String>,
    pub sender_type: String,
    pub content_preview: String,
    #[serde(with = "ts_rfc3339")]
    pub created_at: Ts,
    #[serde(with = "ts_rfc3339_opt")]
    pub edited_at: Option<Ts>,
    pub redacted: bool,
}

/// An authenticated access key.
#[derive(Debug, Clone)]
pub struct AuthKey {
    pub key_id: AccessKeyId,
    pub agent_id: AgentId,
    pub agent_matrix_id: String,
    pub agent_external_id: String,
    pub expires_at: Option<Ts>,
    pub revoked_at: Option<Ts>,
    pub last_used_at: Option<Ts>,
    pub capabilities: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyListing {
    pub id: AccessKeyId,
    pub agent: String,
    pub name: String,
    pub prefix: String,
    #[serde(with = "ts_rfc3339")]
    pub created_at: Ts,
    #[serde(with = "ts_rfc3339_opt")]
    pub expires_at: Option<Ts>,
    #[serde(with = "ts_rfc3339_opt")]
    pub revoked_at: Option<Ts>,
    #[serde(with = "ts_rfc3339_opt")]
    pub last_used_at: Option<Ts>,
    pub capabilities: Vec<String>,
}

/// One queued puppet send.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub id: OutboxId,
    pub agent_id: AgentId,
    pub agent_matrix_id: String,
    pub room_id: String,
    pub kind: String,
    pub event_type: String,
    pub content: serde_json::Value,
    pub redacts: Option<String>,
    pub txn_id: String,
    pub status: String,
    pub attempts: i32,
    pub event_id: Option<String>,
    pub error: Option<String>,
}

/// What to queue.
#[derive(Debug, Clone)]
pub struct NewOutbox {
    pub agent_id: AgentId,
    pub room_id: String,
    pub kind: &'static str,
    pub event_type: String,
    pub content: serde_json::Value,
    pub redacts: Option<String>,
    pub txn_id: String,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PuppetState {
    pub registered: bool,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    pub avatar_source: Option<String>,
}

const OUTBOX_COLS: &str = "o.id, o.agent_id, a.matrix_id, o.room_id, o.kind, o.event_type, o.content, o.redacts, \
     o.txn_id, o.status, o.attempts, o.event_id, o.error FROM agent_outbox o JOIN agents a ON a.id = o.agent_id";

macro_rules! outbox_row {
    ($r:expr) => {
        OutboxItem {
            id: $r.try_get(0)?,
            agent_id: $r.try_get(1)?,
            agent_matrix_id: $r.try_get(2)?,
            room_id: $r.try_get(3)?,
            kind: $r.try_get(4)?,
            event_type: $r.try_get(5)?,
            content: $r.try_get::<Json<serde_json::Value>, _>(6)?.0,
            redacts: $r.try_get(7)?,
            txn_id: $r.try_get(8)?,
            status: $r.try_get(9)?,
            attempts: $r.try_get(10)?,
            event_id: $r.try_get(11)?,
            error: $r.try_get(12)?,
        }
    };
}

impl Store {
    /// Marks active sessions idle after their quiet period. Touches only active sessions (a
    /// partial index), so the work does not grow with the number of closed sessions.
    pub async fn sweep_idle_sessions(
        &self,
        now: Ts,
        default_after: Duration,
        overrides: &[(String, Duration)],
    ) -> Result<u64, StoreError> {
        let mut changed = 0;
        for (agent, after) in overrides {
            let cutoff = Ts(now.0 - chrono::Duration::from_std(*after).unwrap_or_default());
            changed += both!(self, pool => sqlx::query(
                "UPDATE agent_sessions SET status = 'idle' WHERE status = 'active' AND last_activity_at < $1 \
                 AND agent_id = (SELECT id FROM agents WHERE matrix_id = $2)",
            )
            .bind(cutoff)
            .bind(agent)
            .execute(pool)
            .await?
            .rows_affected());
        }
        let cutoff = Ts(now.0 - chrono::Duration::from_std(default_after).unwrap_or_default());
        let placeholders: Vec<String> = (0..overrides.len())
            .map(|i| format!("${}", i + 2))
            .collect();
        let exclude = if overrides.is_empty() {
            String::new()
        } else {
            format!(
                " AND agent_id NOT IN (SELECT id FROM agents WHERE matrix_id IN ({}))",
                placeholders.join(", ")
            )
        };
        let sql = format!(
            "UPDATE agent_sessions SET status = 'idle' WHERE status = 'active' AND last_activity_at < $1{exclude}"
        );
        changed += both!(self, pool => {
            let mut q = sqlx::query(&sql).bind(cutoff);
            for (agent, _) in overrides {
                q = q.bind(agent);
            }
            q.execute(pool).await?.rows_affected()
        });
        Ok(changed)
    }

    /// Sessions by status, for the metric.
    pub async fn session_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(both!(self, pool => sqlx::query_as::<_, (String, i64)>(
            "SELECT status, COUNT(*) FROM agent_sessions GROUP BY status"
        )
        .fetch_all(pool)
        .await?))
    }

    pub async fn agent_sessions(
        &self,
        agent: AgentId,
        status: Option<&str>,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let rows = both!(self, pool => sqlx::query(
            "SELECT s.id, s.channel_id, c.matrix_room_id, s.status, s.started_at, s.last_activity_at, s.closed_at \
             FROM agent_sessions s JOIN channels c ON c.id = s.channel_id \
             WHERE s.agent_id = $1 AND ($2 = '' OR s.status = $2) ORDER BY s.started_at DESC LIMIT 500",
        )
        .bind(agent)
        .bind(status.unwrap_or(""))
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok::<_, sqlx::Error>(SessionRow {
            id: r.try_get(0)?,
            channel_id: r.try_get(1)?,
            room_id: r.try_get(2)?,
            status: r.try_get(3)?,
            started_at: r.try_get(4)?,
            last_activity_at: r.try_get(5)?,
            closed_at: r.try_get(6)?,
        }))
        .collect::<Result<Vec<_>, _>>()?);
        Ok(rows)
    }

    /// Channels where the agent is an active member, with its session status there.
    pub async fn agent_channels(&self, agent: AgentId) -> Result<Vec<AgentChannel>, StoreError> {
        let rows = both!(self, pool => sqlx::query(
            "SELECT c.id, c.matrix_room_id, c.name, c.slug, c.topic, c.visibility, m.external_id, cm.joined_at, \
             (SELECT s.status FROM agent_sessions s WHERE s.agent_id = cm.member_agent_id AND s.channel_id = c.id AND s.status <> 'closed') \
             FROM channel_members cm JOIN channels c ON c.id = cm.channel_id JOIN microdaos m ON m.id = c.microdao_id \
             WHERE cm.member_agent_id = $1 AND cm.left_at IS NULL ORDER BY c.name",
        )
        .bind(agent)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok::<_, sqlx::Error>(AgentChannel {
            id: r.try_get(0)?,
            matrix_room_id: r.try_get(1)?,
            name: r.try_get(2)?,
            slug: r.try_get(3)?,
            topic: r.try_get(4)?,
            visibility: r.try_get(5)?,
            microdao: r.try_get(6)?,
            joined_at: r.try_get(7)?,
            session_status: r.try_get(8)?,
        }))
        .collect::<Result<Vec<_>, _>>()?);
        Ok(rows)
    }

    /// The channel's room and whether `agent` is an active member; `None` if no such channel.
    pub async fn channel_access(
        &self,
        channel: ChannelId,
        agent: AgentId,
    ) -> Result<Option<(String, bool)>, StoreError> {
        Ok(both!(self, pool => sqlx::query_as::<_, (String, bool)>(
            "SELECT c.matrix_room_id, EXISTS (SELECT 1 FROM channel_members cm WHERE cm.channel_id = c.id \
             AND cm.member_agent_id = $2 AND cm.left_at IS NULL) FROM channels c WHERE c.id = $1",
        )
        .bind(channel)
        .bind(agent)
        .fetch_optional(pool)
        .await?))
    }

    /// Whether the agent is an active member of the room's channel.
    pub async fn agent_in_room(&self, room_id: &str, agent: AgentId) -> Result<bool, StoreError> {
        Ok(both!(self, pool => sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM channel_members cm JOIN channels c ON c.id = cm.channel_id \
             WHERE c.matrix_room_id = $1 AND cm.member_agent_id = $2 AND cm.left_at IS NULL)",
        )
        .bind(room_id)
        .bind(agent)
        .fetch_one(pool)
        .await?))
    }

    /// Who sent `event_id` (agent or person), if it is mirrored.
    pub async fn message_sender(&self, event_id: &str) -> Result<Option<String>, StoreError> {
        Ok(both!(self, pool => sqlx::query_scalar::<_, Option<String>>(
            "SELECT COALESCE(a.matrix_id, u.matrix_id) FROM messages m LEFT JOIN agents a ON a.id = m.sender_agent_id \
             LEFT JOIN users u ON u.id = m.sender_user_id WHERE m.matrix_event_id = $1",
        )
        .bind(event_id)
        .fetch_optional(pool)
        .await?
        .flatten()))
    }

    /// Whether the agent started the thread or posted in it.
    pub async fn agent_in_thread(&self, root: &str, agent: &str) -> Result<bool, StoreError> {
        Ok(both!(self, pool => sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM messages m JOIN agents a ON a.id = m.sender_agent_id \
             WHERE a.matrix_id = $2 AND (m.matrix_event_id = $1 OR m.thread_root_event_id = $1))",
        )
        .bind(root)
        .bind(agent)
        .fetch_one(pool)
        .await?))
    }

    /// People who are active members of the room's channel.
    pub async fn human_member_count(&self, room_id: &str) -> Result<i64, StoreError> {
        Ok(both!(self, pool => sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM channel_members cm JOIN channels c ON c.id = cm.channel_id \
             WHERE c.matrix_room_id = $1 AND cm.member_user_id IS NOT NULL AND cm.left_at IS NULL",
        )
        .bind(room_id)
        .fetch_one(pool)
        .await?))
    }

    /// A page of a channel's messages, newest first, strictly before the cursor.
    pub async fn messages_page(
        &self,
        channel: ChannelId,
        before: Option<(Ts, MessageId)>,
        limit: i64,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let (ts, id) = match before {
            Some((ts, id)) => (Some(ts), Some(id)),
            None => (None, None),
        };
        let rows = both!(self, pool => sqlx::query(
            "SELECT m.id, m.matrix_event_id, COALESCE(u.matrix_id, a.matrix_id), m.sender_type, m.content_preview, \
             m.created_at, m.edited_at, m.redacted_at IS NOT NULL \
             FROM messages m LEFT JOIN users u ON u.id = m.sender_user_id LEFT JOIN agents a ON a.id = m.sender_agent_id \
             WHERE m.channel_id = $1 AND ($2 IS NULL OR m.created_at < $2 OR (m.created_at = $2 AND m.id < $3)) \
             ORDER BY m.created_at DESC, m.id DESC LIMIT $4",
        )
        .bind(channel)
        .bind(ts)
        .bind(id)
        .bind(limit)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok::<_, sqlx::Error>(MessageRow {
            id: r.try_get(0)?,
            event_id: r.try_get(1)?,
            sender: r.try_get(2)?,
            sender_type: r.try_get(3)?,
            content_preview: r.try_get(4)?,
            created_at: r.try_get(5)?,
            edited_at: r.try_get(6)?,
            redacted: r.try_get(7)?,
        }))
        .collect::<Result<Vec<_>, _>>()?);
        Ok(rows)
    }

    /// The agent that sent `event_id` in `channel`, if an agent did.
    pub async fn message_agent(
        &self,
        channel: ChannelId,
        event_id: &str,
    ) -> Result<Option<Option<AgentId>>, StoreError> {
        Ok(
            both!(self, pool => sqlx::query_scalar::<_, Option<AgentId>>(
            "SELECT sender_agent_id FROM messages WHERE channel_id = $1 AND matrix_event_id = $2",
        )
        .bind(channel)
        .bind(event_id)
        .fetch_optional(pool)
        .await?),
        )
    }

    // --- access keys ---------------------------------------------------------------------

    /// Stores a new key (hash only) with the given capability codes.
    pub async fn insert_key(
        &self,
        agent_external_id: &str,
        name: &str,
        prefix: &str,
        hash: &str,
        caps: &[String],
        expires_at: Option<Ts>,
    ) -> Result<AccessKeyId, StoreError> {
        let agent: Option<AgentId> = both!(self, pool => sqlx::query_scalar("SELECT id FROM agents WHERE external_id = $1")
            .bind(agent_external_id)
            .fetch_optional(pool)
            .await?);
        let agent =
            agent.ok_or_else(|| StoreError::Seed(format!("no agent `{agent_external_id}`")))?;
        let known: Vec<String> = both!(self, pool => sqlx::query_scalar("SELECT code FROM capabilities").fetch_all(pool).await?);
        if let Some(unknown) = caps.iter().find(|c| !known.contains(c)) {
            return Err(StoreError::Seed(format!(
                "unknown capability `{unknown}` (known: {})",
                known.join(", ")
            )));
        }
        let id = AccessKeyId::new();
        let now = Ts::now();
        // The key and its capabilities commit together.
        both!(self, pool => {
                let mut tx = pool.begin().await?;
                sqlx::query("INSERT INTO access_keys (id, agent_id, name, key_prefix, key_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                    .bind(id).bind(agent).bind(name).bind(prefix).bind(hash).bind(now).bind(expires_at)
                    .execute(&mut *tx).await?;
                for cap in caps {
                    sqlx::query("INSERT INTO access_key_caps (key_id, cap_id) SELECT $1, id FROM capabilities WHERE code = $2 ON CONFLICT DO NOTHING")
                        .bind(id).bind(cap).execute(&mut *tx).await?;
                }
                tx.commit().await?;
        });
        Ok(id)
    }

    /// Capability codes of a bundle.
    pub async fn bundle_caps(&self, bundle: &str) -> Result<Vec<String>, StoreError> {
        Ok(both!(self, pool => sqlx::query_scalar(
            "SELECT c.code FROM bundle_caps bc JOIN bundles b ON b.id = bc.bundle_id JOIN capabilities c ON c.id = bc.cap_id WHERE b.code = $1 ORDER BY c.code",
        )
        .bind(bundle)
        .fetch_all(pool)
        .await?))
    }

    pub async fn key_by_hash(&self, hash: &str) -> Result<Option<AuthKey>, StoreError> {
        let row = both!(self, pool => sqlx::query(
            "SELECT k.id, k.agent_id, a.matrix_id, a.external_id, k.expires_at, k.revoked_at, k.last_used_at \
             FROM access_keys k JOIN agents a ON a.id = k.agent_id WHERE k.key_hash = $1",
        )
        .bind(hash)
        .fetch_optional(pool)
        .await?
        .map(|r| Ok::<_, sqlx::Error>(AuthKey {
            key_id: r.try_get(0)?,
            agent_id: r.try_get(1)?,
            agent_matrix_id: r.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
            agent_external_id: r.try_get(3)?,
            expires_at: r.try_get(4)?,
            revoked_at: r.try_get(5)?,
            last_used_at: r.try_get(6)?,
            capabilities: Vec::new(),
        }))
        .transpose()?);
        let Some(mut key) = row else { return Ok(None) };
        key.capabilities = both!(self, pool => sqlx::query_scalar(
            "SELECT c.code FROM access_key_caps kc JOIN capabilities c ON c.id = kc.cap_id WHERE kc.key_id = $1 ORDER BY c.code",
        )
        .bind(key.key_id)
        .fetch_all(pool)
        .await?);
        Ok(Some(key))
    }

    pub async fn touch_key(&self, key: AccessKeyId, now: Ts) -> Result<(), StoreError> {
        both!(self, pool => sqlx::query("UPDATE access_keys SET last_used_at = $1 WHERE id = $2")
            .bind(now)
            .bind(key)
            .execute(pool)
            .await
            .map(|_| ())?);
        Ok(())
    }

    pub async fn list_keys(
        &self,
        agent_external_id: Option<&str>,
    ) -> Result<Vec<KeyListing>, StoreError> {
        let mut keys = both!(self, pool => sqlx::query(
            "SELECT k.id, a.external_id, k.name, k.key_prefix, k.created_at, k.expires_at, k.revoked_at, k.last_used_at \
             FROM access_keys k JOIN agents a ON a.id = k.agent_id WHERE ($1 = '' OR a.external_id = $1) ORDER BY k.created_at",
        )
        .bind(agent_external_id.unwrap_or(""))
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok::<_, sqlx::Error>(KeyListing {
            id: r.try_get(0)?,
            agent: r.try_get(1)?,
            name: r.try_get(2)?,
            prefix: r.try_get(3)?,
            created_at: r.try_get(4)?,
            expires_at: r.try_get(5)?,
            revoked_at: r.try_get(6)?,
            last_used_at: r.try_get(7)?,
            capabilities: Vec::new(),
        }))
        .collect::<Result<Vec<_>, _>>()?);
        for key in &mut keys {
            key.capabilities = both!(self, pool => sqlx::query_scalar(
                "SELECT c.code FROM access_key_caps kc JOIN capabilities c ON c.id = kc.cap_id WHERE kc.key_id = $1 ORDER BY c.code",
            )
            .bind(key.id)
            .fetch_all(pool)
            .await?);
        }
        Ok(keys)
    }

    /// Revokes the key with this id or prefix; returns how many keys were revoked.
    pub async fn revoke_key(&self, id_or_prefix: &str) -> Result<u64, StoreError> {
        Ok(both!(self, pool => sqlx::query(
            "UPDATE access_keys SET revoked_at = $1 WHERE revoked_at IS NULL AND (CAST(id AS TEXT) = $2 OR key_prefix = $2)",
        )
        .bind(Ts::now())
        .bind(id_or_prefix)
        .execute(pool)
        .await?
        .rows_affected()))
    }

    // --- outbox --------------------------------------------------------------------------

    /// Queues a send. With an idempotency key already used by this agent, returns the existing
    /// item instead (`true` in the second field).
    pub async fn outbox_enqueue(&self, item: &NewOutbox) -> Result<(OutboxItem, bool), StoreError> {
        let id = OutboxId::new();
        let inserted = both!(self, pool => sqlx::query(
            "INSERT INTO agent_outbox (id, agent_id, room_id, kind, event_type, content, redacts, txn_id, idempotency_key, status, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(item.agent_id)
        .bind(&item.room_id)
        .bind(item.kind)
        .bind(&item.event_type)
        .bind(Json(&item.content))
        .bind(&item.redacts)
        .bind(&item.txn_id)
        .bind(&item.idempotency_key)
        .bind(Ts::now())
        .execute(pool)
        .await?
        .rows_affected());
        if inserted == 1 {
            return Ok((self.outbox_get(id).await?.expect("just inserted"), false));
        }
        // Conflict: the same idempotency key, or the same content queued twice (same txn id).
        let existing = both!(self, pool => sqlx::query(&format!(
            "SELECT {OUTBOX_COLS} WHERE (o.agent_id = $1 AND o.idempotency_key = $2) OR o.txn_id = $3"
        ))
        .bind(item.agent_id)
        .bind(&item.idempotency_key)
        .bind(&item.txn_id)
        .fetch_optional(pool)
        .await?
        .map(|r| Ok::<_, sqlx::Error>(outbox_row!(r)))
        .transpose()?);
        Ok((
            existing.ok_or_else(|| StoreError::Seed("outbox conflict without a row".into()))?,
            true,
        ))
    }

    pub async fn outbox_get(&self, id: OutboxId) -> Result<Option<OutboxItem>, StoreError> {
        Ok(
            both!(self, pool => sqlx::query(&format!("SELECT {OUTBOX_COLS} WHERE o.id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?
            .map(|r| Ok::<_, sqlx::Error>(outbox_row!(r)))
            .transpose()?),
        )
    }

    /// The oldest pending item of a room: rooms are delivered in order.
    pub async fn outbox_next(&self, room_id: &str) -> Result<Option<OutboxItem>, StoreError> {
        Ok(both!(self, pool => sqlx::query(&format!(
            "SELECT {OUTBOX_COLS} WHERE o.room_id = $1 AND o.status = 'pending' ORDER BY o.created_at, o.id LIMIT 1"
        ))
        .bind(room_id)
        .fetch_optional(pool)
        .await?
        .map(|r| Ok::<_, sqlx::Error>(outbox_row!(r)))
        .transpose()?))
    }

    pub async fn outbox_pending_rooms(&self) -> Result<Vec<String>, StoreError> {
        Ok(
            both!(self, pool => sqlx::query_scalar("SELECT DISTINCT room_id FROM agent_outbox WHERE status = 'pending'")
            .fetch_all(pool)
            .await?),
        )
    }

    pub async fn outbox_attempt(
        &self,
        id: OutboxId,
        error: Option<&str>,
        failed: bool,
    ) -> Result<(), StoreError> {
        both!(self, pool => sqlx::query(
            "UPDATE agent_outbox SET attempts = attempts + 1, error = $2, status = CASE WHEN $3 THEN 'failed' ELSE status END WHERE id = $1",
        )
        .bind(id)
        .bind(error)
        .bind(failed)
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    pub async fn outbox_sent(&self, id: OutboxId, event_id: &str) -> Result<(), StoreError> {
        both!(self, pool => sqlx::query(
            "UPDATE agent_outbox SET attempts = attempts + 1, status = 'sent', event_id = $2, error = NULL, sent_at = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(event_id)
        .bind(Ts::now())
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    // --- puppets -------------------------------------------------------------------------

    pub async fn puppet_state(&self, agent: AgentId) -> Result<PuppetState, StoreError> {
        Ok(both!(self, pool => sqlx::query(
            "SELECT registered, display_name, avatar_url, avatar_source FROM bridge_puppets WHERE agent_id = $1",
        )
        .bind(agent)
        .fetch_optional(pool)
        .await?
        .map(|r| Ok::<_, sqlx::Error>(PuppetState {
            registered: r.try_get(0)?,
            display_name: r.try_get(1)?,
            avatar_url: r.try_get(2)?,
            avatar_source: r.try_get(3)?,
        }))
        .transpose()?
        .unwrap_or_default()))
    }

    pub async fn set_puppet_state(
        &self,
        agent: AgentId,
        s: &PuppetState,
    ) -> Result<(), StoreError> {
        both!(self, pool => sqlx::query(
            "INSERT INTO bridge_puppets (agent_id, registered, display_name, avatar_url, avatar_source) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (agent_id) DO UPDATE SET registered = excluded.registered, display_name = excluded.display_name, \
             avatar_url = excluded.avatar_url, avatar_source = excluded.avatar_source",
        )
        .bind(agent)
        .bind(s.registered)
        .bind(&s.display_name)
        .bind(&s.avatar_url)
        .bind(&s.avatar_source)
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }
}

/// RFC 3339 (UTC, milliseconds) for API timestamps.
pub mod ts_rfc3339 {
    use serde::Serializer;

    use crate::db::types::Ts;

    pub fn serialize<S: Serializer>(ts: &Ts, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&ts.0.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }
}

pub mod ts_rfc3339_opt {
    use serde::Serializer;

    use crate::db::types::Ts;

    pub fn serialize<S: Serializer>(ts: &Option<Ts>, s: S) -> Result<S::Ok, S::Error> {
        match ts {
            Some(ts) => super::ts_rfc3339::serialize(ts, s),
            None => s.serialize_none(),
        }
    }
}
