//! Memberships (people and agents), invites the bridge answers (durable follow-up jobs), and
//! agent sessions. Several changes of one member, or of one agent's session, within a batch
//! collapse into one row write.

use foldhash::HashMap;

use ruma::{
    RoomId, UserId,
    events::room::member::{MembershipState, RoomMemberEventContent},
};

use super::{Outcome, Planner};
use crate::{
    bridge::mirror::event::Envelope,
    db::{
        Batch, MemberWrite, NewJob, Party, RoleChange, SessionChange, SessionOp, audit::NewAudit,
        text::DbText,
    },
    model::{
        ActorType, AuditOutcome, JobKind, MemberRole, Ts, Visibility,
        ids::{AgentId, ChannelId},
    },
};

/// One member's changes within the batch.
struct Member {
    role: MemberRole,
    join: Option<Ts>,
    leave: Option<Ts>,
}

/// The batch's membership changes, one entry per (channel, party) in first-seen order: what
/// this module alone reads and writes while planning, folded into member rows at the end.
#[derive(Default)]
pub(super) struct Members {
    changes: HashMap<(ChannelId, Party), Member>,
    order: Vec<(ChannelId, Party)>,
}

impl Members {
    /// Records that `party` joined (or left) `channel` at `at` with `role`; the last change of
    /// a member in the batch wins, and a leave keeps the join it follows.
    fn record(&mut self, key: (ChannelId, Party), role: MemberRole, joined: bool, at: Ts) {
        let entry = self.changes.entry(key).or_insert_with(|| {
            self.order.push(key);
            Member {
                role,
                join: None,
                leave: None,
            }
        });
        entry.role = role;
        if joined {
            entry.join = Some(at);
            entry.leave = None;
        } else {
            entry.leave = Some(at);
        }
    }

    /// Collapses memberships and roles into `b`: one write per member; the roles of members
    /// written anyway go into that write (a member who left keeps the role it had), the rest
    /// stay role changes.
    pub(super) fn finish(self, b: &mut Batch) {
        let mut roles: HashMap<(ChannelId, Party), MemberRole> = HashMap::default();
        for r in b.roles.drain(..) {
            roles.insert((r.channel_id, Party::User(r.user_id)), r.role);
        }
        for key in &self.order {
            let m = &self.changes[key];
            let role = match (m.join, roles.remove(key)) {
                (Some(_), Some(changed)) => changed,
                (None, Some(_)) => m.role,
                (_, None) => m.role,
            };
            b.members.push(MemberWrite {
                channel_id: key.0,
                party: key.1,
                role,
                joined_at: m.join,
                left_at: m.leave,
            });
        }
        let mut remaining: Vec<_> = roles.into_iter().collect();
        remaining.sort_by_key(|((c, p), _)| (*c, p.user()));
        for ((channel_id, party), role) in remaining {
            if let Party::User(user_id) = party {
                b.roles.push(RoleChange {
                    channel_id,
                    user_id,
                    role,
                });
            }
        }
    }
}

/// Collapses session changes in `b`: one per (agent, channel), the last change winning with the
/// latest activity, and nothing else for a tombstoned channel.
pub(super) fn fold_sessions(b: &mut Batch) {
    let tombstoned: Vec<ChannelId> = b
        .sessions
        .iter()
        .filter(|o| o.agent.is_none())
        .map(|o| o.channel_id)
        .collect();
    let mut last: HashMap<(ChannelId, Option<AgentId>), SessionOp> = HashMap::default();
    let mut order = Vec::new();
    for op in b.sessions.drain(..) {
        if op.agent.is_some() && tombstoned.contains(&op.channel_id) {
            continue;
        }
        let key = (op.channel_id, op.agent);
        match last.get_mut(&key) {
            Some(prev) => {
                let at = if prev.change == op.change {
                    prev.at.max(op.at)
                } else {
                    op.at
                };
                *prev = SessionOp { at, ..op };
            }
            None => {
                order.push(key);
                last.insert(key, op);
            }
        }
    }
    b.sessions = order.into_iter().filter_map(|k| last.remove(&k)).collect();
}

impl Planner<'_> {
    pub(super) fn member(
        &mut self,
        room_id: &RoomId,
        env: &Envelope<'_>,
        at: Ts,
    ) -> serde_json::Result<Outcome> {
        let content: RoomMemberEventContent = env.content()?;
        let Some(target) = env.state_key.as_deref().and_then(|s| UserId::parse(s).ok()) else {
            return Ok(Outcome::Malformed);
        };
        if target == self.namespace.bot() {
            if content.membership == MembershipState::Invite && !self.sync {
                self.job(JobKind::Join, room_id, &target, None, &env.sender);
            }
            return Ok(Outcome::Mirrored);
        }
        let agent = if self.namespace.is_puppet(&target) {
            let Some(agent) = self.registry.get(&target) else {
                return Ok(Outcome::Skipped);
            };
            if content.membership == MembershipState::Invite && !self.sync {
                let microdao = self.rooms.get(room_id).map(|w| w.state.microdao_id);
                // A `microdao` channel is for its microDAO's members: of agents, only the
                // microDAO's own (an unscoped agent may join public and private channels).
                let members_only = self
                    .rooms
                    .get(room_id)
                    .is_some_and(|w| w.state.visibility == Visibility::Microdao);
                if content.is_direct == Some(true)
                    && let Some(work) = self.work(room_id)
                    && !work.state.is_direct
                {
                    work.state_mut().is_direct = true;
                    work.dirty = true;
                }
                if !agent.active {
                    self.job(
                        JobKind::Reject,
                        room_id,
                        &target,
                        Some("this agent is disabled"),
                        &env.sender,
                    );
                } else if members_only && agent.microdao_id != microdao {
                    self.job(
                        JobKind::Reject,
                        room_id,
                        &target,
                        Some("this channel is for its microDAO's members: only the microDAO's own agents join it"),
                        &env.sender,
                    );
                } else if agent.microdao_id.is_none() || agent.microdao_id == microdao {
                    self.job(JobKind::Join, room_id, &target, None, &env.sender);
                } else {
                    self.job(
                        JobKind::Reject,
                        room_id,
                        &target,
                        Some("this agent belongs to another microDAO"),
                        &env.sender,
                    );
                }
                return Ok(Outcome::Mirrored);
            }
            Some(agent.id)
        } else {
            None
        };
        let joined = match content.membership {
            MembershipState::Join => true,
            MembershipState::Leave | MembershipState::Ban => false,
            _ => return Ok(Outcome::IgnoredType),
        };
        let Some(work) = self.rooms.get(room_id) else {
            return Ok(Outcome::IgnoredRoom);
        };
        let channel = work.state.channel_id;
        let (party, role) = match agent {
            Some(agent) => (Party::Agent(agent), MemberRole::Agent),
            None => {
                let role = work.state.power.role(target.as_str());
                (Party::User(self.people.person(&target)), role)
            }
        };
        if let Some(agent) = agent {
            let change = if joined {
                SessionChange::Activate
            } else {
                SessionChange::Close
            };
            self.session(channel, Some(agent), change, at);
            if let Some(work) = self.work(room_id) {
                if joined {
                    work.state_mut().agents.insert(agent);
                } else {
                    work.state_mut().agents.remove(&agent);
                }
            }
        }
        self.members.record((channel, party), role, joined, at);
        Ok(Outcome::Mirrored)
    }

    /// Queues a follow-up job (durable from the commit on) answering `inviter`'s invite, and
    /// audits the decision in the same commit.
    pub(super) fn job(
        &mut self,
        kind: JobKind,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<&str>,
        inviter: &UserId,
    ) {
        let (action, outcome) = match kind {
            JobKind::Join => ("invite.accepted", AuditOutcome::Allowed),
            JobKind::Reject => ("invite.refused", AuditOutcome::Denied),
            // Commands are audited when they run (the planner only queues them).
            JobKind::Command => ("command.queued", AuditOutcome::Allowed),
        };
        let actor = if self.namespace.is_puppet(inviter) {
            ActorType::Agent
        } else {
            ActorType::User
        };
        self.batch.audits.push(
            NewAudit::new(
                actor,
                Some(inviter.as_str()),
                action,
                Some(room_id.as_str()),
                outcome,
            )
            .details(serde_json::json!({ "invitee": user.as_str(), "reason": reason })),
        );
        self.batch.jobs.push(NewJob {
            kind,
            room_id: room_id.to_owned(),
            user_id: user.to_owned(),
            reason: reason.map(DbText::new),
            event_id: None,
            body: None,
        });
    }

    /// Records a session change.
    pub(super) fn session(
        &mut self,
        channel: ChannelId,
        agent: Option<AgentId>,
        change: SessionChange,
        at: Ts,
    ) {
        self.batch.sessions.push(SessionOp {
            channel_id: channel,
            agent,
            change,
            at,
        });
    }

    /// A person's role changed with the power levels (someone without a `users` row is no
    /// member: nothing to change).
    pub(super) fn role_change(&mut self, channel: ChannelId, user: &UserId, role: MemberRole) {
        let Some(user_id) = self.people.row(user) else {
            return;
        };
        self.batch.roles.push(RoleChange {
            channel_id: channel,
            user_id,
            role,
        });
    }
}
