//! Reads of mirrored rooms, senders and microDAOs that the mirror's caches start from.

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use sqlx::types::Json;

use crate::model::ids::{AgentId, ChannelId, MicrodaoId, UserRowId};
use crate::{
    db::{
        PowerLevels, Store, StoreError, both,
        decode::{BadRow, RawRow, decode_good, decode_one, parse_ids},
    },
    model::{NameSource, Visibility},
};

/// A mirrored room as stored: its channel row plus the bridge's bookkeeping. Its room id comes
/// beside it, parsed (see [`RawStoredRoom`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredRoom {
    /// `channels.id`.
    pub channel_id: ChannelId,
    /// `channels.microdao_id`.
    pub microdao_id: MicrodaoId,
    /// `channels.name`.
    pub name: String,
    /// `channels.topic`.
    pub topic: Option<String>,
    /// `channels.visibility`.
    pub visibility: Visibility,
    /// `bridge_rooms.name_source` (none: the platform created the channel).
    pub name_source: Option<NameSource>,
    /// `bridge_rooms.visibility_pinned`.
    pub visibility_pinned: Option<bool>,
    /// `bridge_rooms.power_levels`.
    pub power_levels: Option<Json<PowerLevels>>,
    /// `bridge_rooms.is_direct`.
    pub is_direct: Option<bool>,
    /// `bridge_rooms.canonical_alias`.
    pub canonical_alias: Option<String>,
}

/// A mirrored room as read: `channels.matrix_room_id` still text (see [`crate::db::decode`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RawStoredRoom {
    /// `channels.matrix_room_id`.
    pub room_id: String,
    /// The rest of the row.
    #[sqlx(flatten)]
    pub room: StoredRoom,
}

impl RawRow for RawStoredRoom {
    type Row = (OwnedRoomId, StoredRoom);
    const TABLE: &'static str = "channels";

    fn key(&self) -> String {
        self.room.channel_id.to_string()
    }

    fn decode(self) -> Result<Self::Row, BadRow<Self>> {
        let (r, room_id) = parse_ids(self, |r| RoomId::parse(&r.room_id))?;
        Ok((room_id, r.room))
    }
}

/// A `users` row as read: its Matrix id still text.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RawKnownUser {
    /// `users.matrix_id`.
    pub matrix_id: String,
    /// `users.id`.
    pub id: UserRowId,
}

impl RawRow for RawKnownUser {
    type Row = (OwnedUserId, UserRowId);
    const TABLE: &'static str = "users";

    fn key(&self) -> String {
        self.id.to_string()
    }

    fn decode(self) -> Result<Self::Row, BadRow<Self>> {
        let (r, user) = parse_ids(self, |r| UserId::parse(&r.matrix_id))?;
        Ok((user, r.id))
    }
}

/// A channel's room id as stored (see [`crate::db::decode`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChannelRoom {
    /// `channels.id`.
    pub id: ChannelId,
    /// `channels.matrix_room_id`.
    pub matrix_room_id: String,
}

impl RawRow for ChannelRoom {
    type Row = OwnedRoomId;
    const TABLE: &'static str = "channels";

    fn key(&self) -> String {
        self.id.to_string()
    }

    fn decode(self) -> Result<OwnedRoomId, BadRow<Self>> {
        parse_ids(self, |r| RoomId::parse(&r.matrix_room_id)).map(|(_, room)| room)
    }
}

const ROOM_COLS: &str = "SELECT c.id AS channel_id, c.matrix_room_id AS room_id, c.microdao_id, c.name, c.topic, \
     c.visibility, br.name_source, br.visibility_pinned, br.power_levels, br.is_direct, br.canonical_alias \
     FROM channels c LEFT JOIN bridge_rooms br ON br.channel_id = c.id WHERE ";

/// The same columns for a room that was replaced (a room upgrade): its channel, under the old
/// room's id, so events still arriving for the old room are mirrored into the channel.
const ALIAS_COLS: &str = "SELECT c.id AS channel_id, a.room_id AS room_id, c.microdao_id, c.name, c.topic, \
     c.visibility, br.name_source, br.visibility_pinned, br.power_levels, br.is_direct, br.canonical_alias \
     FROM bridge_room_aliases a JOIN channels c ON c.id = a.channel_id \
     LEFT JOIN bridge_rooms br ON br.channel_id = c.id WHERE ";

/// The store's view of reads of mirrored rooms, senders and microDAOs that the mirror's caches
/// start from. A component given this handle, not the whole store, can touch nothing else.
#[derive(Clone, Debug)]
pub struct RoomStore {
    store: Store,
}

impl Store {
    /// The queries of reads of mirrored rooms, senders and microDAOs that the mirror's caches start
    /// from.
    pub fn rooms(&self) -> RoomStore {
        RoomStore {
            store: self.clone(),
        }
    }
}

impl RoomStore {
    /// The mirrored rooms among `room_ids`, with the agents that are active members of each
    /// (a room whose stored id is invalid is left out).
    pub async fn load(
        &self,
        room_ids: &[&str],
    ) -> Result<Vec<(OwnedRoomId, StoredRoom, Vec<AgentId>)>, StoreError> {
        if room_ids.is_empty() {
            return Ok(Vec::new());
        }
        let raws: Vec<RawStoredRoom> = match &self.store.pool {
            super::Pool::Pg(pool) => sqlx::query_as(&format!(
                "{ROOM_COLS} c.matrix_room_id = ANY($1) UNION ALL {ALIAS_COLS} a.room_id = ANY($1)"
            ))
            .bind(room_ids)
            .fetch_all(pool)
            .await?,
            super::Pool::Sqlite(pool) => {
                sqlx::query_as(&format!(
                    "{ROOM_COLS} c.matrix_room_id IN (SELECT value FROM json_each($1)) \
                     UNION ALL {ALIAS_COLS} a.room_id IN (SELECT value FROM json_each($1))"
                ))
                .bind(json_list(room_ids))
                .fetch_all(pool)
                .await?
            }
        };
        let rooms = decode_good(raws);
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<ChannelId> = rooms.iter().map(|(_, r)| r.channel_id).collect();
        const AGENTS: &str = "SELECT channel_id, member_agent_id FROM channel_members \
             WHERE member_agent_id IS NOT NULL AND left_at IS NULL AND ";
        let agents: Vec<(ChannelId, AgentId)> = match &self.store.pool {
            super::Pool::Pg(pool) => {
                sqlx::query_as(&format!("{AGENTS} channel_id = ANY($1)"))
                    .bind(&ids)
                    .fetch_all(pool)
                    .await?
            }
            super::Pool::Sqlite(pool) => {
                let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
                sqlx::query_as(&format!(
                    "{AGENTS} channel_id IN (SELECT value FROM json_each($1))"
                ))
                .bind(json_list(&list))
                .fetch_all(pool)
                .await?
            }
        };
        Ok(rooms
            .into_iter()
            .map(|(room_id, room)| {
                let members = agents
                    .iter()
                    .filter(|(c, _)| *c == room.channel_id)
                    .map(|(_, a)| *a)
                    .collect();
                (room_id, room, members)
            })
            .collect())
    }

    /// The `users` rows of those of `matrix_ids` that have one.
    pub async fn known_users(
        &self,
        matrix_ids: &[&str],
    ) -> Result<Vec<(OwnedUserId, UserRowId)>, StoreError> {
        if matrix_ids.is_empty() {
            return Ok(Vec::new());
        }
        let raws: Vec<RawKnownUser> = match &self.store.pool {
            super::Pool::Pg(pool) => {
                sqlx::query_as("SELECT matrix_id, id FROM users WHERE matrix_id = ANY($1)")
                    .bind(matrix_ids)
                    .fetch_all(pool)
                    .await?
            }
            super::Pool::Sqlite(pool) => {
                sqlx::query_as(
                    "SELECT matrix_id, id FROM users WHERE matrix_id IN (SELECT value FROM json_each($1))",
                )
                .bind(json_list(matrix_ids))
                .fetch_all(pool)
                .await?
            }
        };
        Ok(decode_good(raws))
    }

    /// `microdaos.id` for an external id such as `microdao:7`.
    pub async fn microdao_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<MicrodaoId>, StoreError> {
        Ok(
            both!(self.store, pool => sqlx::query_scalar("SELECT id FROM microdaos WHERE external_id = $1")
            .bind(external_id)
            .fetch_optional(pool)
            .await?),
        )
    }

    /// Slugs of the microDAO equal to `base` or starting with `base-` (to pick a free one).
    pub async fn taken_slugs(
        &self,
        microdao: MicrodaoId,
        base: &str,
    ) -> Result<Vec<String>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_scalar(
            "SELECT slug FROM channels WHERE microdao_id = $1 AND (slug = $2 OR slug LIKE $3)",
        )
        .bind(microdao)
        .bind(base)
        .bind(format!("{base}-%"))
        .fetch_all(pool)
        .await?))
    }

    /// The channel of a Matrix room: the channel whose room it is, or was before a room
    /// upgrade replaced it (`bridge_room_aliases`).
    pub async fn channel_for_room(&self, room_id: &str) -> Result<Option<ChannelId>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_scalar(
            "SELECT id FROM channels WHERE matrix_room_id = $1 \
             UNION ALL SELECT channel_id FROM bridge_room_aliases WHERE room_id = $1 LIMIT 1",
        )
        .bind(room_id)
        .fetch_optional(pool)
        .await?))
    }

    /// A channel's Matrix room id (none when the channel has none, or an invalid one).
    pub async fn room_of_channel(
        &self,
        channel: ChannelId,
    ) -> Result<Option<OwnedRoomId>, StoreError> {
        let raw: Option<ChannelRoom> = both!(self.store, pool => sqlx::query_as(
            "SELECT id, matrix_room_id FROM channels WHERE id = $1 AND matrix_room_id IS NOT NULL",
        )
        .bind(channel)
        .fetch_optional(pool)
        .await?);
        Ok(decode_one(raw))
    }
}

/// A JSON array of strings, for SQLite's `json_each` (it has no array parameters).
pub(crate) fn json_list<S: AsRef<str>>(items: &[S]) -> String {
    let items: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    serde_json::to_string(&items).unwrap_or_else(|_| "[]".into())
}
