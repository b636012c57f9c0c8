//! Rooms that end or move: `m.room.tombstone` (a room upgrade follows its replacement, a
//! tombstone without one archives the channel) and the placement of a room the bridge created
//! itself (its `city.daarion.channel` state, sent by the bot, names the channel id and microDAO
//! the admin API chose).
//!
//! Compared with mautrix-go's bridgev2 (`Portal.handleMatrixTombstone`), which joins the
//! replacement at once inside event handling and forgets the old room id: here the move of
//! `channels.matrix_room_id` and the alias of the old room commit with the transaction, and the
//! joins (the bot, then the channel's agents) are a durable follow-up job, so a crash loses
//! neither; events still arriving for the old room keep resolving to the channel.

use std::sync::Arc;

use ruma::{OwnedRoomId, OwnedServerName, RoomId};
use serde::Deserialize;

use super::{Planner, Work};
use crate::{
    bridge::mirror::event::{DaarionChannelContent, Envelope},
    db::{ChannelArchive, NewJob, RoomMove, SessionChange, audit::NewAudit, text::DbText},
    model::{ActorType, AuditOutcome, FOLLOW_UPGRADE_VIA, JobKind, Ts, ids::ChannelId},
};

/// `m.room.tombstone` content, read leniently: a missing or invalid `replacement_room` is a
/// room shut down without a replacement.
#[derive(Deserialize)]
struct Tombstone {
    #[serde(default)]
    replacement_room: Option<String>,
}

impl Planner<'_> {
    /// A mirrored room was tombstoned: its sessions close; the channel follows the replacement
    /// room, or is archived when there is none.
    pub(super) fn tombstone(&mut self, room_id: &RoomId, env: &Envelope<'_>, at: Ts) {
        let Some(work) = self.rooms.get(room_id) else {
            return;
        };
        let state = work.state.clone();
        let channel = state.channel_id;
        self.session(channel, None, SessionChange::Close, at);
        let replacement = env
            .content::<Tombstone>()
            .ok()
            .and_then(|t| t.replacement_room)
            .and_then(|r| OwnedRoomId::try_from(r).ok())
            .filter(|r| r != room_id);
        let audit = |action, details| {
            NewAudit::new(
                ActorType::User,
                Some(env.sender.as_str()),
                action,
                Some(&channel.to_string()),
                AuditOutcome::Allowed,
            )
            .details(details)
        };
        match replacement {
            // A replacement that is already a channel of its own is left alone (as bridgev2
            // ignores a replacement that is already a portal): two channels cannot share a
            // room.
            Some(new) if self.rooms.contains_key(&new) => {
                tracing::warn!(%room_id, replacement = %new, "the replacement room is already mirrored; the channel stays");
            }
            Some(new) => {
                tracing::info!(%room_id, replacement = %new, %channel, "room upgraded; the channel follows it");
                self.batch.moves.push(RoomMove {
                    channel_id: channel,
                    from: room_id.to_owned(),
                    to: new.clone(),
                });
                self.batch.audits.push(audit(
                    "channel.upgraded",
                    serde_json::json!({ "from": room_id, "to": new }),
                ));
                // Events of the new room in this transaction (the bot's invite) belong to the
                // channel already; the state is shared, never written twice (`finish`).
                self.rooms.insert(
                    new.clone(),
                    Work {
                        state: Arc::clone(&state),
                        create: None,
                        dirty: false,
                    },
                );
                if !self.sync {
                    let via = via_servers(room_id, env);
                    self.batch.jobs.push(NewJob {
                        kind: JobKind::Join,
                        room_id: new,
                        user_id: self.namespace.bot().to_owned(),
                        reason: Some(DbText::new(format!("{FOLLOW_UPGRADE_VIA} {via}"))),
                        event_id: None,
                        body: None,
                    });
                }
            }
            None => {
                tracing::info!(%room_id, %channel, "room shut down without a replacement; archiving the channel");
                self.batch.archives.push(ChannelArchive {
                    channel_id: channel,
                    room_id: room_id.to_owned(),
                    reason: "tombstone",
                });
                self.batch.audits.push(audit(
                    "channel.archived",
                    serde_json::json!({ "room_id": room_id, "reason": "tombstone" }),
                ));
                if !self.sync {
                    self.leave_all(room_id, &state.agents, "the room was shut down");
                }
            }
        }
    }

    /// Leave jobs for the agents and the bot (an archived channel).
    pub(super) fn leave_all(
        &mut self,
        room_id: &RoomId,
        agents: &std::collections::BTreeSet<crate::model::ids::AgentId>,
        reason: &str,
    ) {
        let mut users: Vec<ruma::OwnedUserId> = agents
            .iter()
            .filter_map(|a| self.registry.by_id(*a))
            .map(|a| a.user_id.clone())
            .collect();
        users.push(self.namespace.bot().to_owned());
        for user_id in users {
            self.batch.jobs.push(NewJob {
                kind: JobKind::Reject,
                room_id: room_id.to_owned(),
                user_id,
                reason: Some(DbText::new(reason)),
                event_id: None,
                body: None,
            });
        }
    }

    /// A room the bot created and placed itself (`city.daarion.channel` from the bot, in the
    /// transaction that adopted it): the channel takes the id, microDAO and slug the admin API
    /// chose, even when the bot's own join placed it first (in the default microDAO).
    pub(super) fn place_created(
        &mut self,
        room_id: &RoomId,
        env: &Envelope<'_>,
        content: &DaarionChannelContent,
    ) {
        if env.sender != self.namespace.bot() {
            return;
        }
        let microdao = self.microdaos.get(&content.microdao).copied();
        let channel_id = content
            .channel_id
            .as_deref()
            .and_then(|c| uuid::Uuid::parse_str(c).ok())
            .map(ChannelId);
        let Some(work) = self.rooms.get_mut(room_id) else {
            return;
        };
        let Some(create) = work.create.as_mut() else {
            return;
        };
        if let Some(microdao) = microdao {
            create.microdao_id = microdao;
        }
        if let Some(slug) = &content.slug {
            create.slug = DbText::new(super::slugify(slug));
        }
        let (microdao, id) = (create.microdao_id, channel_id);
        let state = work.state_mut();
        state.microdao_id = microdao;
        // Nothing of this plan refers to the channel yet: the creation's first events are the
        // bot's own (the bot is no member row) and the room's state.
        if let Some(id) = id {
            state.channel_id = id;
        }
        work.dirty = true;
    }
}

/// The servers to join a replacement room through: the tombstone sender's (it created the
/// replacement, as bridgev2 uses) and the old room's own, when its id names one.
fn via_servers(room_id: &RoomId, env: &Envelope<'_>) -> String {
    let mut via: Vec<OwnedServerName> = vec![env.sender.server_name().to_owned()];
    if let Some(server) = room_id.server_name()
        && !via.iter().any(|v| v == server)
    {
        via.push(server.to_owned());
    }
    via.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
}
