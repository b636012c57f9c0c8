//! A channel's life beyond the mirror: rooms the admin API creates (`bridge_channel_creations`,
//! the creation key that makes creating idempotent and crash-safe), whether a channel is
//! archived (`bridge_channel_archives`), and moving a channel into another microDAO
//! (`!daarion adopt`), audited and published in the same commit.

use sqlx::FromRow;

use crate::{
    db::{Store, StoreError, audit::AppendAudit, audit::NewAudit, both, events::AppendEvents},
    model::{
        Ts, Visibility,
        ids::{ChannelId, MicrodaoId},
        topics::{ChannelMoved, Draft, PAYLOAD_VERSION, Topic, channel_partition},
    },
};

/// A channel as the lifecycle operations see it.
#[derive(Debug, Clone, FromRow)]
pub struct ChannelInfo {
    /// `channels.id`.
    pub id: ChannelId,
    /// `channels.matrix_room_id`.
    pub matrix_room_id: Option<String>,
    /// `channels.microdao_id`.
    pub microdao_id: MicrodaoId,
    /// `microdaos.external_id`.
    pub microdao: String,
    /// `channels.slug`.
    pub slug: String,
    /// `channels.name`.
    pub name: String,
    /// `channels.topic`.
    pub topic: Option<String>,
    /// `channels.visibility`.
    pub visibility: Visibility,
    /// `bridge_channel_archives.archived_at` (none: live).
    pub archived_at: Option<Ts>,
}

const INFO: &str = "SELECT c.id, c.matrix_room_id, c.microdao_id, m.external_id AS microdao, c.slug, c.name, \
     c.topic, c.visibility, a.archived_at FROM channels c JOIN microdaos m ON m.id = c.microdao_id \
     LEFT JOIN bridge_channel_archives a ON a.channel_id = c.id WHERE ";

/// A creation of a channel by the admin API, as recorded before the homeserver is asked.
#[derive(Debug, Clone, FromRow)]
pub struct Creation {
    /// The channel id chosen for it.
    pub channel_id: ChannelId,
    /// The room, once created.
    pub room_id: Option<String>,
    /// When it was (last) started.
    pub started_at: Ts,
    /// When it was answered.
    pub finished_at: Option<Ts>,
}

/// What moving a channel into a microDAO did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    /// Moved (audited, `chat.channel.moved` published).
    Moved,
    /// It already was there under that slug: nothing changed.
    Unchanged,
    /// Another channel of that microDAO has the slug.
    SlugTaken,
}

/// The store's view of channels' lives beyond the mirror.
#[derive(Clone, Debug)]
pub struct LifecycleStore {
    store: Store,
}

impl Store {
    /// The queries of channel creations, archives and moves.
    pub fn lifecycle(&self) -> LifecycleStore {
        LifecycleStore {
            store: self.clone(),
        }
    }
}

impl LifecycleStore {
    /// The channel `slug` of a microDAO.
    pub async fn by_slug(
        &self,
        microdao: MicrodaoId,
        slug: &str,
    ) -> Result<Option<ChannelInfo>, StoreError> {
        Ok(
            both!(self.store, pool => sqlx::query_as(&format!("{INFO} c.microdao_id = $1 AND c.slug = $2"))
            .bind(microdao)
            .bind(slug)
            .fetch_optional(pool)
            .await?),
        )
    }

    /// A channel by id.
    pub async fn by_id(&self, channel: ChannelId) -> Result<Option<ChannelInfo>, StoreError> {
        Ok(
            both!(self.store, pool => sqlx::query_as(&format!("{INFO} c.id = $1"))
            .bind(channel)
            .fetch_optional(pool)
            .await?),
        )
    }

    /// The creation of (`microdao`, `slug`), if the admin API started one.
    pub async fn creation(
        &self,
        microdao: MicrodaoId,
        slug: &str,
    ) -> Result<Option<Creation>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(
            "SELECT channel_id, room_id, started_at, finished_at FROM bridge_channel_creations \
             WHERE microdao_id = $1 AND slug = $2",
        )
        .bind(microdao)
        .bind(slug)
        .fetch_optional(pool)
        .await?))
    }

    /// The creation of (`microdao`, `slug`): recorded with `channel_id` now if there is none
    /// (two requests racing record one; both read the same row back).
    pub async fn begin_creation(
        &self,
        microdao: MicrodaoId,
        slug: &str,
        channel_id: ChannelId,
    ) -> Result<Creation, StoreError> {
        let now = Ts::now();
        Ok(both!(self.store, pool => {
            sqlx::query(
                "INSERT INTO bridge_channel_creations (microdao_id, slug, channel_id, started_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (microdao_id, slug) DO NOTHING",
            )
            .bind(microdao)
            .bind(slug)
            .bind(channel_id)
            .bind(now)
            .execute(pool)
            .await?;
            sqlx::query_as(
                "SELECT channel_id, room_id, started_at, finished_at FROM bridge_channel_creations \
                 WHERE microdao_id = $1 AND slug = $2",
            )
            .bind(microdao)
            .bind(slug)
            .fetch_one(pool)
            .await?
        }))
    }

    /// Takes over a creation whose room was never recorded, if it was started before
    /// `stale_before` (its process died, or the homeserver never answered). `false`: another
    /// request took it over or recorded its room meanwhile.
    pub async fn take_over(
        &self,
        microdao: MicrodaoId,
        slug: &str,
        stale_before: Ts,
    ) -> Result<bool, StoreError> {
        let n = both!(self.store, pool => sqlx::query(
            "UPDATE bridge_channel_creations SET started_at = $3 \
             WHERE microdao_id = $1 AND slug = $2 AND room_id IS NULL AND started_at < $4",
        )
        .bind(microdao)
        .bind(slug)
        .bind(Ts::now())
        .bind(stale_before)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(n == 1)
    }

    /// Records the room the homeserver created for (`microdao`, `slug`).
    pub async fn created_room(
        &self,
        microdao: MicrodaoId,
        slug: &str,
        room_id: &str,
    ) -> Result<(), StoreError> {
        both!(self.store, pool => sqlx::query(
            "UPDATE bridge_channel_creations SET room_id = $3 WHERE microdao_id = $1 AND slug = $2",
        )
        .bind(microdao)
        .bind(slug)
        .bind(room_id)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Marks the creation of (`microdao`, `slug`) answered.
    pub async fn finish_creation(
        &self,
        microdao: MicrodaoId,
        slug: &str,
    ) -> Result<(), StoreError> {
        both!(self.store, pool => sqlx::query(
            "UPDATE bridge_channel_creations SET finished_at = $3 \
             WHERE microdao_id = $1 AND slug = $2 AND finished_at IS NULL",
        )
        .bind(microdao)
        .bind(slug)
        .bind(Ts::now())
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Moves `channel` into `microdao` under `slug`, with `audit` and `chat.channel.moved` in
    /// the same commit. A slug another channel of the microDAO has is refused, not changed.
    pub async fn move_to(
        &self,
        channel: &ChannelInfo,
        microdao: MicrodaoId,
        slug: &str,
        audit: NewAudit,
    ) -> Result<Moved, StoreError> {
        if channel.microdao_id == microdao && channel.slug == slug {
            return Ok(Moved::Unchanged);
        }
        let now = Ts::now();
        let draft = Draft::new(
            Topic::ChannelMoved,
            channel_partition(channel.id),
            &ChannelMoved {
                v: PAYLOAD_VERSION,
                channel_id: channel.id,
                matrix_room_id: channel.matrix_room_id.as_deref().unwrap_or(""),
                previous_room_id: None,
                microdao_id: Some(microdao),
                previous_microdao_id: Some(channel.microdao_id),
                slug: Some(slug),
                at: now,
            },
        );
        let events = self.store.events_enabled();
        let result: Result<(), sqlx::Error> = both!(self.store, pool => async {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "UPDATE channels SET microdao_id = $2, slug = $3, updated_at = $4 WHERE id = $1",
            )
            .bind(channel.id)
            .bind(microdao)
            .bind(slug)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.append_audit(std::slice::from_ref(&audit)).await?;
            if events {
                tx.append_events(std::slice::from_ref(&draft)).await?;
            }
            tx.commit().await
        }
        .await);
        match result {
            Ok(()) => {
                self.store.wake_publisher();
                Ok(Moved::Moved)
            }
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(Moved::SlugTaken),
            Err(e) => Err(e.into()),
        }
    }
}
