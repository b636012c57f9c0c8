//! Keyset-paginated listings for the admin API: channels, members, sessions and runs, each
//! ordered by its (time-ordered) id so a page boundary never skips or repeats a row.

use serde::Serialize;

use crate::model::ids::{ChannelId, MemberId, RunId, SessionId};
use crate::{
    db::{Store, StoreError, both},
    model::Ts,
};

/// A channel as the admin API lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ChannelRow {
    /// `channels.id`.
    pub id: ChannelId,
    /// Its slug.
    pub slug: String,
    /// Its name.
    pub name: String,
    /// Its microDAO's external id.
    pub microdao: String,
    /// Its room.
    pub matrix_room_id: Option<String>,
    /// `public | private | microdao`.
    pub visibility: String,
    /// Its topic.
    pub topic: Option<String>,
    /// When it was created.
    pub created_at: Ts,
}

/// A member of a channel.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct MemberRow {
    /// `channel_members.id`.
    pub id: MemberId,
    /// A person's Matrix id.
    pub user: Option<String>,
    /// An agent's external id.
    pub agent: Option<String>,
    /// `owner | admin | member | agent | guest`.
    pub role: String,
    /// When they joined.
    pub joined_at: Ts,
    /// When they left.
    pub left_at: Option<Ts>,
}

/// A session as the admin API lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AdminSession {
    /// The session.
    pub id: SessionId,
    /// Its agent's external id.
    pub agent: String,
    /// Its channel.
    pub channel_id: ChannelId,
    /// `active | idle | closed`.
    pub status: String,
    /// When it opened.
    pub started_at: Ts,
    /// Last activity.
    pub last_activity_at: Ts,
    /// When it closed.
    pub closed_at: Option<Ts>,
}

/// The store's view of the admin API's paginated listings. A component given this handle, not the
/// whole store, can touch nothing else.
#[derive(Clone, Debug)]
pub struct ListingStore {
    store: Store,
}

impl Store {
    /// The queries of the admin API's paginated listings.
    pub fn listings(&self) -> ListingStore {
        ListingStore {
            store: self.clone(),
        }
    }
}

impl ListingStore {
    /// Channels after `after` (by id), of one microDAO when given, at most `limit`.
    pub async fn channels(
        &self,
        microdao: Option<&str>,
        after: Option<ChannelId>,
        limit: i64,
    ) -> Result<Vec<ChannelRow>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(
            "SELECT c.id, c.slug, c.name, m.external_id AS microdao, c.matrix_room_id, c.visibility, c.topic, \
             c.created_at FROM channels c JOIN microdaos m ON m.id = c.microdao_id \
             WHERE ($1 = '' OR m.external_id = $1) AND ($2 IS NULL OR c.id > $2) ORDER BY c.id LIMIT $3",
        )
        .bind(microdao.unwrap_or(""))
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?))
    }

    /// Members of a channel after `after` (by id), current ones only unless `all`.
    pub async fn members(
        &self,
        channel: ChannelId,
        all: bool,
        after: Option<MemberId>,
        limit: i64,
    ) -> Result<Vec<MemberRow>, StoreError> {
        let sql = "SELECT cm.id, u.matrix_id AS \"user\", a.external_id AS agent, cm.role, cm.joined_at, cm.left_at \
             FROM channel_members cm LEFT JOIN users u ON u.id = cm.member_user_id \
             LEFT JOIN agents a ON a.id = cm.member_agent_id \
             WHERE cm.channel_id = $1 AND ($2 OR cm.left_at IS NULL) AND ($3 IS NULL OR cm.id > $3) \
             ORDER BY cm.id LIMIT $4";
        Ok(both!(self.store, pool => sqlx::query_as(sql)
            .bind(channel)
            .bind(all)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?))
    }

    /// Sessions after `after` (by id), filtered by agent, channel and status.
    pub async fn sessions(
        &self,
        agent: Option<&str>,
        channel: Option<ChannelId>,
        status: Option<&str>,
        after: Option<SessionId>,
        limit: i64,
    ) -> Result<Vec<AdminSession>, StoreError> {
        let sql = "SELECT s.id, a.external_id AS agent, s.channel_id, s.status, s.started_at, s.last_activity_at, \
             s.closed_at FROM agent_sessions s JOIN agents a ON a.id = s.agent_id \
             WHERE ($1 = '' OR a.external_id = $1) AND ($2 IS NULL OR s.channel_id = $2) \
             AND ($3 = '' OR s.status = $3) AND ($4 IS NULL OR s.id > $4) ORDER BY s.id LIMIT $5";
        Ok(both!(self.store, pool => sqlx::query_as(sql)
            .bind(agent.unwrap_or(""))
            .bind(channel)
            .bind(status.unwrap_or(""))
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?))
    }

    /// Runs after `after` (by id, which is time-ordered), filtered by agent, channel and status.
    pub async fn runs(
        &self,
        agent: Option<&str>,
        channel: Option<ChannelId>,
        status: Option<&str>,
        after: Option<RunId>,
        limit: i64,
    ) -> Result<Vec<super::runs::RunRow>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(&format!(
            "{} WHERE ($1 = '' OR a.external_id = $1) AND ($2 IS NULL OR r.channel_id = $2) \
             AND ($3 = '' OR r.status = $3) AND ($4 IS NULL OR r.id > $4) ORDER BY r.id LIMIT $5",
            super::runs::RUN_COLS
        ))
        .bind(agent.unwrap_or(""))
        .bind(channel)
        .bind(status.unwrap_or(""))
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?))
    }
}
