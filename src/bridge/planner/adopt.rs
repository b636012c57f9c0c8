//! Which unmirrored rooms become channels: a room placed by `city.daarion.channel` state, or
//! one the bot or an agent is invited to (or joins). Invites the bridge cannot honour are
//! refused through a durable follow-up job with the reason.

use std::{collections::BTreeSet, sync::Arc};

use ruma::{
    RoomId, UserId,
    events::{
        AnyStrippedStateEvent,
        room::member::{MembershipState, RoomMemberEventContent},
    },
    serde::Raw,
};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Planner, Work,
    state::{alias_localpart, apply_state_content},
};
use crate::{
    bridge::mirror::{
        cache::RoomState,
        event::{DAARION_CHANNEL, DaarionChannelContent, Envelope},
    },
    db::{NewChannel, Party, PowerLevels, text::DbText},
    model::{
        JobKind, NameSource, Visibility,
        ids::{ChannelId, MicrodaoId},
    },
};

/// Stripped state of an invite (`unsigned.invite_room_state`), for naming a room before the
/// full state read after joining.
#[derive(Deserialize)]
struct InviteUnsigned {
    #[serde(default)]
    invite_room_state: Vec<Raw<AnyStrippedStateEvent>>,
}

impl Planner<'_> {
    /// Decides whether an event makes an unmirrored room a channel, and plans it if so.
    pub(super) fn try_adopt(&mut self, room_id: &RoomId, env: &Envelope<'_>) -> bool {
        let Some((microdao_id, slug, visibility, invited)) = self.placement(room_id, env) else {
            return false;
        };
        let is_direct = env.kind == "m.room.member"
            && env
                .content::<RoomMemberEventContent>()
                .is_ok_and(|m| m.is_direct == Some(true));
        let mut state = RoomState {
            channel_id: ChannelId::new(),
            microdao_id,
            name: room_id.to_string(),
            name_source: NameSource::Id,
            alias: None,
            topic: None,
            visibility: visibility.unwrap_or(Visibility::Private),
            visibility_pinned: visibility.is_some(),
            power: PowerLevels::default(),
            // An agent invited into a direct chat: every message there addresses it.
            is_direct,
            agents: BTreeSet::new(),
        };
        if let Some(unsigned) = env.unsigned
            && let Ok(invite) = serde_json::from_str::<InviteUnsigned>(unsigned.get())
        {
            for stripped in &invite.invite_room_state {
                let kind = stripped.get_field::<String>("type").ok().flatten();
                let content = stripped
                    .get_field::<Box<RawValue>>("content")
                    .ok()
                    .flatten();
                if let (Some(kind), Some(content)) = (kind, content) {
                    apply_state_content(&mut state, room_id, &kind, content.get());
                }
            }
        }
        let slug = super::slugify(slug.as_deref().unwrap_or_else(|| {
            state
                .alias
                .as_deref()
                .map(alias_localpart)
                .unwrap_or(&state.name)
        }));
        let created_by = match &invited {
            Some(u) if self.namespace.is_puppet(u) => {
                self.registry.get(u).map(|a| Party::Agent(a.id))
            }
            _ if !self.namespace.is_bridge_user(&env.sender) => {
                let sender = env.sender.clone();
                Some(Party::User(self.people.person(&sender)))
            }
            _ => None,
        };
        tracing::info!(%room_id, microdao_id = %microdao_id, "mirroring a new room");
        self.rooms.insert(
            room_id.to_owned(),
            Work {
                state: Arc::new(state),
                create: Some(NewChannel {
                    microdao_id,
                    slug: DbText::new(slug),
                    created_by,
                }),
                dirty: true,
            },
        );
        true
    }

    /// Where an event places an unmirrored room: (microDAO, slug, pinned visibility, the bot
    /// or agent invited), or `None` when it does not make the room a channel.
    #[allow(clippy::type_complexity)]
    fn placement(
        &mut self,
        room_id: &RoomId,
        env: &Envelope<'_>,
    ) -> Option<(
        MicrodaoId,
        Option<String>,
        Option<Visibility>,
        Option<ruma::OwnedUserId>,
    )> {
        if env.kind == DAARION_CHANNEL && env.state_key.is_some() {
            let content = env.content::<DaarionChannelContent>().ok()?;
            let Some(id) = self.microdaos.get(&content.microdao).copied() else {
                tracing::warn!(%room_id, microdao = %content.microdao, "city.daarion.channel names an unknown microDAO");
                return None;
            };
            let visibility = content.visibility.as_deref().and_then(Visibility::parse);
            return Some((id, content.slug, visibility, None));
        }
        if env.kind != "m.room.member" {
            return None;
        }
        let target = env
            .state_key
            .as_deref()
            .and_then(|s| UserId::parse(s).ok())?;
        let member = env.content::<RoomMemberEventContent>().ok()?;
        let invite = member.membership == MembershipState::Invite;
        if !invite && member.membership != MembershipState::Join {
            return None;
        }
        // The bot joining by itself places nothing (an invite does): the rooms it creates are
        // placed by their `city.daarion.channel` state (the admin API's), or handed the channel
        // by the old room's tombstone (a room upgrade the bot performed).
        if target == self.namespace.bot() && !invite && env.sender == target {
            return None;
        }
        let default = self.settings.default_microdao;
        let microdao = if target == self.namespace.bot() {
            default
        } else if self.namespace.is_puppet(&target) {
            match self.registry.get(&target) {
                Some(agent) if !agent.active => {
                    if invite && !self.sync {
                        self.job(
                            JobKind::Reject,
                            room_id,
                            &target,
                            Some("this agent is disabled"),
                            &env.sender,
                        );
                    }
                    return None;
                }
                Some(agent) => agent.microdao_id.or(default),
                None => {
                    if invite && !self.sync {
                        self.job(
                            JobKind::Reject,
                            room_id,
                            &target,
                            Some("this agent does not exist"),
                            &env.sender,
                        );
                    }
                    return None;
                }
            }
        } else {
            return None;
        };
        let Some(microdao) = microdao else {
            if invite && !self.sync {
                self.job(
                    JobKind::Reject,
                    room_id,
                    &target,
                    Some("this bridge has no microDAO to place the room in"),
                    &env.sender,
                );
            }
            return None;
        };
        Some((microdao, None, None, Some(target)))
    }
}
