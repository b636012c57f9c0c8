//! Statuses and other closed sets stored as text: each is a Rust enum with exactly one mapping
//! to its SQL spelling (the CHECK constraints of the migrations list the same words), encoded
//! as `text` in both dialects and as lower-case strings in JSON.

use sqlx::{
    Decode, Encode, Postgres, Sqlite, Type,
    encode::IsNull,
    error::BoxDynError,
    postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef},
    sqlite::{SqliteArgumentValue, SqliteTypeInfo, SqliteValueRef},
};

/// Declares a text enum: `as_str`, `parse`, `Display`, serde as the SQL word, and sqlx
/// encoding/decoding as `text` for PostgreSQL and SQLite.
macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The SQL (and JSON) spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// Parses the SQL spelling.
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::parse(&s).ok_or_else(|| {
                    let expected: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                    serde::de::Error::custom(format!(
                        "`{s}` is not one of {}",
                        expected.join(", ")
                    ))
                })
            }
        }

        impl Type<Postgres> for $name {
            fn type_info() -> PgTypeInfo {
                <&str as Type<Postgres>>::type_info()
            }
            fn compatible(ty: &PgTypeInfo) -> bool {
                <&str as Type<Postgres>>::compatible(ty)
            }
        }
        impl PgHasArrayType for $name {
            fn array_type_info() -> PgTypeInfo {
                <&str as PgHasArrayType>::array_type_info()
            }
        }
        impl Encode<'_, Postgres> for $name {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&str as Encode<Postgres>>::encode_by_ref(&self.as_str(), buf)
            }
        }
        impl<'r> Decode<'r, Postgres> for $name {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                let s = <&str as Decode<Postgres>>::decode(value)?;
                $name::parse(s).ok_or_else(|| format!("unknown {} `{s}`", stringify!($name)).into())
            }
        }
        impl Type<Sqlite> for $name {
            fn type_info() -> SqliteTypeInfo {
                <&str as Type<Sqlite>>::type_info()
            }
            fn compatible(ty: &SqliteTypeInfo) -> bool {
                <&str as Type<Sqlite>>::compatible(ty)
            }
        }
        impl<'q> Encode<'q, Sqlite> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut Vec<SqliteArgumentValue<'q>>,
            ) -> Result<IsNull, BoxDynError> {
                <&str as Encode<Sqlite>>::encode(self.as_str(), buf)
            }
        }
        impl<'r> Decode<'r, Sqlite> for $name {
            fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
                let s = <&str as Decode<Sqlite>>::decode(value)?;
                $name::parse(s).ok_or_else(|| format!("unknown {} `{s}`", stringify!($name)).into())
            }
        }
    };
}

text_enum!(
    /// `channels.visibility`.
    Visibility {
        /// Anyone may find and join the room.
        Public = "public",
        /// Invite only (the default).
        Private = "private",
        /// Members of the microDAO (restricted join rules).
        Microdao = "microdao",
    }
);

text_enum!(
    /// Where a channel's name came from; a weaker source never overrides a stronger one (the
    /// order of the variants is their strength).
    NameSource {
        /// The room id (nothing better known).
        Id = "id",
        /// The canonical alias.
        Alias = "alias",
        /// Written by the platform, not by the bridge.
        Platform = "platform",
        /// `m.room.name`.
        Name = "name",
    }
);

text_enum!(
    /// `channel_members.role`.
    MemberRole {
        /// Power level 100 or more (or a room v12 creator).
        Owner = "owner",
        /// Power level 50 or more.
        Admin = "admin",
        /// Everyone else.
        Member = "member",
        /// An agent puppet.
        Agent = "agent",
        /// A guest (written by the platform).
        Guest = "guest",
    }
);

text_enum!(
    /// `access_keys.subject_kind` (seed 001): who a key belongs to.
    KeySubject {
        /// A person: reads the channels they are in.
        User = "user",
        /// An agent runtime: acts as the agent (the agent API).
        Agent = "agent",
        /// An integration: may hold `bridge.admin` (the admin API).
        Integration = "integration",
        /// An embassy (another platform's gateway): stored, granted nothing by the bridge yet.
        Embassy = "embassy",
    }
);

text_enum!(
    /// `access_keys.status` (seed 001).
    KeyStatus {
        /// Works.
        Active = "active",
        /// Revoked (`revoked_at`).
        Revoked = "revoked",
        /// Past `expires_at`.
        Expired = "expired",
    }
);

text_enum!(
    /// `messages.sender_type`.
    SenderType {
        /// A person.
        Human = "human",
        /// An agent puppet.
        Agent = "agent",
        /// The platform itself.
        System = "system",
    }
);

text_enum!(
    /// `agent_sessions.status`.
    SessionStatus {
        /// The agent was addressed or spoke within its idle period.
        Active = "active",
        /// Quiet for longer than the idle period.
        Idle = "idle",
        /// The agent left the channel (or the room was tombstoned).
        Closed = "closed",
    }
);

text_enum!(
    /// `agent_runs.status`.
    RunStatus {
        /// Recorded, waiting for its rate limit and a free slot.
        Queued = "queued",
        /// The runtime was called (or a deferred runtime has not answered yet).
        Running = "running",
        /// The answer was posted.
        Completed = "completed",
        /// The runtime failed, or the answer could not be posted.
        Failed = "failed",
        /// Its triggers were redacted before it ran.
        Cancelled = "cancelled",
    }
);

text_enum!(
    /// `agent_outbox.status`.
    OutboxStatus {
        /// Queued, not accepted by the homeserver yet.
        Pending = "pending",
        /// Accepted; `event_id` is set.
        Sent = "sent",
        /// Refused for good.
        Failed = "failed",
    }
);

text_enum!(
    /// `agent_outbox.kind`.
    OutboxKind {
        /// Any message-like event.
        Message = "message",
        /// A redaction.
        Redaction = "redaction",
    }
);

text_enum!(
    /// `agent_channel_settings.respond`: when an agent answers in a channel.
    Respond {
        /// When mentioned, replied to, or in a thread it is part of (the default).
        Mentions = "mentions",
        /// Every message from a person (direct chats always).
        All = "all",
        /// Never.
        Never = "never",
    }
);

text_enum!(
    /// `bridge_jobs.kind`: follow-up work a transaction asks for.
    JobKind {
        /// Accept an invite: join as the bot or a puppet, then read the room's state.
        Join = "join",
        /// Refuse an invite with a reason, or leave a room with one (an archived channel).
        Reject = "reject",
        /// Run a bot command (`!daarion …`) and answer it as the bot.
        Command = "command",
    }
);

/// How a `join` job that follows a room upgrade starts its `reason`: the servers to join
/// through follow, separated by spaces (`follow upgrade via example.org other.org`). Such a
/// job also brings the channel's agents into the room.
pub const FOLLOW_UPGRADE_VIA: &str = "follow upgrade via";

text_enum!(
    /// `bridge_jobs.status`.
    JobStatus {
        /// Waiting to be claimed (or retried after `not_before`).
        Pending = "pending",
        /// Done.
        Done = "done",
        /// Gave up after its attempts.
        Failed = "failed",
    }
);

text_enum!(
    /// `bridge_triggers.status`: from a mirrored message that might address agents to the run
    /// that answers it.
    TriggerStatus {
        /// A message in a room with agents, not evaluated yet (`agent_id` is NULL).
        Candidate = "candidate",
        /// A candidate whose evaluation is done.
        Evaluated = "evaluated",
        /// Addresses `agent_id`; waiting for the debounce to end.
        Pending = "pending",
        /// Taken by the run `run_id`.
        Taken = "taken",
        /// Its message was redacted before the run started.
        Cancelled = "cancelled",
    }
);

text_enum!(
    /// `audit_log.actor_type`: who acted.
    ActorType {
        /// A Matrix user (a person).
        User = "user",
        /// An agent (its puppet, or its runtime through the agent API).
        Agent = "agent",
        /// An access key (whose agent may not be known, e.g. a revoked key).
        Key = "key",
        /// An operator: the command line or the admin API.
        Admin = "admin",
        /// The bridge itself.
        Bridge = "bridge",
    }
);

text_enum!(
    /// `audit_log.outcome`.
    AuditOutcome {
        /// The action was carried out.
        Allowed = "allowed",
        /// The action was refused.
        Denied = "denied",
    }
);

text_enum!(
    /// `message_parts.kind` (seed 004): what one part of a message is.
    PartKind {
        /// Text: a media message's caption (later a transcript or extracted text).
        Text = "text",
        /// An image (`m.image`, and stickers).
        Image = "image",
        /// A file (`m.file`).
        File = "file",
        /// Audio (`m.audio`), voice messages included.
        Audio = "audio",
        /// A video (`m.video`).
        Video = "video",
        /// A tool call (not written yet: the next issue's).
        ToolCall = "tool_call",
        /// A tool's result (not written yet: the next issue's).
        ToolResult = "tool_result",
    }
);

text_enum!(
    /// How a tool call of a run ended (`agent_run_steps.status`; each entry of an answer's
    /// `io.daarion.tool_calls`).
    StepStatus {
        /// Recorded, being executed.
        Running = "running",
        /// Executed; the result went to the model.
        Ok = "ok",
        /// Executed and failed (unreachable, an error status, a timeout, a tool error); the
        /// error went to the model.
        Failed = "failed",
        /// Not allowed for this agent, or unknown: never called.
        Denied = "denied",
        /// In flight when the bridge stopped: reported to the model as interrupted, never
        /// repeated.
        Interrupted = "interrupted",
    }
);
