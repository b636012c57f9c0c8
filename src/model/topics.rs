//! The events the bridge publishes: topics, their versioned payloads, and the draft of an outbox
//! row (what a writer appends inside its own database transaction).

use serde::Serialize;
use uuid::Uuid;

use crate::model::{
    KeySubject, MemberRole, PartKind, RunStatus, SenderType, SessionStatus, Ts, Visibility,
    ids::{AccessKeyId, AgentId, ChannelId, MessageId, MicrodaoId, RunId, SessionId, UserRowId},
};

/// The payload version every payload carries as `"v"`. A consumer that sees a higher version
/// than it knows may still read the fields it knows: versions only ever add fields.
pub const PAYLOAD_VERSION: u32 = 1;

/// What happened. The NATS subject is `<subject_prefix>.<topic>`, e.g.
/// `daarion.chat.message.created`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A message was mirrored.
    MessageCreated,
    /// A message was edited (`m.replace`).
    MessageEdited,
    /// A message was redacted.
    MessageRedacted,
    /// A room became a channel.
    ChannelCreated,
    /// A channel's name, topic or visibility changed.
    ChannelUpdated,
    /// A channel was archived (its room left by the bridge; its history stays).
    ChannelArchived,
    /// A channel moved: into another microDAO (`!daarion adopt`), or to the room that replaced
    /// its room (a room upgrade).
    ChannelMoved,
    /// A person or agent joined a channel.
    MemberJoined,
    /// A person or agent left (or was kicked or banned from) a channel.
    MemberLeft,
    /// A person's role in a channel changed (the room's power levels).
    MemberRoleChanged,
    /// An agent session turned active, idle or closed.
    SessionChanged,
    /// An agent's runtime was called.
    RunStarted,
    /// A run answered.
    RunCompleted,
    /// A run failed.
    RunFailed,
    /// A started run was cancelled.
    RunCancelled,
    /// An access key was created.
    KeyCreated,
    /// An access key was revoked.
    KeyRevoked,
}

impl Topic {
    /// Every topic, for documentation and tests.
    pub const ALL: [Topic; 17] = [
        Topic::MessageCreated,
        Topic::MessageEdited,
        Topic::MessageRedacted,
        Topic::ChannelCreated,
        Topic::ChannelUpdated,
        Topic::ChannelArchived,
        Topic::ChannelMoved,
        Topic::MemberJoined,
        Topic::MemberLeft,
        Topic::MemberRoleChanged,
        Topic::SessionChanged,
        Topic::RunStarted,
        Topic::RunCompleted,
        Topic::RunFailed,
        Topic::RunCancelled,
        Topic::KeyCreated,
        Topic::KeyRevoked,
    ];

    /// The topic's name, as stored in `outbox_events.topic`.
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::MessageCreated => "chat.message.created",
            Topic::MessageEdited => "chat.message.edited",
            Topic::MessageRedacted => "chat.message.redacted",
            Topic::ChannelCreated => "chat.channel.created",
            Topic::ChannelUpdated => "chat.channel.updated",
            Topic::ChannelArchived => "chat.channel.archived",
            Topic::ChannelMoved => "chat.channel.moved",
            Topic::MemberJoined => "chat.member.joined",
            Topic::MemberLeft => "chat.member.left",
            Topic::MemberRoleChanged => "chat.member.role_changed",
            Topic::SessionChanged => "agent.session.changed",
            Topic::RunStarted => "agent.run.started",
            Topic::RunCompleted => "agent.run.completed",
            Topic::RunFailed => "agent.run.failed",
            Topic::RunCancelled => "agent.run.cancelled",
            Topic::KeyCreated => "access_key.created",
            Topic::KeyRevoked => "access_key.revoked",
        }
    }

    /// The topic a run's end publishes.
    pub fn of_run_end(status: RunStatus) -> Option<Topic> {
        match status {
            RunStatus::Completed => Some(Topic::RunCompleted),
            RunStatus::Failed => Some(Topic::RunFailed),
            RunStatus::Cancelled => Some(Topic::RunCancelled),
            _ => None,
        }
    }
}

/// The topics the database's triggers publish (migration 12), in the same transaction as the
/// change, whoever made it: microDAO membership kept from channel membership, the users rows the
/// bridge makes, every audit row (seed 001's `audit.event`), and catalog changes. Their payloads
/// are built in SQL; `docs/events.md` has them.
pub const DATABASE_TOPICS: [&str; 16] = [
    "microdao.member.added",
    "microdao.member.role_changed",
    "microdao.member.removed",
    "user.created",
    "audit.event",
    "microdao.created",
    "microdao.updated",
    "microdao.deleted",
    "blueprint.created",
    "blueprint.updated",
    "blueprint.deleted",
    "blueprint.settings.updated",
    "agent.created",
    "agent.updated",
    "agent.deleted",
    "agent.settings.updated",
];

/// The ordering scope of an event: every event about a channel (messages, members, sessions,
/// runs) is ordered within the channel; access-key events within their agent.
pub fn channel_partition(channel: ChannelId) -> String {
    // `encode_lower` into a stack buffer: `to_string` would go through `fmt` per event.
    channel
        .0
        .hyphenated()
        .encode_lower(&mut Uuid::encode_buffer())
        .to_owned()
}

/// The partition of an agent's access-key events.
pub fn agent_partition(agent: AgentId) -> String {
    format!("agent:{}", agent.0.hyphenated())
}

/// The ordering scope of a key that is not an agent's: `key:<uuid>`.
pub fn key_partition(key: AccessKeyId) -> String {
    format!("key:{}", key.0.hyphenated())
}

/// An outbox row to append: the writer appends it in the same database transaction as the change
/// it describes, so there is no event without its change and no change without its event.
#[derive(Debug, Clone)]
pub struct Draft {
    /// The event id (UUIDv7), also the `Nats-Msg-Id`.
    pub id: Uuid,
    /// What happened.
    pub topic: Topic,
    /// The ordering scope.
    pub partition: String,
    /// The payload as JSON text.
    pub payload: String,
}

impl Draft {
    /// A draft with a fresh id and `payload` serialized.
    pub fn new(topic: Topic, partition: String, payload: &impl Serialize) -> Self {
        Self {
            id: Uuid::now_v7(),
            topic,
            partition,
            payload: serialize(payload),
        }
    }
}

/// `payload` as JSON text. Payloads are plain structs of strings, numbers and ids, so
/// serializing cannot fail. The buffer starts at the size of a typical message payload (a
/// preview and a handful of ids and timestamps) instead of growing by doubling from 128 bytes.
fn serialize(payload: &impl Serialize) -> String {
    let mut out = Vec::with_capacity(768);
    match serde_json::to_writer(&mut out, payload) {
        // serde_json writes UTF-8 only.
        Ok(()) => String::from_utf8(out).unwrap_or_else(|_| "{}".into()),
        Err(_) => "{}".into(),
    }
}

/// `chat.message.created`.
#[derive(Debug, Serialize)]
pub struct MessageCreated<'a> {
    /// Payload version.
    pub v: u32,
    /// The channel.
    pub channel_id: ChannelId,
    /// `messages.id`.
    pub message_id: MessageId,
    /// The Matrix event.
    pub matrix_event_id: &'a str,
    /// human | agent.
    pub sender_type: SenderType,
    /// `users.id` of a human sender.
    pub sender_user_id: Option<UserRowId>,
    /// `agents.id` of an agent sender.
    pub sender_agent_id: Option<AgentId>,
    /// The plain-text preview.
    pub content_preview: &'a str,
    /// The thread it belongs to.
    pub thread_root_event_id: Option<&'a str>,
    /// The event's origin time.
    pub created_at: Ts,
    /// Set when an edit arrived in the same transaction (the preview is the edited text).
    pub edited_at: Option<Ts>,
    /// Set when a redaction arrived in the same transaction (the preview is empty).
    pub redacted_at: Option<Ts>,
    /// What the message carries besides its text, in order (`message_parts`); empty for a plain
    /// text message.
    pub parts: Vec<PartInfo<'a>>,
}

/// One part of a message as events name it: what it is, never its content, where it lives or
/// an encrypted file's key. A `text` part (a caption) says only that there is one.
#[derive(Debug, Serialize)]
pub struct PartInfo<'a> {
    /// text | image | file | audio | video (tool_call | tool_result later).
    pub kind: PartKind,
    /// The MIME type the event declares.
    pub mimetype: Option<&'a str>,
    /// The size in bytes the event declares.
    pub size: Option<i64>,
    /// The file name (as the preview shows it).
    pub name: Option<&'a str>,
    /// Width in pixels.
    pub width: Option<i32>,
    /// Height in pixels.
    pub height: Option<i32>,
    /// Duration in milliseconds.
    pub duration_ms: Option<i64>,
    /// A voice message (MSC3245).
    pub voice: bool,
    /// The file is an EncryptedFile (its key stays in Matrix).
    pub encrypted: bool,
}

/// `chat.message.edited`. `message_id` and `channel_id` come from the edited row.
#[derive(Debug, Serialize)]
pub struct MessageEdited<'a> {
    /// Payload version.
    pub v: u32,
    /// The channel (from the row).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<ChannelId>,
    /// `messages.id` (from the row).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
    /// The edited message's Matrix event.
    pub matrix_event_id: &'a str,
    /// human | agent.
    pub sender_type: SenderType,
    /// `users.id` of a human sender.
    pub sender_user_id: Option<UserRowId>,
    /// `agents.id` of an agent sender.
    pub sender_agent_id: Option<AgentId>,
    /// The new preview.
    pub content_preview: &'a str,
    /// The edit's origin time.
    pub edited_at: Ts,
}

/// `chat.message.redacted`. `message_id` and `channel_id` come from the redacted row.
#[derive(Debug, Serialize)]
pub struct MessageRedacted<'a> {
    /// Payload version.
    pub v: u32,
    /// The channel (from the row).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<ChannelId>,
    /// `messages.id` (from the row).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
    /// The redacted message's Matrix event.
    pub matrix_event_id: &'a str,
    /// The redaction's origin time.
    pub redacted_at: Ts,
}

/// `chat.channel.created` and `chat.channel.updated`.
#[derive(Debug, Serialize)]
pub struct ChannelChanged<'a> {
    /// Payload version.
    pub v: u32,
    /// The channel.
    pub channel_id: ChannelId,
    /// Its Matrix room.
    pub matrix_room_id: &'a str,
    /// Its microDAO (created only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub microdao_id: Option<MicrodaoId>,
    /// Its slug (created only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slug: Option<&'a str>,
    /// Its name.
    pub name: &'a str,
    /// Its topic.
    pub topic: Option<&'a str>,
    /// public | private.
    pub visibility: Visibility,
    /// When it was created (created) or changed (updated).
    pub at: Ts,
}

/// `chat.channel.archived`.
#[derive(Debug, Serialize)]
pub struct ChannelArchived<'a> {
    /// Payload version.
    pub v: u32,
    /// The channel.
    pub channel_id: ChannelId,
    /// The room the bridge left.
    pub matrix_room_id: &'a str,
    /// Why: `admin` (the admin API) or `tombstone` (the room was shut down without a
    /// replacement).
    pub reason: &'a str,
    /// When it was archived.
    pub at: Ts,
}

/// `chat.channel.moved`: what changed is given with what it was before; a room upgrade
/// changes the room, `!daarion adopt` the microDAO (and maybe the slug).
#[derive(Debug, Serialize)]
pub struct ChannelMoved<'a> {
    /// Payload version.
    pub v: u32,
    /// The channel.
    pub channel_id: ChannelId,
    /// Its Matrix room now.
    pub matrix_room_id: &'a str,
    /// The room before (a room upgrade only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_room_id: Option<&'a str>,
    /// Its microDAO now (adopt only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub microdao_id: Option<MicrodaoId>,
    /// Its microDAO before (adopt only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_microdao_id: Option<MicrodaoId>,
    /// Its slug now (adopt only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slug: Option<&'a str>,
    /// When it moved.
    pub at: Ts,
}

/// `chat.member.joined` and `chat.member.left`.
#[derive(Debug, Serialize)]
pub struct MemberChanged {
    /// Payload version.
    pub v: u32,
    /// The channel.
    pub channel_id: ChannelId,
    /// user | agent.
    pub member_type: &'static str,
    /// `users.id` of a person.
    pub user_id: Option<UserRowId>,
    /// `agents.id` of an agent.
    pub agent_id: Option<AgentId>,
    /// owner | admin | member.
    pub role: MemberRole,
    /// When it joined (joined) or left (left).
    pub at: Ts,
}

/// `agent.session.changed`.
#[derive(Debug, Serialize)]
pub struct SessionChanged {
    /// Payload version.
    pub v: u32,
    /// The session.
    pub session_id: SessionId,
    /// The agent.
    pub agent_id: AgentId,
    /// The channel.
    pub channel_id: ChannelId,
    /// active | idle | closed.
    pub status: SessionStatus,
    /// Last activity.
    pub last_activity_at: Ts,
    /// When it closed.
    pub closed_at: Option<Ts>,
}

/// `agent.run.started`, `agent.run.completed`, `agent.run.failed`, `agent.run.cancelled`.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct RunChanged {
    /// Payload version.
    #[sqlx(skip)]
    pub v: u32,
    /// The run.
    pub run_id: RunId,
    /// The agent.
    pub agent_id: AgentId,
    /// The channel.
    pub channel_id: Option<ChannelId>,
    /// running | completed | failed | cancelled.
    pub status: RunStatus,
    /// echo | openai | webhook.
    pub runtime: Option<String>,
    /// The first event that addressed the agent.
    pub trigger_event_id: Option<String>,
    /// The answer's event.
    pub reply_event_id: Option<String>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// When it was queued.
    pub queued_at: Ts,
    /// When the runtime was first called.
    pub started_at: Option<Ts>,
    /// When it ended.
    pub finished_at: Option<Ts>,
    /// Prompt tokens, when reported.
    pub prompt_tokens: Option<i32>,
    /// Completion tokens, when reported.
    pub completion_tokens: Option<i32>,
}

impl RunChanged {
    /// The draft of this run change (`None` for statuses that publish nothing).
    pub fn draft(mut self, topic: Topic) -> Option<Draft> {
        self.v = PAYLOAD_VERSION;
        let partition = channel_partition(self.channel_id?);
        Some(Draft::new(topic, partition, &self))
    }
}

/// `access_key.created` and `access_key.revoked`.
#[derive(Debug, Serialize)]
pub struct KeyChanged<'a> {
    /// Payload version.
    pub v: u32,
    /// The key.
    pub key_id: AccessKeyId,
    /// Whose key it is (seed 001's subject_kind).
    pub subject_kind: KeySubject,
    /// `agents.id` or `users.id` of its subject (none for integrations and embassies).
    pub subject_id: Option<uuid::Uuid>,
    /// The agent an agent key acts as.
    pub agent_id: Option<AgentId>,
    /// Its name.
    pub name: Option<&'a str>,
    /// Its public prefix.
    pub prefix: &'a str,
    /// Its capabilities (created only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<&'a [String]>,
    /// When it was created or revoked.
    pub at: Ts,
}

#[cfg(test)]
mod subject_tests {
    use super::{DATABASE_TOPICS, Topic};

    /// The events stream takes subjects of one to three tokens after the prefix; the `nats`
    /// runtime's streams take four (`agent.run.requested.<agent>`, `agent.run.reply.<run>`).
    /// A longer topic would fall into neither stream.
    #[test]
    fn every_topic_has_at_most_three_tokens() {
        let all = Topic::ALL
            .iter()
            .map(|t| t.as_str())
            .chain(DATABASE_TOPICS.iter().copied());
        for topic in all {
            let n = topic.split('.').count();
            assert!((1..=3).contains(&n), "{topic}: {n} tokens");
        }
    }
}
