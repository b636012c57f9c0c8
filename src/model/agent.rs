//! An agent the bridge hosts as a puppet, and what defines how it behaves (runtime, model,
//! instructions, message kind, avatar, idle period, `respond` default, tools). Read from the database
//! by the registry (`bridge::agents`); every layer that acts for an agent shares this type.

use std::time::Duration;

use ruma::OwnedUserId;

use super::{
    Respond,
    ids::{AgentId, MicrodaoId},
    runtime::{MessageKind, NatsConfig, OpenAiConfig, WebhookConfig},
    tools::Toolset,
};

/// How an agent's runtime is reached.
#[derive(Debug, Clone)]
pub enum RuntimeSpec {
    /// Answers with what it was sent.
    Echo,
    /// An OpenAI-compatible endpoint.
    OpenAi(OpenAiConfig),
    /// A signed webhook.
    Webhook(WebhookConfig),
    /// Runs published to NATS JetStream for workers.
    Nats(NatsConfig),
    /// Settings that do not parse, or name a secret that does not exist: runs fail with this.
    Misconfigured(String),
}

impl RuntimeSpec {
    /// `echo`, `openai`, `webhook` or `nats`.
    pub fn name(&self) -> &'static str {
        match self {
            RuntimeSpec::Echo => "echo",
            RuntimeSpec::OpenAi(_) => "openai",
            RuntimeSpec::Webhook(_) => "webhook",
            RuntimeSpec::Nats(_) => "nats",
            RuntimeSpec::Misconfigured(_) => "misconfigured",
        }
    }
}

/// What defines how an agent behaves.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Its blueprint's code.
    pub blueprint: Option<String>,
    /// Its runtime.
    pub runtime: RuntimeSpec,
    /// The model the runtime uses.
    pub model: Option<String>,
    /// The blueprint's system prompt.
    pub instructions: Option<String>,
    /// The agent's own instructions, added to the blueprint's.
    pub agent_instructions: Option<String>,
    /// Recent room messages the runtime gets.
    pub context_events: u32,
    /// Characters of room history the runtime gets at most (none: no bound).
    pub context_chars: Option<u32>,
    /// Whether a failed run posts a notice.
    pub failure_notice: bool,
    /// What it sends by default.
    pub message_kind: MessageKind,
    /// Avatar source (`mxc://` or a local file).
    pub avatar: Option<String>,
    /// Overrides the bridge's session idle period.
    pub idle_after: Option<Duration>,
    /// When it answers in a channel without a per-channel setting (default: mentions).
    pub respond: Option<Respond>,
    /// The tools it may use (its blueprint's, narrowed by its own list).
    pub tools: std::sync::Arc<Toolset>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            blueprint: None,
            runtime: RuntimeSpec::Echo,
            model: None,
            instructions: None,
            agent_instructions: None,
            context_events: 20,
            context_chars: None,
            failure_notice: true,
            message_kind: MessageKind::Notice,
            avatar: None,
            idle_after: None,
            respond: None,
            tools: std::sync::Arc::default(),
        }
    }
}

/// An agent the bridge hosts as a puppet.
#[derive(Debug, Clone)]
pub struct Agent {
    /// `agents.id`.
    pub id: AgentId,
    /// `agents.external_id`.
    pub external_id: String,
    /// Its puppet.
    pub user_id: OwnedUserId,
    /// Its display name.
    pub name: String,
    /// Its microDAO, if scoped to one.
    pub microdao_id: Option<MicrodaoId>,
    /// `agents.kind`.
    pub kind: String,
    /// `false`: disabled (answers nothing, refuses invites, its keys get 403).
    pub active: bool,
    /// How it behaves.
    pub behaviour: Behaviour,
}
