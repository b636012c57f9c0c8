//! The planner: turns one transaction's events (or a room's state) into a [`Batch`] of DAARION
//! rows, in the order received, from the room state the mirror caches; it also collects the
//! follow-ups, trigger candidates and redactions that apply once the batch is committed.

use std::collections::{BTreeMap, HashMap, HashSet};

use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, UserId,
    events::{
        room::{
            canonical_alias::RoomCanonicalAliasEventContent,
            create::RoomCreateEventContent,
            join_rules::{JoinRule, RoomJoinRulesEventContent},
            member::{MembershipState, RoomMemberEventContent},
            message::{Relation, RoomMessageEventContent},
            name::RoomNameEventContent,
            power_levels::RoomPowerLevelsEventContent,
            redaction::RoomRedactionEventContent,
            topic::RoomTopicEventContent,
        },
        sticker::StickerEventContent,
    },
};

use super::{
    FollowUp, Mirror, RoomState,
    event::{DAARION_CHANNEL, DaarionChannelContent, Envelope, InviteUnsigned, RelatesTo},
    preview,
    trigger::{Candidate, Respond},
};
use crate::db::{
    Batch, ChannelWrite, Edit, MemberJoin, MemberLeave, NameSource, NewChannel, NewMessage,
    PowerLevels, Redaction, RoleChange, SessionChange, SessionOp, StoreError, Visibility,
    types::Ts,
};

pub(super) struct Planner<'m> {
    mirror: &'m Mirror,
    rooms: HashMap<OwnedRoomId, Work>,
    users: Vec<String>,
    users_seen: HashSet<String>,
    members: HashMap<(OwnedRoomId, OwnedUserId), Member>,
    member_order: Vec<(OwnedRoomId, OwnedUserId)>,
    batch: Batch,
    message_ids: HashSet<String>,
    follow_ups: Vec<FollowUp>,
    sync: bool,
    pub(super) candidates: Vec<Candidate>,
    redacted: Vec<String>,
    /// (event type, outcome) per event, counted once the batch is committed.
    pub(super) outcomes: Vec<(&'static str, &'static str)>,
}

/// A finished plan: the batch to write and what the caches learn once it is committed.
pub(super) struct Finished {
    pub(super) batch: Batch,
    pub(super) rooms: Vec<(OwnedRoomId, RoomState)>,
    pub(super) users: Vec<String>,
    pub(super) follow_ups: Vec<FollowUp>,
    pub(super) candidates: Vec<Candidate>,
    pub(super) redacted: Vec<String>,
    pub(super) outcomes: Vec<(&'static str, &'static str)>,
}

struct Work {
    state: RoomState,
    create: Option<NewChannel>,
    dirty: bool,
}

struct Member {
    is_agent: bool,
    join: Option<(Ts, &'static str)>,
    leave: Option<Ts>,
}

impl<'m> Planner<'m> {
    pub(super) fn new(mirror: &'m Mirror, sync: bool) -> Self {
        Self {
            mirror,
            rooms: HashMap::new(),
            users: Vec::new(),
            users_seen: HashSet::new(),
            members: HashMap::new(),
            member_order: Vec::new(),
            batch: Batch::default(),
            message_ids: HashSet::new(),
            follow_ups: Vec::new(),
            sync,
            candidates: Vec::new(),
            redacted: Vec::new(),
            outcomes: Vec::new(),
        }
    }

    /// Loads the state of every room and sender the events touch: from the cache, else with
    /// one query per kind.
    pub(super) async fn load(&mut self, envelopes: &[Envelope<'_>]) -> Result<(), StoreError> {
        let mut missing: Vec<&str> = Vec::new();
        {
            let cache = self.mirror.rooms.lock().expect("rooms lock");
            for env in envelopes {
                let room_id = env.room_id.as_ref().expect("checked");
                if self.rooms.contains_key(room_id) || missing.contains(&room_id.as_str()) {
                    continue;
                }
                match cache.get(room_id) {
                    Some(state) => {
                        self.rooms.insert(
                            room_id.clone(),
                            Work {
                                state: state.clone(),
                                create: None,
                                dirty: false,
                            },
                        );
                    }
                    None => missing.push(room_id.as_str()),
                }
            }
        }
        for stored in self.mirror.store.load_rooms(&missing).await? {
            let Ok(room_id) = RoomId::parse(&stored.room_id) else {
                continue;
            };
            let state = RoomState {
                microdao_id: stored.microdao_id,
                name: stored.name,
                name_source: stored.name_source,
                alias: None,
                topic: stored.topic,
                visibility: stored.visibility,
                visibility_pinned: stored.visibility_pinned,
                power: stored.power_levels,
                is_direct: stored.is_direct,
                agents: stored
                    .agents
                    .iter()
                    .map(|(a, r)| (a.clone(), Respond::parse(r).unwrap_or(Respond::Mentions)))
                    .collect(),
            };
            self.rooms.insert(
                room_id,
                Work {
                    state,
                    create: None,
                    dirty: false,
                },
            );
        }

        let mut senders: Vec<&str> = Vec::new();
        {
            let known = self.mirror.known_users.lock().expect("users lock");
            for env in envelopes {
                for user in [Some(env.sender.as_str()), env.state_key.as_deref()]
                    .into_iter()
                    .flatten()
                {
                    if user.starts_with('@')
                        && !known.contains(user)
                        && !senders.contains(&user)
                        && !self.is_bridge_user(user)
                    {
                        senders.push(user);
                    }
                }
            }
        }
        let found = self.mirror.store.known_users(&senders).await?;
        self.users_seen.extend(found);
        // A puppet the cache does not know may be an agent another service just created.
        let unknown_puppet = envelopes.iter().any(|env| {
            [Some(env.sender.as_str()), env.state_key.as_deref()]
                .into_iter()
                .flatten()
                .any(|u| {
                    UserId::parse(u).is_ok_and(|u| self.mirror.config.is_puppet(&u))
                        && self.mirror.agent(u).is_none()
                })
        });
        if unknown_puppet {
            self.mirror.reload_agents().await?;
        }
        Ok(())
    }

    fn is_bridge_user(&self, user: &str) -> bool {
        user == self.mirror.bot.as_str()
            || UserId::parse(user).is_ok_and(|u| self.mirror.config.is_puppet(&u))
    }

    /// Makes sure a human has a `users` row by the end of the batch.
    fn ensure_user(&mut self, user: &UserId) {
        let id = user.as_str();
        if self.users_seen.contains(id)
            || self
                .mirror
                .known_users
                .lock()
                .expect("users lock")
                .contains(id)
        {
            return;
        }
        self.users_seen.insert(id.to_owned());
        self.users.push(id.to_owned());
    }

    pub(super) async fn event(&mut self, env: &Envelope<'_>) -> Result<(), StoreError> {
        let room_id = env.room_id.clone().expect("checked");
        let kind = metric_kind(&env.kind);
        if !self.rooms.contains_key(&room_id) && !self.try_adopt(&room_id, env).await? {
            self.outcomes.push((kind, "ignored_room"));
            self.mirror.log_ignored(
                &room_id,
                "no channel, no city.daarion.channel state, no invite",
            );
            return Ok(());
        }
        let outcome = match self.route(&room_id, env) {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::warn!(%room_id, event_id = %env.event_id, kind = %env.kind, %error, "skipping malformed event content");
                "malformed"
            }
        };
        self.outcomes.push((kind, outcome));
        Ok(())
    }

    /// Decides whether an event makes an unmirrored room a channel, and creates it if so.
    async fn try_adopt(
        &mut self,
        room_id: &RoomId,
        env: &Envelope<'_>,
    ) -> Result<bool, StoreError> {
        let mirror = self.mirror;
        let (microdao_id, slug, visibility, via_user) = if env.kind == DAARION_CHANNEL
            && env.state_key.is_some()
        {
            let Ok(content) = env.content::<DaarionChannelContent>() else {
                return Ok(false);
            };
            let Some(id) = mirror
                .store
                .microdao_by_external_id(&content.microdao)
                .await?
            else {
                tracing::warn!(%room_id, microdao = %content.microdao, "city.daarion.channel names an unknown microDAO");
                return Ok(false);
            };
            (
                id,
                content.slug,
                content.visibility.as_deref().and_then(Visibility::parse),
                None,
            )
        } else if env.kind == "m.room.member" {
            let Some(target) = env.state_key.as_deref().and_then(|s| UserId::parse(s).ok()) else {
                return Ok(false);
            };
            let Ok(member) = env.content::<RoomMemberEventContent>() else {
                return Ok(false);
            };
            if !matches!(
                member.membership,
                MembershipState::Invite | MembershipState::Join
            ) {
                return Ok(false);
            }
            let microdao = if target == mirror.bot {
                mirror.default_microdao
            } else if mirror.config.is_puppet(&target) {
                match mirror.agent(target.as_str()) {
                    Some(agent) => agent.microdao_id.or(mirror.default_microdao),
                    None => {
                        if member.membership == MembershipState::Invite {
                            self.follow_ups.push(FollowUp::Reject {
                                room_id: room_id.to_owned(),
                                user_id: target,
                                reason: "this agent does not exist".into(),
                            });
                        }
                        return Ok(false);
                    }
                }
            } else {
                return Ok(false);
            };
            let Some(microdao) = microdao else {
                if member.membership == MembershipState::Invite {
                    self.follow_ups.push(FollowUp::Reject {
                        room_id: room_id.to_owned(),
                        user_id: target,
                        reason: "this bridge has no microDAO to place the room in".into(),
                    });
                }
                return Ok(false);
            };
            (microdao, None, None, Some(target))
        } else {
            return Ok(false);
        };

        // Name the room from the invite's stripped state when there is one; the full state read
        // after joining completes it.
        let mut state = RoomState {
            microdao_id,
            name: room_id.to_string(),
            name_source: NameSource::Id,
            alias: None,
            topic: None,
            visibility: visibility.unwrap_or(Visibility::Private),
            visibility_pinned: visibility.is_some(),
            power: PowerLevels::default(),
            // An agent invited into a direct chat: every message there addresses it.
            is_direct: env.kind == "m.room.member"
                && env
                    .content::<RoomMemberEventContent>()
                    .is_ok_and(|m| m.is_direct == Some(true)),
            agents: BTreeMap::new(),
        };
        if let Some(unsigned) = env.unsigned
            && let Ok(invite) = serde_json::from_str::<InviteUnsigned>(unsigned.get())
        {
            for stripped in &invite.invite_room_state {
                apply_state_content(&mut state, &stripped.kind, stripped.content.get());
            }
        }
        let slug = slugify(slug.as_deref().unwrap_or_else(|| {
            state
                .alias
                .as_deref()
                .map(alias_localpart)
                .unwrap_or(&state.name)
        }));
        let (created_by_user, created_by_agent) = match &via_user {
            Some(u) if mirror.config.is_puppet(u) => (None, Some(u.to_string())),
            _ if !self.is_bridge_user(env.sender.as_str()) => {
                self.ensure_user(&env.sender);
                (Some(env.sender.to_string()), None)
            }
            _ => (None, None),
        };
        tracing::info!(%room_id, microdao_id = %microdao_id, "mirroring a new room");
        self.rooms.insert(
            room_id.to_owned(),
            Work {
                state,
                create: Some(NewChannel {
                    microdao_id,
                    slug,
                    created_by_user,
                    created_by_agent,
                }),
                dirty: true,
            },
        );
        Ok(true)
    }

    /// Applies one event of a mirrored room to the plan. Returns the metric outcome.
    fn route(&mut self, room_id: &RoomId, env: &Envelope<'_>) -> serde_json::Result<&'static str> {
        let at = Ts::from_millis(env.ts_millis());
        let is_state = env.state_key.is_some();
        match (&*env.kind, is_state) {
            ("m.room.message", false) => {
                let content: RoomMessageEventContent = env.content()?;
                let is_reply = matches!(content.relates_to, Some(Relation::Reply { .. }));
                if let Some(Relation::Replacement(replacement)) = &content.relates_to {
                    let preview = preview::of_msgtype(
                        &replacement.new_content.msgtype,
                        env.sender.localpart(),
                        false,
                    );
                    self.batch.edits.push(Edit {
                        target_event_id: replacement.event_id.to_string(),
                        sender: env.sender.to_string(),
                        preview: self.cut(&preview),
                        at,
                    });
                    // Edits address agents only when configured to: the new text is judged
                    // like a message, with the edit event's own `m.mentions` (the newly
                    // mentioned users).
                    if self.mirror.config.bridge.answer_edits {
                        let mut edited = replacement.new_content.clone().with_relation(None);
                        edited.mentions = content.mentions.clone();
                        self.candidate(room_id, env, &edited, at, None, None);
                    }
                    return Ok("mirrored");
                }
                let preview =
                    preview::of_msgtype(&content.msgtype, env.sender.localpart(), is_reply);
                let thread_root = match &content.relates_to {
                    Some(Relation::Thread(t)) => Some(t.event_id.to_string()),
                    _ => None,
                };
                let reply_to = match &content.relates_to {
                    Some(Relation::Reply(r)) => Some(r.in_reply_to.event_id.to_string()),
                    Some(Relation::Thread(t)) => {
                        t.in_reply_to.as_ref().map(|r| r.event_id.to_string())
                    }
                    _ => None,
                };
                let outcome = self.message(room_id, env, preview, at, thread_root.clone());
                if outcome == "mirrored" {
                    self.candidate(room_id, env, &content, at, thread_root, reply_to);
                }
                // Being addressed opens (or revives) the agent's session in the channel.
                if outcome == "mirrored"
                    && let Some(mentions) = &content.mentions
                {
                    for user in &mentions.user_ids {
                        if user != &env.sender && self.mirror.agent(user.as_str()).is_some() {
                            self.session(room_id, Some(user.as_str()), SessionChange::Activate, at);
                        }
                    }
                }
                Ok(outcome)
            }
            ("m.sticker", false) => {
                let content: StickerEventContent = env.content()?;
                Ok(self.message(
                    room_id,
                    env,
                    format!("[sticker] {}", content.body),
                    at,
                    None,
                ))
            }
            ("m.room.encrypted", false) => {
                let rel: RelatesTo = env.content()?;
                if rel.relates_to.and_then(|r| r.rel_type).as_deref() == Some("m.replace") {
                    // An encrypted edit: its new text is unreadable, the original row stays.
                    return Ok("skipped");
                }
                Ok(self.message(room_id, env, "[encrypted]".into(), at, None))
            }
            ("m.room.redaction", false) => {
                let content: RoomRedactionEventContent = env.content()?;
                let Some(target) = content.redacts.or_else(|| env.redacts.clone()) else {
                    return Ok("malformed");
                };
                self.redacted.push(target.to_string());
                self.batch.redactions.push(Redaction {
                    target_event_id: target.to_string(),
                    at,
                });
                Ok("mirrored")
            }
            ("m.room.member", true) => self.member(room_id, env, at),
            ("m.room.power_levels", true) => {
                let content: RoomPowerLevelsEventContent = env.content()?;
                let work = self.rooms.get_mut(room_id).expect("adopted");
                let mut power = PowerLevels {
                    users: content
                        .users
                        .iter()
                        .map(|(u, l)| (u.to_string(), i64::from(*l)))
                        .collect(),
                    users_default: i64::from(content.users_default),
                    creators: work.state.power.creators.clone(),
                };
                std::mem::swap(&mut work.state.power, &mut power);
                work.dirty = true;
                let (old, new) = (power, work.state.power.clone());
                let affected: HashSet<&String> = old.users.keys().chain(new.users.keys()).collect();
                for user in affected {
                    if old.role(user) != new.role(user) && !self.is_bridge_user(user) {
                        self.batch.roles.push(RoleChange {
                            room_id: room_id.to_string(),
                            user_id: user.clone(),
                            role: new.role(user),
                        });
                    }
                }
                Ok("mirrored")
            }
            ("m.room.create", true) => {
                let content: RoomCreateEventContent = env.content()?;
                let work = self.rooms.get_mut(room_id).expect("adopted");
                // Room v12 creators hold unlimited power without being listed in power levels.
                if content.room_version.as_str() == "12" {
                    let mut creators = vec![env.sender.to_string()];
                    creators.extend(content.additional_creators.iter().map(|u| u.to_string()));
                    work.state.power.creators = creators;
                    work.dirty = true;
                }
                Ok("mirrored")
            }
            (
                kind @ ("m.room.name"
                | "m.room.topic"
                | "m.room.canonical_alias"
                | "m.room.join_rules"),
                true,
            ) => {
                let work = self.rooms.get_mut(room_id).expect("adopted");
                if apply_state_content(&mut work.state, kind, env.content.get()) {
                    work.dirty = true;
                }
                Ok("mirrored")
            }
            ("m.room.tombstone", true) => {
                self.session(room_id, None, SessionChange::Close, at);
                Ok("mirrored")
            }
            (DAARION_CHANNEL, true) => {
                let content: DaarionChannelContent = env.content()?;
                let work = self.rooms.get_mut(room_id).expect("adopted");
                if let Some(v) = content.visibility.as_deref().and_then(Visibility::parse) {
                    work.state.visibility = v;
                    work.state.visibility_pinned = true;
                    work.dirty = true;
                }
                Ok("mirrored")
            }
            _ => Ok("ignored_type"),
        }
    }

    /// Records a mirrored message of a room with agents, for the trigger rules.
    fn candidate(
        &mut self,
        room_id: &RoomId,
        env: &Envelope<'_>,
        content: &RoomMessageEventContent,
        at: Ts,
        thread_root: Option<String>,
        reply_to: Option<String>,
    ) {
        let state = &self.rooms.get(room_id).expect("adopted").state;
        if state.agents.is_empty() || self.sync || env.sender == self.mirror.bot {
            return;
        }
        let agents = state
            .agents
            .iter()
            .filter_map(|(a, r)| Some((a.clone(), (*r, self.mirror.agent(a)?.name))))
            .collect();
        let (body, formatted) = match &content.msgtype {
            ruma::events::room::message::MessageType::Text(t) => {
                (t.body.clone(), t.formatted.as_ref().map(|f| f.body.clone()))
            }
            ruma::events::room::message::MessageType::Notice(t) => {
                (t.body.clone(), t.formatted.as_ref().map(|f| f.body.clone()))
            }
            ruma::events::room::message::MessageType::Emote(t) => {
                (t.body.clone(), t.formatted.as_ref().map(|f| f.body.clone()))
            }
            other => (other.body().to_owned(), None),
        };
        let body = match &content.relates_to {
            Some(Relation::Reply(_)) => preview::strip_reply_fallback(&body),
            _ => body,
        };
        self.candidates.push(Candidate {
            room_id: room_id.to_owned(),
            event_id: env.event_id.to_string(),
            sender: env.sender.to_string(),
            sender_is_agent: self.mirror.config.is_puppet(&env.sender),
            at,
            body,
            formatted_body: formatted,
            mentions: content
                .mentions
                .as_ref()
                .map(|m| m.user_ids.iter().map(|u| u.to_string()).collect()),
            reply_to,
            thread_root,
            event: serde_json::Value::Null,
            agents,
            is_direct: state.is_direct,
        });
    }

    fn cut(&self, preview: &str) -> String {
        preview::truncate(preview, self.mirror.config.bridge.preview_chars)
    }

    fn message(
        &mut self,
        room_id: &RoomId,
        env: &Envelope<'_>,
        preview: String,
        at: Ts,
        thread_root: Option<String>,
    ) -> &'static str {
        let sender = env.sender.as_str();
        if sender == self.mirror.bot.as_str() {
            return "skipped";
        }
        let is_agent = self.mirror.config.is_puppet(&env.sender);
        if is_agent && self.mirror.agent(sender).is_none() {
            return "skipped";
        }
        if !self.message_ids.insert(env.event_id.to_string()) {
            return "duplicate";
        }
        if is_agent {
            self.session(room_id, Some(sender), SessionChange::Activate, at);
        } else {
            self.ensure_user(&env.sender);
        }
        self.batch.messages.push(NewMessage {
            room_id: room_id.to_string(),
            event_id: env.event_id.to_string(),
            sender: sender.to_owned(),
            is_agent,
            preview: self.cut(&preview),
            at,
            thread_root,
        });
        "mirrored"
    }

    fn member(
        &mut self,
        room_id: &RoomId,
        env: &Envelope<'_>,
        at: Ts,
    ) -> serde_json::Result<&'static str> {
        let content: RoomMemberEventContent = env.content()?;
        let Some(target) = env.state_key.as_deref().and_then(|s| UserId::parse(s).ok()) else {
            return Ok("malformed");
        };
        let mirror = self.mirror;
        if target == mirror.bot {
            if content.membership == MembershipState::Invite && !self.sync {
                self.follow_ups.push(FollowUp::Join {
                    room_id: room_id.to_owned(),
                    user_id: target,
                });
            }
            return Ok("mirrored");
        }
        let is_agent = mirror.config.is_puppet(&target);
        if is_agent {
            let Some(agent) = mirror.agent(target.as_str()) else {
                return Ok("skipped");
            };
            if content.membership == MembershipState::Invite && !self.sync {
                if content.is_direct == Some(true)
                    && let Some(work) = self.rooms.get_mut(room_id)
                    && !work.state.is_direct
                {
                    work.state.is_direct = true;
                    work.dirty = true;
                }
                let microdao = self.rooms.get(room_id).map(|w| w.state.microdao_id);
                if agent.microdao_id.is_none() || agent.microdao_id == microdao {
                    self.follow_ups.push(FollowUp::Join {
                        room_id: room_id.to_owned(),
                        user_id: target,
                    });
                } else {
                    self.follow_ups.push(FollowUp::Reject {
                        room_id: room_id.to_owned(),
                        user_id: target,
                        reason: "this agent belongs to another microDAO".into(),
                    });
                }
                return Ok("mirrored");
            }
        }
        let joined = match content.membership {
            MembershipState::Join => true,
            MembershipState::Leave | MembershipState::Ban => false,
            _ => return Ok("ignored_type"),
        };
        if joined && !is_agent {
            self.ensure_user(&target);
        }
        let role = if is_agent {
            "agent"
        } else {
            self.rooms
                .get(room_id)
                .expect("adopted")
                .state
                .power
                .role(target.as_str())
        };
        if is_agent {
            let change = if joined {
                SessionChange::Activate
            } else {
                SessionChange::Close
            };
            self.session(room_id, Some(target.as_str()), change, at);
            let work = self.rooms.get_mut(room_id).expect("adopted");
            if joined {
                work.state
                    .agents
                    .entry(target.to_string())
                    .or_insert(Respond::Mentions);
            } else {
                work.state.agents.remove(target.as_str());
            }
        }
        let key = (room_id.to_owned(), target);
        let entry = self.members.entry(key.clone()).or_insert_with(|| {
            self.member_order.push(key);
            Member {
                is_agent,
                join: None,
                leave: None,
            }
        });
        if joined {
            entry.join = Some((at, role));
            entry.leave = None;
        } else {
            entry.leave = Some(at);
        }
        Ok("mirrored")
    }

    /// Records a session change; consecutive activity of the same agent in the same channel
    /// collapses into one (the latest), so a burst of messages costs one statement.
    fn session(&mut self, room_id: &RoomId, agent: Option<&str>, change: SessionChange, at: Ts) {
        if let Some(last) = self
            .batch
            .sessions
            .iter_mut()
            .rev()
            .find(|op| op.room_id == room_id.as_str() && op.agent.as_deref() == agent)
            && last.change == SessionChange::Activate
            && change == SessionChange::Activate
        {
            last.at = last.at.max(at);
            return;
        }
        self.batch.sessions.push(SessionOp {
            room_id: room_id.to_string(),
            agent: agent.map(str::to_owned),
            change,
            at,
        });
    }

    /// Collapses the plan into the batch and the cache updates to apply after commit.
    pub(super) fn finish(mut self, txn: Option<(&str, String)>, event_count: usize) -> Finished {
        let mut batch = std::mem::take(&mut self.batch);
        batch.txn = txn.map(|(id, fingerprint)| {
            (
                id.to_owned(),
                fingerprint,
                i32::try_from(event_count).unwrap_or(i32::MAX),
            )
        });
        for (room_id, work) in &self.rooms {
            if work.dirty || work.create.is_some() || self.sync {
                batch.channels.push(ChannelWrite {
                    room_id: room_id.to_string(),
                    create: work.create.clone(),
                    name: work.state.name.clone(),
                    name_source: work.state.name_source,
                    topic: work.state.topic.clone(),
                    visibility: work.state.visibility,
                    visibility_pinned: work.state.visibility_pinned,
                    power_levels: work.state.power.clone(),
                    state_synced: self.sync,
                    is_direct: work.state.is_direct,
                });
            }
        }
        // New channels first so later statements can join on them; then stable order.
        batch.channels.sort_by_key(|c| c.create.is_none());
        for key in &self.member_order {
            let m = &self.members[key];
            if let Some((at, role)) = m.join {
                batch.joins.push(MemberJoin {
                    room_id: key.0.to_string(),
                    user_id: key.1.to_string(),
                    is_agent: m.is_agent,
                    role,
                    at,
                });
            }
            if let Some(at) = m.leave {
                batch.leaves.push(MemberLeave {
                    room_id: key.0.to_string(),
                    user_id: key.1.to_string(),
                    is_agent: m.is_agent,
                    at,
                });
            }
        }
        // Several edits of one message in one batch: the newest wins.
        let mut newest: HashMap<String, usize> = HashMap::new();
        for (i, e) in batch.edits.iter().enumerate() {
            match newest.get(&e.target_event_id) {
                Some(&j) if batch.edits[j].at > e.at => {}
                _ => {
                    newest.insert(e.target_event_id.clone(), i);
                }
            }
        }
        let keep: HashSet<usize> = newest.into_values().collect();
        batch.edits = batch
            .edits
            .into_iter()
            .enumerate()
            .filter(|(i, _)| keep.contains(i))
            .map(|(_, e)| e)
            .collect();
        batch.users = std::mem::take(&mut self.users);
        let rooms = self
            .rooms
            .into_iter()
            .map(|(id, w)| (id, w.state))
            .collect();
        let users = batch.users.clone();
        Finished {
            batch,
            rooms,
            users,
            follow_ups: self.follow_ups,
            candidates: self.candidates,
            redacted: self.redacted,
            outcomes: self.outcomes,
        }
    }
}

/// Applies name/topic/alias/join-rules content to a room state; returns whether it changed.
fn apply_state_content(state: &mut RoomState, kind: &str, content: &str) -> bool {
    let before = (
        state.name.clone(),
        state.topic.clone(),
        state.visibility,
        state.alias.clone(),
    );
    match kind {
        "m.room.name" => {
            if let Ok(c) = serde_json::from_str::<RoomNameEventContent>(content)
                && !c.name.trim().is_empty()
            {
                state.name = c.name.trim().to_owned();
                state.name_source = NameSource::Name;
            } else if state.name_source == NameSource::Name {
                // The name was removed: fall back to the alias, then the room id.
                state.name_source = NameSource::Id;
                if let Some(alias) = state.alias.clone() {
                    state.name = alias;
                    state.name_source = NameSource::Alias;
                }
            }
        }
        "m.room.topic" => {
            if let Ok(c) = serde_json::from_str::<RoomTopicEventContent>(content) {
                state.topic = Some(c.topic).filter(|t| !t.is_empty());
            }
        }
        "m.room.canonical_alias" => {
            if let Ok(c) = serde_json::from_str::<RoomCanonicalAliasEventContent>(content) {
                state.alias = c.alias.map(|a| a.to_string());
                if state.name_source <= NameSource::Alias
                    && let Some(alias) = &state.alias
                {
                    state.name = alias.clone();
                    state.name_source = NameSource::Alias;
                }
            }
        }
        "m.room.join_rules" => {
            if let Ok(c) = serde_json::from_str::<RoomJoinRulesEventContent>(content)
                && !state.visibility_pinned
            {
                state.visibility = match c.join_rule {
                    JoinRule::Public => Visibility::Public,
                    JoinRule::Restricted(_) | JoinRule::KnockRestricted(_) => Visibility::Microdao,
                    _ => Visibility::Private,
                };
            }
        }
        _ => {}
    }
    before
        != (
            state.name.clone(),
            state.topic.clone(),
            state.visibility,
            state.alias.clone(),
        )
}

/// `#general:example.org` → `general`.
fn alias_localpart(alias: &str) -> &str {
    alias
        .trim_start_matches('#')
        .split(':')
        .next()
        .unwrap_or(alias)
}

/// Lower-case ASCII letters, digits and single dashes; never empty.
pub fn slugify(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-');
    let out: String = out.chars().take(64).collect();
    if out.is_empty() {
        "channel".into()
    } else {
        out.trim_end_matches('-').to_owned()
    }
}

/// A bounded label for the events metric.
fn metric_kind(kind: &str) -> &'static str {
    match kind {
        "m.room.message" => "m.room.message",
        "m.sticker" => "m.sticker",
        "m.room.encrypted" => "m.room.encrypted",
        "m.room.redaction" => "m.room.redaction",
        "m.room.member" => "m.room.member",
        "m.room.name" => "m.room.name",
        "m.room.topic" => "m.room.topic",
        "m.room.canonical_alias" => "m.room.canonical_alias",
        "m.room.join_rules" => "m.room.join_rules",
        "m.room.power_levels" => "m.room.power_levels",
        "m.room.create" => "m.room.create",
        "m.room.tombstone" => "m.room.tombstone",
        DAARION_CHANNEL => DAARION_CHANNEL,
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(
            slugify("Quantum Garden / General"),
            "quantum-garden-general"
        );
        assert_eq!(slugify("!abc:example.org"), "abc-example-org");
        assert_eq!(slugify("***"), "channel");
    }
}
