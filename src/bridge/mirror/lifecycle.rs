//! What the platform does to channels besides mirroring, written through the mirror so that
//! its caches and per-room locks stay the only truth about a room: the channel row of a room
//! the admin API created, and archiving a channel.

use std::sync::Arc;

use ruma::{OwnedUserId, RoomId};

use super::{Mirror, cache::RoomState};
use crate::{
    db::{
        Batch, ChannelArchive, ChannelWrite, NewChannel, NewJob, PowerLevels, SessionChange,
        SessionOp, Store, StoreError, audit::NewAudit, text::DbText,
    },
    model::{
        JobKind, NameSource, Ts, Visibility,
        ids::{ChannelId, MicrodaoId},
    },
};

/// The channel row of a room the admin API created.
#[derive(Debug, Clone)]
pub struct CreatedRoom {
    /// The channel id chosen before the room was created.
    pub channel_id: ChannelId,
    /// Its microDAO.
    pub microdao_id: MicrodaoId,
    /// Its slug in the microDAO.
    pub slug: String,
    /// `m.room.name`.
    pub name: String,
    /// `m.room.topic`.
    pub topic: Option<String>,
    /// Its visibility.
    pub visibility: Visibility,
}

impl Mirror {
    /// The store the mirror writes.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Writes the channel of `room`, which the bot just created, unless the mirror already
    /// did from the room's first transaction (the homeserver may push it before answering the
    /// creation). The channel's id either way: the one chosen, which the room's
    /// `city.daarion.channel` state also names, or the one an earlier adoption gave it.
    pub async fn record_created(
        &self,
        room: &RoomId,
        created: &CreatedRoom,
    ) -> Result<ChannelId, StoreError> {
        let _lock = self.locks.lock([room]).await;
        if let Some(state) = self.caches.room(room) {
            return Ok(state.channel_id);
        }
        if let Some((_, stored, _)) = self.store.rooms().load(&[room.as_str()]).await?.pop() {
            return Ok(stored.channel_id);
        }
        let state = RoomState {
            channel_id: created.channel_id,
            microdao_id: created.microdao_id,
            name: created.name.clone(),
            name_source: NameSource::Name,
            alias: None,
            topic: created.topic.clone(),
            visibility: created.visibility,
            // The platform chose it: join rules do not change it.
            visibility_pinned: true,
            power: PowerLevels::default(),
            is_direct: false,
            agents: Default::default(),
        };
        let batch = Batch {
            channels: vec![ChannelWrite {
                channel_id: created.channel_id,
                room_id: room.to_owned(),
                create: Some(NewChannel {
                    microdao_id: created.microdao_id,
                    slug: DbText::new(created.slug.as_str()),
                    created_by: None,
                }),
                name: DbText::new(created.name.as_str()),
                name_source: NameSource::Name,
                alias: None,
                topic: created.topic.as_deref().map(DbText::new),
                visibility: created.visibility,
                visibility_pinned: true,
                power_levels: PowerLevels::default(),
                state_synced: false,
                is_direct: false,
            }],
            ..Default::default()
        };
        self.store.apply(&batch).await?;
        self.caches
            .remember_rooms([(room.to_owned(), Arc::new(state))]);
        Ok(created.channel_id)
    }

    /// Archives `channel` (whose room is `room`): its sessions close, and `leave` (its agents
    /// and the bot) leave the room through durable follow-up jobs. The channel row and its
    /// history stay. Idempotent: an archived channel is archived once, published once.
    pub async fn archive(
        &self,
        room: &RoomId,
        channel: ChannelId,
        leave: Vec<OwnedUserId>,
        reason: &str,
        audit: NewAudit,
    ) -> Result<(), StoreError> {
        let _lock = self.locks.lock([room]).await;
        let batch = Batch {
            archives: vec![ChannelArchive {
                channel_id: channel,
                room_id: room.to_owned(),
                reason: "admin",
            }],
            sessions: vec![SessionOp {
                channel_id: channel,
                agent: None,
                change: SessionChange::Close,
                at: Ts::now(),
            }],
            jobs: leave
                .into_iter()
                .map(|user_id| NewJob {
                    kind: JobKind::Reject,
                    room_id: room.to_owned(),
                    user_id,
                    reason: Some(DbText::new(reason)),
                    event_id: None,
                    body: None,
                })
                .collect(),
            audits: vec![audit],
            ..Default::default()
        };
        self.store.apply(&batch).await?;
        self.wakers.jobs.notify_one();
        Ok(())
    }
}
