//! Channels the platform makes, ends and moves, shared by the admin API and the bot commands:
//! creating a channel (the bot creates the Matrix room, invites the people, brings in the
//! agents), archiving one (the agents and the bot leave; the history stays), and placing a
//! mirrored room into another microDAO (`!daarion adopt`).
//!
//! Creating is idempotent by (microDAO, slug) and safe against crashes: a creation row with
//! the chosen channel id is written before the homeserver is asked, the id travels in the
//! room's `city.daarion.channel` state (so the mirror, if the room's first transaction arrives
//! before the answer, writes the same channel), and the room id is recorded as soon as it is
//! known. A retry finds the channel, or the room a crashed attempt created (by the channel id),
//! and finishes the creation instead of making a second room.

use std::{sync::Arc, time::Duration};

use ruma::{
    OwnedRoomId, OwnedUserId, RoomId,
    api::client::room::{
        Visibility as Directory,
        create_room::v3::{Request as CreateRoom, RoomPreset},
    },
    events::{
        EmptyStateKey, InitialStateEvent,
        room::encryption::{InitialRoomEncryptionEvent, RoomEncryptionEventContent},
    },
};

use super::{
    control::{Control, ControlError},
    mirror::lifecycle::CreatedRoom,
};
use crate::{
    db::{
        audit::Actor,
        lifecycle::{ChannelInfo, Moved},
    },
    matrix::rooms::DaarionChannelEventContent,
    model::{Agent, AuditOutcome, Ts, Visibility, ids::ChannelId},
};

/// A creation started this long ago without a recorded room is taken over by a new request
/// (its process died, or the homeserver never answered).
const STALE_CREATION: Duration = Duration::from_secs(60);

/// A channel to create.
#[derive(Debug, Clone)]
pub struct ChannelSpec {
    /// External id of its microDAO.
    pub microdao: String,
    /// Its slug in the microDAO.
    pub slug: String,
    /// `m.room.name`.
    pub name: String,
    /// Its visibility.
    pub visibility: Visibility,
    /// `m.room.topic`.
    pub topic: Option<String>,
    /// Whether the room is encrypted.
    pub encrypted: bool,
    /// People the bot invites.
    pub members: Vec<OwnedUserId>,
    /// Agents the bot brings in.
    pub agents: Vec<Arc<Agent>>,
}

/// A channel created, or found.
#[derive(Debug, Clone)]
pub struct ChannelOutcome {
    /// The channel.
    pub channel: ChannelInfo,
    /// Whether this request created it (else it existed).
    pub created: bool,
}

impl Control {
    /// Creates the channel `spec` describes as `by`, or returns the one that exists under its
    /// (microDAO, slug).
    pub async fn create_channel(
        &self,
        spec: &ChannelSpec,
        by: &Actor,
    ) -> Result<ChannelOutcome, ControlError> {
        let _one_at_a_time = self.creating.lock().await;
        let store = &self.store;
        let lifecycle = store.lifecycle();
        let microdao = store
            .rooms()
            .microdao_by_external_id(&spec.microdao)
            .await?
            .ok_or_else(|| ControlError::NotFound(format!("no microDAO `{}`", spec.microdao)))?;
        let existing = lifecycle.by_slug(microdao, &spec.slug).await?;
        let creation = match &existing {
            // A channel of that slug that no unfinished creation of ours made: it is the answer.
            Some(channel) => match lifecycle.creation(microdao, &spec.slug).await? {
                Some(c) if c.finished_at.is_none() && c.channel_id == channel.id => c,
                _ => {
                    return Ok(ChannelOutcome {
                        channel: channel.clone(),
                        created: false,
                    });
                }
            },
            None => {
                let proposed = ChannelId::new();
                let c = lifecycle
                    .begin_creation(microdao, &spec.slug, proposed)
                    .await?;
                // Someone else's creation with no room yet: another process is at it, or died.
                if c.channel_id != proposed
                    && c.room_id.is_none()
                    && !lifecycle
                        .take_over(microdao, &spec.slug, Ts::now().minus(STALE_CREATION))
                        .await?
                {
                    return Err(ControlError::InProgress(format!(
                        "{}/{}",
                        spec.microdao, spec.slug
                    )));
                }
                c
            }
        };
        let channel_id = creation.channel_id;
        let room: OwnedRoomId = match creation.room_id.as_deref().map(RoomId::parse) {
            Some(Ok(room)) => room,
            _ => match lifecycle
                .by_id(channel_id)
                .await?
                .and_then(|c| c.matrix_room_id)
            {
                // A crashed attempt's room, which the mirror adopted under the chosen id.
                Some(room) => RoomId::parse(&room).map_err(|_| {
                    ControlError::NotFound(format!("channel {channel_id} has an invalid room id"))
                })?,
                None => {
                    let request = create_request(spec, channel_id, self.bot.user_id());
                    let room = self.bot.create_room(request).await?;
                    tracing::info!(%room, %channel_id, microdao = %spec.microdao, slug = %spec.slug, "created a room for the platform");
                    room
                }
            },
        };
        lifecycle
            .created_room(microdao, &spec.slug, room.as_str())
            .await?;
        let written = self
            .mirror
            .record_created(
                &room,
                &CreatedRoom {
                    channel_id,
                    microdao_id: microdao,
                    slug: spec.slug.clone(),
                    name: spec.name.clone(),
                    topic: spec.topic.clone(),
                    visibility: spec.visibility,
                },
            )
            .await?;
        // The channel exists under another place (a room that another path placed first, say
        // `city.daarion.channel` state edited by hand): the platform's request wins.
        let mut channel = lifecycle
            .by_id(written)
            .await?
            .ok_or_else(|| ControlError::NotFound(format!("channel {written} vanished")))?;
        if channel.microdao_id != microdao || channel.slug != spec.slug {
            let audit = by.did(
                "channel.moved",
                Some(&written.to_string()),
                AuditOutcome::Allowed,
            );
            lifecycle
                .move_to(&channel, microdao, &spec.slug, audit)
                .await?;
            self.mirror.forget_room(&room);
        }
        for agent in &spec.agents {
            self.invite_agent(&room, agent.clone(), by).await?;
        }
        let entry = by
            .did(
                "channel.created",
                Some(&written.to_string()),
                AuditOutcome::Allowed,
            )
            .details(serde_json::json!({
                "microdao": spec.microdao, "slug": spec.slug, "room_id": room,
                "encrypted": spec.encrypted, "members": spec.members,
                "agents": spec.agents.iter().map(|a| &a.external_id).collect::<Vec<_>>(),
            }));
        store.audit().record(&[entry]).await?;
        lifecycle.finish_creation(microdao, &spec.slug).await?;
        channel = lifecycle.by_id(written).await?.unwrap_or(channel);
        Ok(ChannelOutcome {
            channel,
            created: true,
        })
    }

    /// Archives `channel` as `by`: its agents and the bot leave the room (durable follow-up
    /// jobs), its sessions close, and it is marked archived; its messages stay. The bot sends
    /// no tombstone (`m.room.tombstone` must name a replacement room): the room stays with the
    /// people in it. `false` when it already was archived (nothing changes).
    pub async fn archive_channel(
        &self,
        channel: ChannelId,
        by: &Actor,
    ) -> Result<(ChannelInfo, bool), ControlError> {
        let lifecycle = self.store.lifecycle();
        let info = lifecycle
            .by_id(channel)
            .await?
            .ok_or_else(|| ControlError::NotFound("no such channel".into()))?;
        if info.archived_at.is_some() {
            return Ok((info, false));
        }
        let room = info
            .matrix_room_id
            .as_deref()
            .and_then(|r| RoomId::parse(r).ok())
            .ok_or_else(|| ControlError::NotMirrored(channel.to_string()))?;
        let agents = self
            .store
            .rooms()
            .load(&[room.as_str()])
            .await?
            .pop()
            .map(|(_, _, agents)| agents)
            .unwrap_or_default();
        let mut leave: Vec<OwnedUserId> = agents
            .into_iter()
            .filter_map(|a| self.registry.by_id(a))
            .map(|a| a.user_id.clone())
            .collect();
        leave.push(self.bot.user_id().to_owned());
        let who = by.id.as_deref().unwrap_or("an operator");
        let audit = by
            .did(
                "channel.archived",
                Some(&channel.to_string()),
                AuditOutcome::Allowed,
            )
            .details(serde_json::json!({ "room_id": room, "reason": "admin" }));
        self.mirror
            .archive(
                &room,
                channel,
                leave,
                &format!("channel archived by {who}"),
                audit,
            )
            .await?;
        let info = lifecycle.by_id(channel).await?.unwrap_or(info);
        Ok((info, true))
    }

    /// Places the mirrored room `room` into the microDAO `microdao` under `slug` (its current
    /// slug when none), as `by`. The answer for the person who asked, and whether it moved.
    pub async fn adopt(
        &self,
        room: &RoomId,
        microdao: &str,
        slug: Option<&str>,
        by: &Actor,
    ) -> Result<(String, bool), ControlError> {
        let lifecycle = self.store.lifecycle();
        let Some(channel) = self.store.rooms().channel_for_room(room.as_str()).await? else {
            return Err(ControlError::NotMirrored(room.to_string()));
        };
        let info = lifecycle
            .by_id(channel)
            .await?
            .ok_or_else(|| ControlError::NotMirrored(room.to_string()))?;
        let Some(target) = self.store.rooms().microdao_by_external_id(microdao).await? else {
            return Ok((
                format!("There is no microDAO `{}`.", microdao.escape_debug()),
                false,
            ));
        };
        let slug = slug
            .map(super::planner::slugify)
            .unwrap_or_else(|| info.slug.clone());
        let audit = by
            .did(
                "channel.moved",
                Some(&channel.to_string()),
                AuditOutcome::Allowed,
            )
            .details(serde_json::json!({
                "room_id": room, "from": info.microdao, "to": microdao,
                "from_slug": info.slug, "slug": slug,
            }));
        Ok(
            match lifecycle.move_to(&info, target, &slug, audit).await? {
                Moved::Moved => {
                    self.mirror.forget_room(room);
                    (
                        format!("This room is now the channel `{slug}` of `{microdao}`."),
                        true,
                    )
                }
                Moved::Unchanged => (
                    format!("This room already is the channel `{slug}` of `{microdao}`."),
                    false,
                ),
                Moved::SlugTaken => (
                    format!(
                        "`{microdao}` already has a channel `{slug}`: name another slug \
                     (`adopt {microdao} <slug>`)."
                    ),
                    false,
                ),
            },
        )
    }
}

/// The `createRoom` request: Element's defaults for a private room (`private_chat`, encrypted
/// with `m.megolm.v1.aes-sha2`), `public_chat` for a public one, with the room's place in the
/// platform as `city.daarion.channel` state and the people invited.
fn create_request(spec: &ChannelSpec, channel_id: ChannelId, bot: &ruma::UserId) -> CreateRoom {
    let mut request = CreateRoom::new();
    request.name = Some(spec.name.clone());
    request.topic = spec.topic.clone();
    request.preset = Some(match spec.visibility {
        Visibility::Public => RoomPreset::PublicChat,
        _ => RoomPreset::PrivateChat,
    });
    // Never published in the room directory: the platform lists its channels itself.
    request.visibility = Directory::Private;
    request.invite = spec.members.iter().filter(|m| *m != bot).cloned().collect();
    let place = DaarionChannelEventContent {
        microdao: spec.microdao.clone(),
        slug: Some(spec.slug.clone()),
        visibility: Some(spec.visibility.as_str().to_owned()),
        channel_id: Some(channel_id.to_string()),
    };
    request
        .initial_state
        .push(InitialStateEvent::new(EmptyStateKey, place).to_raw_any());
    if spec.encrypted {
        let encryption: InitialRoomEncryptionEvent = InitialStateEvent::new(
            EmptyStateKey,
            RoomEncryptionEventContent::with_recommended_defaults(),
        );
        request.initial_state.push(encryption.to_raw_any());
    }
    request
}
