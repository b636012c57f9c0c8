//! What one transaction changes: the mirror plans a [`Batch`] in memory and the store applies
//! it atomically. Rows are addressed by the ids the mirror's caches already hold (channel,
//! user and agent row ids) and by Matrix ids where a lookup is inherent (edit and redaction
//! targets), so a steady-state transaction needs no read before its write. The planner
//! resolves everything that would touch one row twice (an edit of a message of the same
//! batch, a join and a leave of one member, several session changes of one agent), so each
//! row kind can be written by one set-based statement.

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::{Deserialize, Serialize};

use crate::model::ids::{AgentId, ChannelId, MessageId, MicrodaoId, OutboxId, RunId, UserRowId};
use crate::{
    db::text::DbText,
    model::{
        Ts,
        enums::{JobKind, MemberRole, NameSource, PartKind, Visibility},
    },
};

/// Everything one appservice transaction (or one room-state read, or one delivered puppet send)
/// writes.
#[derive(Debug, Default)]
pub struct Batch {
    /// The transaction record that makes replays exact; `None` for writes that are not
    /// homeserver transactions.
    pub txn: Option<TxnRecord>,
    /// Channels created or changed.
    pub channels: Vec<ChannelWrite>,
    /// Matrix users that need a `users` row.
    pub users: Vec<NewUser>,
    /// Memberships that start, end, or both.
    pub members: Vec<MemberWrite>,
    /// Role changes of members the batch does not otherwise write.
    pub roles: Vec<RoleChange>,
    /// New messages (edits and redactions of messages of this batch already folded in).
    pub messages: Vec<NewMessage>,
    /// Edits of messages stored earlier (the newest per target).
    pub edits: Vec<Edit>,
    /// Redactions of messages stored earlier.
    pub redactions: Vec<Redaction>,
    /// Agent session changes: at most one per (agent, channel).
    pub sessions: Vec<SessionOp>,
    /// Follow-up work (joins, invite refusals), durable from this commit on.
    pub jobs: Vec<NewJob>,
    /// Messages that might address agents, evaluated by the run scheduler after commit.
    pub candidates: Vec<NewCandidate>,
    /// The puppet send this batch mirrors, marked sent in the same commit.
    pub sent: Option<SentRecord>,
    /// Audit records of the decisions this batch makes (invites accepted or refused).
    pub audits: Vec<super::audit::NewAudit>,
    /// Channels archived (a tombstone without a replacement, or the admin API).
    pub archives: Vec<ChannelArchive>,
    /// Channels that follow their room's replacement (a room upgrade).
    pub moves: Vec<RoomMove>,
}

impl Batch {
    /// Whether the batch writes nothing besides its transaction record.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
            && self.users.is_empty()
            && self.members.is_empty()
            && self.roles.is_empty()
            && self.messages.is_empty()
            && self.edits.is_empty()
            && self.redactions.is_empty()
            && self.sessions.is_empty()
            && self.jobs.is_empty()
            && self.candidates.is_empty()
            && self.sent.is_none()
            && self.audits.is_empty()
            && self.archives.is_empty()
            && self.moves.is_empty()
    }
}

/// `bridge_transactions`: a transaction is identified by a hash of its txnId (txnIds are opaque
/// and unbounded; a hash keeps the key small and free of NUL) and a fingerprint of its events.
#[derive(Debug, Clone)]
pub struct TxnRecord {
    /// SHA-256 (hex) of the txnId.
    pub txn_hash: String,
    /// SHA-256 (hex) of the events' ids: a retry carries the same events, while Synapse on
    /// SQLite reuses txnIds for new events after its own restart.
    pub fingerprint: String,
    /// Events the transaction carried.
    pub event_count: i32,
}

/// A person or an agent: who sent a message, who is a member, who created a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Party {
    /// A `users` row.
    User(UserRowId),
    /// An `agents` row.
    Agent(AgentId),
}

impl Party {
    /// The user row id, for a person.
    pub fn user(self) -> Option<UserRowId> {
        match self {
            Party::User(id) => Some(id),
            Party::Agent(_) => None,
        }
    }

    /// The agent id, for an agent.
    pub fn agent(self) -> Option<AgentId> {
        match self {
            Party::Agent(id) => Some(id),
            Party::User(_) => None,
        }
    }
}

/// User power levels of a room, as much as roles need.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PowerLevels {
    /// Explicit levels.
    #[serde(default)]
    pub users: std::collections::BTreeMap<String, i64>,
    /// Level of everyone else.
    #[serde(default)]
    pub users_default: i64,
    /// Room v12+ creators: infinite power, not listed in `users`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub creators: Vec<String>,
}

impl PowerLevels {
    /// The user's power level.
    pub fn level(&self, user: &str) -> i64 {
        if self.creators.iter().any(|c| c == user) {
            return i64::MAX;
        }
        self.users.get(user).copied().unwrap_or(self.users_default)
    }

    /// 100 → owner, ≥ 50 → admin, else member.
    pub fn role(&self, user: &str) -> MemberRole {
        match self.level(user) {
            l if l >= 100 => MemberRole::Owner,
            l if l >= 50 => MemberRole::Admin,
            _ => MemberRole::Member,
        }
    }
}

/// A mirrored room's channel row (and `bridge_rooms` row) as it should be after the batch.
#[derive(Debug, Clone)]
pub struct ChannelWrite {
    /// The channel (a fresh id when [`ChannelWrite::create`] is set).
    pub channel_id: ChannelId,
    /// Its room.
    pub room_id: OwnedRoomId,
    /// Set when the channel is created by this batch.
    pub create: Option<NewChannel>,
    /// `channels.name`.
    pub name: DbText,
    /// Where the name came from.
    pub name_source: NameSource,
    /// The canonical alias, kept so removing the name can fall back to it.
    pub alias: Option<DbText>,
    /// `channels.topic`.
    pub topic: Option<DbText>,
    /// `channels.visibility`.
    pub visibility: Visibility,
    /// Visibility set by `city.daarion.channel`; join rules no longer change it.
    pub visibility_pinned: bool,
    /// The room's power levels.
    pub power_levels: PowerLevels,
    /// Whether this write comes from a full state read (records `state_synced_at`).
    pub state_synced: bool,
    /// An invite marked the room as a direct chat.
    pub is_direct: bool,
}

/// The parts of a channel only its creation writes.
#[derive(Debug, Clone)]
pub struct NewChannel {
    /// The owning microDAO.
    pub microdao_id: MicrodaoId,
    /// The slug, already unique within the microDAO (the planner read the taken ones).
    pub slug: DbText,
    /// Who created the room, when known.
    pub created_by: Option<Party>,
}

/// A `users` row for a Matrix user met for the first time.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// The new row's id.
    pub id: UserRowId,
    /// The Matrix user.
    pub matrix_id: OwnedUserId,
}

/// A membership change: a join (`joined_at`), a leave (`left_at`), or a join followed by a
/// leave within the batch (both).
#[derive(Debug, Clone)]
pub struct MemberWrite {
    /// The channel.
    pub channel_id: ChannelId,
    /// The member.
    pub party: Party,
    /// Role after the change.
    pub role: MemberRole,
    /// When the member (re)joined, if it did in this batch.
    pub joined_at: Option<Ts>,
    /// When the member left, if it did in this batch (after any join of the batch).
    pub left_at: Option<Ts>,
}

/// A person's role changed (power levels) without a membership change in the batch.
#[derive(Debug, Clone)]
pub struct RoleChange {
    /// The channel.
    pub channel_id: ChannelId,
    /// The person.
    pub user_id: UserRowId,
    /// The new role.
    pub role: MemberRole,
}

/// A message to insert (ignored when its event id is already stored).
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The new row's id.
    pub id: MessageId,
    /// The channel.
    pub channel_id: ChannelId,
    /// The Matrix event.
    pub event_id: OwnedEventId,
    /// Who sent it.
    pub sender: Party,
    /// `content_preview`.
    pub preview: DbText,
    /// `origin_server_ts`.
    pub at: Ts,
    /// Root of the thread it is in.
    pub thread_root: Option<OwnedEventId>,
    /// Set when an edit of the same batch applies to it.
    pub edited_at: Option<Ts>,
    /// Set when a redaction of the same batch removes it.
    pub redacted_at: Option<Ts>,
    /// Its `message_parts`, in order (empty for plain text, and for a message redacted in the
    /// same batch: a redacted message keeps no content).
    pub parts: Vec<NewPart>,
}

/// One part of a new message (`message_parts`): what it is and where its file lives, never the
/// bytes or an encrypted file's key. Its position is its index in [`NewMessage::parts`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewPart {
    /// What it is.
    pub kind: PartKind,
    /// The MIME type the event declares.
    pub mimetype: Option<DbText>,
    /// The size in bytes the event declares.
    pub size: Option<i64>,
    /// The file name.
    pub name: Option<DbText>,
    /// Width in pixels.
    pub width: Option<i32>,
    /// Height in pixels.
    pub height: Option<i32>,
    /// Duration in milliseconds.
    pub duration_ms: Option<i64>,
    /// A voice message (MSC3245).
    pub voice: bool,
    /// Where the file lives; `None` when the event named no usable source.
    pub source: Option<PartSource>,
    /// The text of a text part (bounded by the planner).
    pub text: Option<DbText>,
}

impl NewPart {
    /// A part of `kind` with nothing else known.
    pub fn new(kind: PartKind) -> Self {
        Self {
            kind,
            mimetype: None,
            size: None,
            name: None,
            width: None,
            height: None,
            duration_ms: None,
            voice: false,
            source: None,
            text: None,
        }
    }
}

/// Where a part's file lives (`message_parts.source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartSource {
    /// A plaintext file: its (valid) `mxc://` URI.
    Mxc(String),
    /// An `EncryptedFile`: stored as the word `encrypted`, nothing of its URI or key.
    Encrypted,
}

impl PartSource {
    /// The column's value.
    pub fn as_str(&self) -> &str {
        match self {
            PartSource::Mxc(uri) => uri,
            PartSource::Encrypted => "encrypted",
        }
    }
}

/// An edit of a message stored earlier: applied only by the original sender, never to a
/// redacted message, never older over newer.
#[derive(Debug, Clone)]
pub struct Edit {
    /// The edited message.
    pub target: OwnedEventId,
    /// Who edited it.
    pub sender: Party,
    /// The new preview.
    pub preview: DbText,
    /// `origin_server_ts` of the edit.
    pub at: Ts,
}

/// A redaction of a message stored earlier.
#[derive(Debug, Clone)]
pub struct Redaction {
    /// The redacted event.
    pub target: OwnedEventId,
    /// `origin_server_ts` of the redaction.
    pub at: Ts,
}

/// A change to agent sessions of a channel.
#[derive(Debug, Clone)]
pub struct SessionOp {
    /// The channel.
    pub channel_id: ChannelId,
    /// The agent; `None` with [`SessionChange::Close`] closes every open session of the channel
    /// (room tombstoned).
    pub agent: Option<AgentId>,
    /// What happens.
    pub change: SessionChange,
    /// When.
    pub at: Ts,
}

/// What happens to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionChange {
    /// Open a session if none is open, or mark the open one active with this activity.
    Activate,
    /// Close the open session.
    Close,
}

/// A channel archived: a `bridge_channel_archives` row is written once (an archived channel stays
/// archived, with its history), and `chat.channel.archived` is published then.
#[derive(Debug, Clone)]
pub struct ChannelArchive {
    /// The channel.
    pub channel_id: ChannelId,
    /// Its room (for the event).
    pub room_id: OwnedRoomId,
    /// `admin` or `tombstone` (for the event).
    pub reason: &'static str,
}

/// A channel following a room upgrade: `channels.matrix_room_id` moves from `from` to `to`
/// (only if it still is `from`), and `from` is kept in `bridge_room_aliases` so that events
/// still arriving for it, and old messages, resolve to the channel.
#[derive(Debug, Clone)]
pub struct RoomMove {
    /// The channel.
    pub channel_id: ChannelId,
    /// The tombstoned room.
    pub from: OwnedRoomId,
    /// Its replacement.
    pub to: OwnedRoomId,
}

/// A follow-up job, durable from the commit of the transaction that asked for it.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// What to do.
    pub kind: JobKind,
    /// In which room.
    pub room_id: OwnedRoomId,
    /// As whom (the bot or a puppet).
    pub user_id: OwnedUserId,
    /// Why, for refusals.
    pub reason: Option<DbText>,
    /// The command's event (commands; at most one job per event, so replays add none).
    pub event_id: Option<ruma::OwnedEventId>,
    /// The command text (commands).
    pub body: Option<DbText>,
}

/// A mirrored message in a room with agents: the run scheduler decides after commit whom it
/// addresses. Durable, so a question is never lost between commit and answer.
#[derive(Debug, Clone)]
pub struct NewCandidate {
    /// The channel.
    pub channel_id: ChannelId,
    /// The room.
    pub room_id: OwnedRoomId,
    /// The message.
    pub event_id: OwnedEventId,
    /// `origin_server_ts`.
    pub at: Ts,
    /// What the trigger rules read (and the runtime receives).
    pub payload: CandidatePayload,
}

/// What the trigger rules need of a message, stored with its candidate row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CandidatePayload {
    /// The sender.
    pub sender: OwnedUserId,
    /// Sent by an agent puppet (counts toward the agent→agent chain).
    pub sender_is_agent: bool,
    /// The plain body (reply fallback removed).
    pub body: String,
    /// The HTML body, if any (legacy pills).
    #[serde(default)]
    pub formatted_body: Option<String>,
    /// `m.mentions.user_ids`; `None` when the event has no `m.mentions` (an old client).
    #[serde(default)]
    pub mentions: Option<Vec<OwnedUserId>>,
    /// The event it replies to.
    #[serde(default)]
    pub reply_to: Option<OwnedEventId>,
    /// The thread it is in.
    #[serde(default)]
    pub thread_root: Option<OwnedEventId>,
    /// The room is a direct chat (an invite said so).
    #[serde(default)]
    pub is_direct: bool,
    /// The event as the homeserver sent it (what runtimes receive), kept as raw JSON.
    pub event: Box<serde_json::value::RawValue>,
}

/// A puppet send the homeserver accepted.
#[derive(Debug, Clone)]
pub struct SentRecord {
    /// The outbox item.
    pub outbox_id: OutboxId,
    /// The event the homeserver created.
    pub event_id: OwnedEventId,
    /// The run whose answer it is: its `reply_event_id` is recorded in the same commit, before
    /// the homeserver's echo can address another agent (the agent→agent chain reads it).
    pub run: Option<RunId>,
}
