//! Reads of channels, members and messages: the agent API's pages and access checks, and the
//! facts the trigger rules look up (who sent a message, who is in a thread, how many people a
//! room has).

use ruma::{OwnedRoomId, RoomId};
use serde::Serialize;

use crate::model::ids::{AgentId, ChannelId, MessageId, UserRowId};
use crate::{
    db::{
        Store, StoreError, both,
        decode::{BadRow, RawRow, decode_one, parse_ids},
        parts::PartRow,
    },
    model::{SenderType, Ts, Visibility},
};

/// A channel's room and whether an agent is an active member of it, as read (the room id
/// still text; see [`crate::db::decode`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RawAccess {
    /// `channels.id`.
    pub id: ChannelId,
    /// `channels.matrix_room_id`.
    pub matrix_room_id: String,
    /// Whether the agent is an active member.
    pub member: bool,
}

impl RawRow for RawAccess {
    type Row = (OwnedRoomId, bool);
    const TABLE: &'static str = "channels";

    fn key(&self) -> String {
        self.id.to_string()
    }

    fn decode(self) -> Result<Self::Row, BadRow<Self>> {
        let (r, room) = parse_ids(self, |r| RoomId::parse(&r.matrix_room_id))?;
        Ok((room, r.member))
    }
}

/// A channel where an agent is an active member.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AgentChannel {
    /// The channel.
    pub id: ChannelId,
    /// Its room.
    pub matrix_room_id: String,
    /// Its name.
    pub name: String,
    /// Its slug.
    pub slug: String,
    /// Its topic.
    pub topic: Option<String>,
    /// Its visibility.
    pub visibility: Visibility,
    /// The external id of its microDAO.
    pub microdao: String,
    /// When the agent joined.
    pub joined_at: Ts,
    /// The agent's open session there, if any.
    pub session_status: Option<String>,
}

/// A message as the agent API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct MessageRow {
    /// The row.
    pub id: MessageId,
    /// The Matrix event.
    pub event_id: String,
    /// The sender's Matrix id.
    pub sender: Option<String>,
    /// human | agent | system.
    pub sender_type: SenderType,
    /// The preview.
    pub content_preview: String,
    /// When it was sent.
    pub created_at: Ts,
    /// When it was last edited.
    pub edited_at: Option<Ts>,
    /// Whether it was redacted.
    pub redacted: bool,
    /// What it carries besides its text (`message_parts`), in order; empty for plain text.
    #[sqlx(skip)]
    pub parts: Vec<PartRow>,
}

/// The store's view of reads of channels, members and messages (the agent API's pages and access
/// checks). A component given this handle, not the whole store, can touch nothing else.
#[derive(Clone, Debug)]
pub struct ChannelStore {
    store: Store,
}

impl Store {
    /// The queries of reads of channels, members and messages (the agent API's pages and access
    /// checks).
    pub fn channels(&self) -> ChannelStore {
        ChannelStore {
            store: self.clone(),
        }
    }
}

/// A `microdao` channel is read only by members of its microDAO (`microdao_members`, which
/// joining such a channel does not grant); `c` is the channel, `user` the person's parameter.
fn members_only(user: &str) -> String {
    format!(
        "(c.visibility <> 'microdao' OR EXISTS (SELECT 1 FROM microdao_members mm \
         WHERE mm.microdao_id = c.microdao_id AND mm.user_id = {user}))"
    )
}

impl ChannelStore {
    /// Marks `event` (a `forget` command) as where the channel's agents' memory starts: the
    /// newest mark wins.
    pub async fn set_forget_mark(
        &self,
        channel: ChannelId,
        event: &ruma::EventId,
    ) -> Result<(), StoreError> {
        both!(self.store, pool => sqlx::query(
            "INSERT INTO bridge_forget_marks (channel_id, event_id, marked_at) VALUES ($1, $2, $3) \
             ON CONFLICT (channel_id) DO UPDATE SET event_id = excluded.event_id, marked_at = excluded.marked_at",
        )
        .bind(channel)
        .bind(event.as_str())
        .bind(Ts::now())
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// The event the channel's agents forget everything up to, if someone asked them to. A
    /// stored id that is no event id counts as no mark.
    pub async fn forget_mark(
        &self,
        channel: ChannelId,
    ) -> Result<Option<ruma::OwnedEventId>, StoreError> {
        let id: Option<String> = both!(self.store, pool => sqlx::query_scalar(
            "SELECT event_id FROM bridge_forget_marks WHERE channel_id = $1",
        )
        .bind(channel)
        .fetch_optional(pool)
        .await?);
        Ok(id.and_then(|id| ruma::OwnedEventId::try_from(id).ok()))
    }

    /// Channels where the agent is an active member, with its session status there.
    pub async fn agent_channels(&self, agent: AgentId) -> Result<Vec<AgentChannel>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(
            "SELECT c.id, c.matrix_room_id, c.name, c.slug, c.topic, c.visibility, m.external_id AS microdao, \
             cm.joined_at, (SELECT s.status FROM agent_sessions s WHERE s.agent_id = cm.member_agent_id \
             AND s.channel_id = c.id AND s.status <> 'closed') AS session_status \
             FROM channel_members cm JOIN channels c ON c.id = cm.channel_id JOIN microdaos m ON m.id = c.microdao_id \
             WHERE cm.member_agent_id = $1 AND cm.left_at IS NULL ORDER BY c.name",
        )
        .bind(agent)
        .fetch_all(pool)
        .await?))
    }

    /// Channels where the person is an active member (a user key's channels), as an agent's
    /// are listed (no session).
    pub async fn user_channels(&self, user: UserRowId) -> Result<Vec<AgentChannel>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(
            &format!("SELECT c.id, c.matrix_room_id, c.name, c.slug, c.topic, c.visibility, m.external_id AS microdao, \
             cm.joined_at, NULL AS session_status \
             FROM channel_members cm JOIN channels c ON c.id = cm.channel_id JOIN microdaos m ON m.id = c.microdao_id \
             WHERE cm.member_user_id = $1 AND cm.left_at IS NULL AND {} ORDER BY c.name", members_only("$1")),
        )
        .bind(user)
        .fetch_all(pool)
        .await?))
    }

    /// Whether the person is an active member of the channel; `None` if no such channel.
    pub async fn user_access(
        &self,
        channel: ChannelId,
        user: UserRowId,
    ) -> Result<Option<bool>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_scalar(
            &format!("SELECT EXISTS (SELECT 1 FROM channel_members cm WHERE cm.channel_id = c.id \
             AND cm.member_user_id = $2 AND cm.left_at IS NULL) AND {} FROM channels c WHERE c.id = $1", members_only("$2")),
        )
        .bind(channel)
        .bind(user)
        .fetch_optional(pool)
        .await?))
    }

    /// The channel's room and whether `agent` is an active member; `None` if no such channel
    /// (or its room id is invalid).
    pub async fn access(
        &self,
        channel: ChannelId,
        agent: AgentId,
    ) -> Result<Option<(OwnedRoomId, bool)>, StoreError> {
        let raw: Option<RawAccess> = both!(self.store, pool => sqlx::query_as(
            "SELECT c.id, c.matrix_room_id, EXISTS (SELECT 1 FROM channel_members cm WHERE cm.channel_id = c.id \
             AND cm.member_agent_id = $2 AND cm.left_at IS NULL) AS member FROM channels c WHERE c.id = $1 \
             AND c.matrix_room_id IS NOT NULL",
        )
        .bind(channel)
        .bind(agent)
        .fetch_optional(pool)
        .await?);
        Ok(decode_one(raw))
    }

    /// Whether the agent is an active member of the room's channel.
    pub async fn agent_in_room(&self, room_id: &str, agent: AgentId) -> Result<bool, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM channel_members cm JOIN channels c ON c.id = cm.channel_id \
             WHERE c.matrix_room_id = $1 AND cm.member_agent_id = $2 AND cm.left_at IS NULL)",
        )
        .bind(room_id)
        .bind(agent)
        .fetch_one(pool)
        .await?))
    }

    /// Agents that are active members of the channel.
    pub async fn agents(&self, channel: ChannelId) -> Result<Vec<AgentId>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_scalar(
            "SELECT member_agent_id FROM channel_members WHERE channel_id = $1 \
             AND member_agent_id IS NOT NULL AND left_at IS NULL",
        )
        .bind(channel)
        .fetch_all(pool)
        .await?))
    }

    /// Who sent `event_id` (agent or person), if it is mirrored.
    pub async fn message_sender(&self, event_id: &str) -> Result<Option<String>, StoreError> {
        Ok(
            both!(self.store, pool => sqlx::query_scalar::<_, Option<String>>(
            "SELECT COALESCE(a.matrix_id, u.matrix_id) FROM messages m \
             LEFT JOIN agents a ON a.id = m.sender_agent_id LEFT JOIN users u ON u.id = m.sender_user_id \
             WHERE m.matrix_event_id = $1",
        )
        .bind(event_id)
        .fetch_optional(pool)
        .await?
        .flatten()),
        )
    }

    /// Whether the agent started the thread or posted in it.
    pub async fn agent_in_thread(&self, root: &str, agent: AgentId) -> Result<bool, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM messages WHERE sender_agent_id = $2 \
             AND (matrix_event_id = $1 OR thread_root_event_id = $1))",
        )
        .bind(root)
        .bind(agent)
        .fetch_one(pool)
        .await?))
    }

    /// People who are active members of the channel.
    pub async fn human_member_count(&self, channel: ChannelId) -> Result<i64, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM channel_members WHERE channel_id = $1 AND member_user_id IS NOT NULL \
             AND left_at IS NULL",
        )
        .bind(channel)
        .fetch_one(pool)
        .await?))
    }

    /// A page of a channel's messages, newest first, strictly before the cursor, with their
    /// parts (one more query for the whole page).
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
        let mut page: Vec<MessageRow> = both!(self.store, pool => sqlx::query_as(
            "SELECT m.id, m.matrix_event_id AS event_id, COALESCE(u.matrix_id, a.matrix_id) AS sender, \
             m.sender_type, m.content_preview, m.created_at, m.edited_at, m.redacted_at IS NOT NULL AS redacted \
             FROM messages m LEFT JOIN users u ON u.id = m.sender_user_id LEFT JOIN agents a ON a.id = m.sender_agent_id \
             WHERE m.channel_id = $1 AND ($2 IS NULL OR m.created_at < $2 OR (m.created_at = $2 AND m.id < $3)) \
             ORDER BY m.created_at DESC, m.id DESC LIMIT $4",
        )
        .bind(channel)
        .bind(ts)
        .bind(id)
        .bind(limit)
        .fetch_all(pool)
        .await?);
        self.store
            .parts()
            .attach(&mut page, |m| m.id, |m| &mut m.parts)
            .await?;
        Ok(page)
    }

    /// The agent that sent `event_id` in `channel`: `None` if no such message, `Some(None)` if
    /// a person sent it.
    pub async fn message_agent(
        &self,
        channel: ChannelId,
        event_id: &str,
    ) -> Result<Option<Option<AgentId>>, StoreError> {
        Ok(
            both!(self.store, pool => sqlx::query_scalar::<_, Option<AgentId>>(
            "SELECT sender_agent_id FROM messages WHERE channel_id = $1 AND matrix_event_id = $2",
        )
        .bind(channel)
        .bind(event_id)
        .fetch_optional(pool)
        .await?),
        )
    }
}
