//! The planner: turns one transaction's events (or a room's state) into a [`Batch`] of DAARION
//! rows, in the order received, from room states and senders loaded beforehand. It is pure
//! (no I/O), so the transaction → plan path can be fuzzed and property-tested without a
//! database. `Planner` holds the plan's parts; each event family's handlers live in the
//! submodule of that family (`route` dispatches): `adopt` (which rooms become channels),
//! `messages` (messages and their parts, edits, redactions, trigger candidates), `members`
//! (memberships and agent sessions), `state` (names, topics, visibility, power levels). State
//! that one family alone keeps is that family's own type (`members::Members`,
//! `people::People` for `users` rows), and each family folds its rows at the end
//! (`Members::finish`, `fold_sessions`, `fold_messages`) so that no row is written twice by one
//! statement.

mod adopt;
#[doc(hidden)]
pub mod fuzz;
mod members;
pub(crate) mod messages;
mod people;
mod route;
mod state;
mod upgrade;

use std::{collections::BTreeSet, sync::Arc};

use foldhash::{HashMap, HashSet};

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::value::RawValue;

pub use self::state::slugify;
use self::{members::Members, people::People};
use super::{
    agents::AgentRegistry,
    mirror::{cache::RoomState, event::Envelope},
};
use crate::{
    db::{Batch, ChannelWrite, NewChannel, NewUser, Party, text::DbText},
    model::{
        Namespace,
        ids::{MicrodaoId, UserRowId},
    },
};

/// The mirror's settings the planner applies.
#[derive(Debug, Clone)]
pub struct MirrorSettings {
    /// `content_preview` length in grapheme clusters.
    pub preview_chars: usize,
    /// Whether edits may address agents.
    pub answer_edits: bool,
    /// What starts a bot command (`!daarion`).
    pub command_prefix: String,
    /// Where rooms nothing else places go.
    pub default_microdao: Option<MicrodaoId>,
}

/// What one event did, for the events metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written (or its effect planned).
    Mirrored,
    /// Already planned in this transaction.
    Duplicate,
    /// Deliberately not mirrored (the bot's own messages, unknown puppets).
    Skipped,
    /// Its content does not parse.
    Malformed,
    /// An event type the mirror does not handle.
    IgnoredType,
    /// A room the bridge does not mirror.
    IgnoredRoom,
    /// An id holds a character no Matrix id may hold.
    InvalidId,
    /// The database refused it when applied alone.
    Rejected,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Mirrored => "mirrored",
            Outcome::Duplicate => "duplicate",
            Outcome::Skipped => "skipped",
            Outcome::Malformed => "malformed",
            Outcome::IgnoredType => "ignored_type",
            Outcome::IgnoredRoom => "ignored_room",
            Outcome::InvalidId => "invalid_id",
            Outcome::Rejected => "rejected",
        }
    }
}

/// What the planner starts from.
pub(crate) struct PlanInput<'a> {
    /// The bridge's users.
    pub namespace: &'a Namespace,
    /// The agents.
    pub registry: &'a AgentRegistry,
    /// Settings.
    pub settings: &'a MirrorSettings,
    /// States of the mirrored rooms the events touch.
    pub rooms: HashMap<OwnedRoomId, Arc<RoomState>>,
    /// `users` rows of the senders and members the events touch, where they exist.
    pub users: HashMap<OwnedUserId, UserRowId>,
    /// microDAOs named by `city.daarion.channel` events.
    pub microdaos: HashMap<String, MicrodaoId>,
    /// A full state read (not a transaction): no follow-ups, no triggers.
    pub sync: bool,
}

/// A finished plan: the batch to write and what the caches learn once it is committed.
pub(crate) struct Plan {
    /// The rows.
    pub batch: Batch,
    /// Room states after the batch.
    pub rooms: Vec<(OwnedRoomId, Arc<RoomState>)>,
    /// `users` rows the batch creates.
    pub users: Vec<(OwnedUserId, UserRowId)>,
    /// (event type, outcome) per event.
    pub outcomes: Vec<(&'static str, Outcome)>,
    /// The outcome of each media part planned (`parts::Parts::outcome`).
    pub media: Vec<&'static str>,
    /// Whether a trigger candidate or follow-up was planned (the workers are woken).
    pub wakes: Wakes,
    /// Rooms whose events were ignored (not mirrored).
    pub ignored: Vec<OwnedRoomId>,
}

/// Which workers a committed plan has work for.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Wakes {
    /// Follow-up jobs were queued.
    pub jobs: bool,
    /// Trigger candidates were queued.
    pub runs: bool,
}

/// A room of the plan.
struct Work {
    /// Shared with the cache until an event changes it (see [`Work::state_mut`]).
    state: Arc<RoomState>,
    create: Option<NewChannel>,
    dirty: bool,
}

impl Work {
    /// The room's state to change: copied from the cache's shared one on the first change
    /// (copy on write), so a transaction that changes nothing copies nothing.
    fn state_mut(&mut self) -> &mut RoomState {
        Arc::make_mut(&mut self.state)
    }
}

/// The planner's working state for one transaction.
pub(crate) struct Planner<'a> {
    namespace: &'a Namespace,
    registry: &'a AgentRegistry,
    settings: &'a MirrorSettings,
    microdaos: HashMap<String, MicrodaoId>,
    sync: bool,
    rooms: HashMap<OwnedRoomId, Work>,
    /// `users` rows (`people.rs`).
    people: People,
    /// Membership changes (`members.rs`).
    members: Members,
    /// What the batch writes so far; each submodule adds its rows, `finish` folds them.
    batch: Batch,
    event_ids: HashSet<OwnedEventId>,
    outcomes: Vec<(&'static str, Outcome)>,
    /// The outcome of each media part (`messages.rs`).
    media: Vec<&'static str>,
    ignored: Vec<OwnedRoomId>,
}

impl<'a> Planner<'a> {
    /// A planner over what was loaded.
    pub(crate) fn new(input: PlanInput<'a>) -> Self {
        Self {
            namespace: input.namespace,
            registry: input.registry,
            settings: input.settings,
            microdaos: input.microdaos,
            sync: input.sync,
            rooms: input
                .rooms
                .into_iter()
                .map(|(id, state)| {
                    (
                        id,
                        Work {
                            state,
                            create: None,
                            dirty: false,
                        },
                    )
                })
                .collect(),
            people: People::new(input.users),
            members: Members::default(),
            batch: Batch::default(),
            event_ids: HashSet::default(),
            outcomes: Vec::new(),
            media: Vec::new(),
            ignored: Vec::new(),
        }
    }

    /// Plans one event (`raw` is the event as the homeserver sent it, for runtimes).
    pub(crate) fn event(&mut self, env: &Envelope<'_>, raw: &RawValue) {
        let kind = metric_kind(&env.kind);
        let Some(room_id) = env.room_id.as_deref() else {
            self.outcomes.push((kind, Outcome::Malformed));
            return;
        };
        if env.has_invalid_id() {
            tracing::warn!(room_id = %room_id.as_str().escape_debug(), "skipping an event whose ids hold NUL");
            self.outcomes.push((kind, Outcome::InvalidId));
            return;
        }
        // The same event twice in one transaction is planned once (whatever its type).
        if !self.event_ids.insert(env.event_id.clone()) {
            self.outcomes.push((kind, Outcome::Duplicate));
            return;
        }
        if !self.rooms.contains_key(room_id) && !self.try_adopt(room_id, env) {
            self.outcomes.push((kind, Outcome::IgnoredRoom));
            if !self.ignored.iter().any(|r| r == room_id) {
                self.ignored.push(room_id.to_owned());
            }
            return;
        }
        let outcome = match self.route(room_id, env, raw) {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::warn!(%room_id, event_id = %env.event_id, kind = %env.kind, %error, "skipping malformed event content");
                Outcome::Malformed
            }
        };
        self.outcomes.push((kind, outcome));
    }

    /// Counts an event that never reached the planner (it did not parse).
    pub(crate) fn count_unparsed(&mut self) {
        self.outcomes.push(("unknown", Outcome::Malformed));
    }

    /// The party behind a Matrix user: an agent, or a person (never the bridge bot or an
    /// unknown puppet, which are `None`).
    fn party(&mut self, user: &UserId) -> Option<Party> {
        if self.namespace.is_puppet(user) {
            return self.registry.get(user).map(|a| Party::Agent(a.id));
        }
        if user == self.namespace.bot() {
            return None;
        }
        Some(Party::User(self.people.person(user)))
    }

    fn work(&mut self, room: &RoomId) -> Option<&mut Work> {
        self.rooms.get_mut(room)
    }

    /// Collapses the plan into the batch and the cache updates to apply after commit.
    pub(crate) fn finish(mut self, txn: Option<crate::db::TxnRecord>) -> Plan {
        self.batch.txn = txn;
        let mut channels = Vec::new();
        for (room_id, work) in &self.rooms {
            if work.dirty || work.create.is_some() || self.sync {
                let s = &work.state;
                // A channel that followed a room upgrade in this transaction is in the plan
                // under both rooms: one statement may write its rows only once.
                if channels
                    .iter()
                    .any(|c: &ChannelWrite| c.channel_id == s.channel_id)
                {
                    continue;
                }
                channels.push(ChannelWrite {
                    channel_id: s.channel_id,
                    room_id: room_id.clone(),
                    create: work.create.clone(),
                    name: DbText::new(s.name.as_str()),
                    name_source: s.name_source,
                    alias: s.alias.as_deref().map(DbText::new),
                    topic: s.topic.as_deref().map(DbText::new),
                    visibility: s.visibility,
                    visibility_pinned: s.visibility_pinned,
                    power_levels: s.power.clone(),
                    state_synced: self.sync,
                    is_direct: s.is_direct,
                });
            }
        }
        self.batch.channels = channels;
        std::mem::take(&mut self.members).finish(&mut self.batch);
        members::fold_sessions(&mut self.batch);
        messages::fold_messages(&mut self.batch);
        let users = self.people.into_new();
        self.batch.users = users
            .iter()
            .map(|(matrix_id, id)| NewUser {
                id: *id,
                matrix_id: matrix_id.clone(),
            })
            .collect();
        let wakes = Wakes {
            jobs: !self.batch.jobs.is_empty(),
            // Redactions cancel what they must in the statement itself; only new candidates
            // give the scheduler work.
            runs: !self.batch.candidates.is_empty(),
        };
        Plan {
            batch: self.batch,
            rooms: self
                .rooms
                .into_iter()
                .map(|(id, w)| (id, w.state))
                .collect(),
            users,
            outcomes: self.outcomes,
            media: self.media,
            wakes,
            ignored: self.ignored,
        }
    }
}

/// Rooms and users an event list touches (what must be loaded first): senders, membership
/// targets, and the users power levels name (their roles may change).
pub(crate) fn touched<'e>(
    envelopes: &[&'e Envelope<'e>],
) -> (BTreeSet<&'e RoomId>, BTreeSet<String>) {
    let mut rooms = BTreeSet::new();
    let mut users = BTreeSet::new();
    for env in envelopes {
        if let Some(room) = &env.room_id {
            rooms.insert(room.as_ref());
        }
        users.insert(env.sender.to_string());
        match (&*env.kind, env.state_key.as_deref()) {
            ("m.room.member", Some(key)) => {
                users.insert(key.to_owned());
            }
            ("m.room.power_levels", Some(_)) => {
                if let Ok(c) = env.content::<PowerLevelUsers>() {
                    users.extend(c.users.into_keys());
                }
            }
            _ => {}
        }
    }
    (rooms, users)
}

/// The users a power levels event names.
#[derive(serde::Deserialize)]
struct PowerLevelUsers {
    #[serde(default)]
    users: std::collections::BTreeMap<String, serde::de::IgnoredAny>,
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
        super::mirror::event::DAARION_CHANNEL => super::mirror::event::DAARION_CHANNEL,
        _ => "other",
    }
}
