//! Declarations in the config: `[[microdaos]]`, `[[blueprints]]` (with their runtime settings)
//! and `[[agents]]`, upserted at start-up as seed data.

use serde::{Deserialize, Serialize};

use super::duration;
pub use crate::model::runtime::{
    MessageKind, NatsConfig, OpenAiConfig, RuntimeKind, WebhookConfig,
};
pub use crate::model::tools::{ShowTools, ToolSpec};

/// A `[[microdaos]]` entry, upserted at start-up by `external_id`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MicrodaoDecl {
    /// `microdao:7`.
    pub external_id: String,
    /// Display name.
    pub name: String,
    /// Its owner's Matrix id (ERD: `owner_user_id`); when unset a new microDAO is owned by the
    /// bridge itself and an existing one keeps its owner.
    #[serde(default)]
    pub owner: Option<ruma::OwnedUserId>,
}

/// A `[[blueprints]]` entry, upserted at start-up by `code`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BlueprintDecl {
    /// Stable code, e.g. `echo`.
    pub code: String,
    /// The model the runtime uses.
    #[serde(default)]
    pub model: Option<String>,
    /// What the blueprint is for.
    #[serde(default)]
    pub description: Option<String>,
    /// Capability codes (informational, stored in `agent_blueprints.capabilities`).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// What the agents of this blueprint send by default: `notice` (default) or `text`.
    #[serde(default)]
    pub message_type: MessageKind,
    /// Which runtime answers for agents of this blueprint.
    #[serde(default)]
    pub runtime: RuntimeKind,
    /// System prompt of the blueprint (agents may add their own `instructions`).
    #[serde(default)]
    pub instructions: Option<String>,
    /// How many recent room events the runtime gets as context.
    #[serde(default = "default_context_events")]
    pub context_events: u32,
    /// At most this many characters of room history (the oldest turns are dropped first, never
    /// the messages the agent answers); none: no bound beyond `context_events`.
    #[serde(default)]
    pub context_chars: Option<u32>,
    /// Post one short notice in the room when a run fails (default: on, off for `webhook`).
    #[serde(default)]
    pub failure_notice: Option<bool>,
    /// `[blueprints.openai]`.
    #[serde(default)]
    pub openai: Option<OpenAiConfig>,
    /// `[blueprints.webhook]`.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// `[blueprints.nats]` (optional: every key has a default).
    #[serde(default)]
    pub nats: Option<NatsConfig>,
    /// `[[blueprints.tools]]`: the tools its agents may use (docs/tools.md).
    #[serde(default)]
    pub tools: Vec<ToolSpec>,
    /// What people see of tool calls: `none`, `summary` (default) or `full`.
    #[serde(default)]
    pub show_tools: ShowTools,
    /// Rounds of tool calls a run makes at most (default 5, at most 20).
    #[serde(default = "default_max_tool_rounds")]
    pub max_tool_rounds: u32,
}

fn default_max_tool_rounds() -> u32 {
    crate::model::tools::DEFAULT_MAX_ROUNDS
}

/// An `[[agents]]` entry, upserted at start-up by `external_id`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDecl {
    /// `agent:sofia`; the part after `agent:` names the puppet (`@{agent_prefix}sofia`).
    pub external_id: String,
    /// Display name.
    pub name: String,
    /// `agents.kind`.
    #[serde(default = "default_agent_kind")]
    pub kind: String,
    /// Code of its blueprint.
    #[serde(default)]
    pub blueprint: Option<String>,
    /// External id of its microDAO.
    #[serde(default)]
    pub microdao: Option<String>,
    /// Overrides the puppet localpart suffix (defaults to the external id after `agent:`).
    #[serde(default)]
    pub localpart: Option<String>,
    /// Avatar: an `mxc://` URI, or a local image file the bridge uploads once.
    #[serde(default)]
    pub avatar: Option<String>,
    /// The agent's own instructions, added to its blueprint's system prompt.
    #[serde(default)]
    pub instructions: Option<String>,
    /// Overrides `bridge.session_idle_after` for this agent.
    #[serde(default, with = "duration::opt")]
    pub session_idle_after: Option<std::time::Duration>,
    /// Overrides the blueprint's model.
    #[serde(default)]
    pub model: Option<String>,
    /// When it answers in a channel by default: `mentions` (default), `all` or `never`.
    #[serde(default)]
    pub respond: Option<String>,
    /// Overrides the blueprint's message type.
    #[serde(default)]
    pub message_type: Option<MessageKind>,
    /// `false`: the agent is disabled (answers nothing, refuses invites, its keys get 403).
    #[serde(default = "yes")]
    pub active: bool,
    /// Narrows its blueprint's tools: names or globs (`files.read_*`); none: all of them.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
}

/// The ERD's agent kinds.
pub const AGENT_KINDS: [&str; 4] = ["system", "assistant", "node", "quest"];

fn yes() -> bool {
    true
}
fn default_context_events() -> u32 {
    20
}
fn default_agent_kind() -> String {
    "assistant".into()
}
