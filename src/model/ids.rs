//! Typed row ids for the DAARION schema, so a channel id is never passed where a user id belongs.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! row_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id (UUIDv7 keeps B-tree inserts local).
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

row_id!(
    /// `users.id`
    UserRowId
);
row_id!(
    /// `microdaos.id`
    MicrodaoId
);
row_id!(
    /// `agent_blueprints.id`
    BlueprintId
);
row_id!(
    /// `agents.id`
    AgentId
);
row_id!(
    /// `channels.id`
    ChannelId
);
row_id!(
    /// `messages.id`
    MessageId
);
row_id!(
    /// `agent_sessions.id`
    SessionId
);
row_id!(
    /// `access_keys.id`
    AccessKeyId
);
row_id!(
    /// `agent_outbox.id`
    OutboxId
);
row_id!(
    /// `agent_runs.id`
    RunId
);
row_id!(
    /// `bridge_jobs.id`
    JobId
);
row_id!(
    /// `bridge_triggers.id`
    TriggerId
);
row_id!(
    /// `channel_members.id`
    MemberId
);
row_id!(
    /// `bridge_admin_keys.id`
    AdminKeyId
);
row_id!(
    /// `message_parts.id`
    PartId
);
row_id!(
    /// `agent_run_steps.id`
    StepId
);
