//! What one transaction changes, expressed in Matrix ids: the mirror plans a [`Batch`] in memory
//! and the store applies it in one database transaction, resolving ids with joins, so the plan
//! never holds a row id that a concurrent writer could have made stale.

use serde::{Deserialize, Serialize};

use super::types::Ts;
use crate::ids::MicrodaoId;

/// Everything one appservice transaction (or one room-state sync) writes.
#[derive(Debug, Default)]
pub struct Batch {
    /// The transaction to record (txnId, fingerprint of its events, event count); `None` for
    /// writes that are not homeserver transactions.
    pub txn: Option<(String, String, i32)>,
    pub channels: Vec<ChannelWrite>,
    /// Matrix users that need a `users` row (inserted unless one with that `matrix_id` exists).
    pub users: Vec<String>,
    pub joins: Vec<MemberJoin>,
    pub leaves: Vec<MemberLeave>,
    pub roles: Vec<RoleChange>,
    pub messages: Vec<NewMessage>,
    pub edits: Vec<Edit>,
    pub redactions: Vec<Redaction>,
    /// Agent session changes, in event order.
    pub sessions: Vec<SessionOp>,
}

impl Batch {
    /// Whether the batch writes any DAARION row.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
            && self.users.is_empty()
            && self.joins.is_empty()
            && self.leaves.is_empty()
            && self.roles.is_empty()
            && self.messages.is_empty()
            && self.edits.is_empty()
            && self.redactions.is_empty()
            && self.sessions.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    Public,
    Private,
    Microdao,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
            Visibility::Microdao => "microdao",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "public" => Some(Self::Public),
            "private" => Some(Self::Private),
            "microdao" => Some(Self::Microdao),
            _ => None,
        }
    }
}

/// Where a channel's name came from; a weaker source never overrides a stronger one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NameSource {
    Id,
    Alias,
    Platform,
    Name,
}

impl NameSource {
    pub fn as_str(self) -> &'static str {
        match self {
            NameSource::Id => "id",
            NameSource::Alias => "alias",
            NameSource::Platform => "platform",
            NameSource::Name => "name",
        }
    }
    pub fn parse(s: &str) -> Self {
        match s {
            "id" => Self::Id,
            "alias" => Self::Alias,
            "name" => Self::Name,
            _ => Self::Platform,
        }
    }
}

/// User power levels of a room, as much as roles need.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PowerLevels {
    #[serde(default)]
    pub users: std::collections::BTreeMap<String, i64>,
    #[serde(default)]
    pub users_default: i64,
    /// Room v12+ creators: infinite power, not listed in `users`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub creators: Vec<String>,
}

impl PowerLevels {
    pub fn level(&self, user: &str) -> i64 {
        if self.creators.iter().any(|c| c == user) {
            return i64::MAX;
        }
        self.users.get(user).copied().unwrap_or(self.users_default)
    }
    /// 100 → owner, ≥ 50 → admin, else member.
    pub fn role(&self, user: &str) -> &'static str {
        match self.level(user) {
            l if l >= 100 => "owner",
            l if l >= 50 => "admin",
            _ => "member",
        }
    }
}

/// A mirrored room's channel row as it should be after the batch.
#[derive(Debug, Clone)]
pub struct ChannelWrite {
    pub room_id: String,
    /// Set when the channel is created by this batch.
    pub create: Option<NewChannel>,
    pub name: String,
    pub name_source: NameSource,
    pub topic: Option<String>,
    pub visibility: Visibility,
    pub visibility_pinned: bool,
    pub power_levels: PowerLevels,
    /// Whether this write comes from a full state read (records `state_synced_at`).
    pub state_synced: bool,
    /// An invite marked the room as a direct chat.
    pub is_direct: bool,
}

#[derive(Debug, Clone)]
pub struct NewChannel {
    pub microdao_id: MicrodaoId,
    /// Preferred slug; the store appends `-2`, `-3`, … when it is taken in the microDAO.
    pub slug: String,
    pub created_by_user: Option<String>,
    pub created_by_agent: Option<String>,
}

#[derive(Debug, Clone)]
pub struct MemberJoin {
    pub room_id: String,
    pub user_id: String,
    pub is_agent: bool,
    pub role: &'static str,
    pub at: Ts,
}

#[derive(Debug, Clone)]
pub struct MemberLeave {
    pub room_id: String,
    pub user_id: String,
    pub is_agent: bool,
    pub at: Ts,
}

#[derive(Debug, Clone)]
pub struct RoleChange {
    pub room_id: String,
    pub user_id: String,
    pub role: &'static str,
}

#[derive(Debug, Clone)]
pub struct NewMessage {
    pub room_id: String,
    pub event_id: String,
    pub sender: String,
    pub is_agent: bool,
    pub preview: String,
    pub at: Ts,
    /// Root of the thread the message is in.
    pub thread_root: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Edit {
    pub target_event_id: String,
    pub sender: String,
    pub preview: String,
    pub at: Ts,
}

#[derive(Debug, Clone)]
pub struct Redaction {
    pub target_event_id: String,
    pub at: Ts,
}

/// A change to an agent's session in a channel.
#[derive(Debug, Clone)]
pub struct SessionOp {
    pub room_id: String,
    /// The agent's Matrix id; `None` with [`SessionChange::Close`] closes every open session of
    /// the channel (room tombstoned).
    pub agent: Option<String>,
    pub change: SessionChange,
    pub at: Ts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionChange {
    /// Open a session if none is open, or mark the open one active with this activity.
    Activate,
    Close,
}
