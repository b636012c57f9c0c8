//! Declarations in the config: `[[microdaos]]`, `[[blueprints]]` (with their runtime settings)
//! and `[[agents]]`, upserted at start-up as seed data.

use serde::{Deserialize, Serialize};

use super::duration;

/// A `[[microdaos]]` entry, upserted at start-up by `external_id`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MicrodaoDecl {
    /// `microdao:7`.
    pub external_id: String,
    /// Display name.
    pub name: String,
}

/// What an agent sends by default.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// `m.notice`: other bots do not answer notices, so agents do not loop on each other.
    #[default]
    Notice,
    /// `m.text`.
    Text,
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
    /// Post one short notice in the room when a run fails (default: on, off for `webhook`).
    #[serde(default)]
    pub failure_notice: Option<bool>,
    /// `[blueprints.openai]`.
    #[serde(default)]
    pub openai: Option<OpenAiConfig>,
    /// `[blueprints.webhook]`.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
}

/// Which runtime answers for an agent.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Answers with what it was sent (demos, smoke tests).
    #[default]
    Echo,
    /// Any OpenAI-compatible `/v1/chat/completions` endpoint.
    Openai,
    /// Signed JSON POSTed to a URL of the agent developer's.
    Webhook,
}

/// `[blueprints.openai]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// Base URL up to `/v1`, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    /// Name of the environment variable holding the API key (none for local servers).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Name of a secret in the config's `[secrets]` holding the API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_ref: Option<String>,
    /// The API key `api_key_ref` resolved to (never serialized, never stored).
    #[serde(skip)]
    pub api_key: Option<String>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Answer length bound.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Stream the answer (SSE) and edit the message as it grows.
    #[serde(default = "yes")]
    pub stream: bool,
    /// Bound on one call.
    #[serde(default = "default_runtime_timeout", with = "duration")]
    pub timeout: std::time::Duration,
}

/// `[blueprints.webhook]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where runs are POSTed.
    pub url: String,
    /// Name of the environment variable holding the HMAC secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Name of a secret in the config's `[secrets]` holding the HMAC secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// The HMAC secret itself (prefer `secret_env` outside tests). Never stored in the
    /// database: the seed stores a `secret_ref` to it instead.
    #[serde(default, skip_serializing)]
    pub secret: Option<String>,
    /// Bound on one call.
    #[serde(default = "default_runtime_timeout", with = "duration")]
    pub timeout: std::time::Duration,
}

impl WebhookConfig {
    /// The signing secret: `secret`, else the variable `secret_env` names.
    pub fn secret(&self) -> Option<String> {
        self.secret
            .clone()
            .or_else(|| std::env::var(self.secret_env.as_deref()?).ok())
    }
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
}

/// The ERD's agent kinds.
pub const AGENT_KINDS: [&str; 4] = ["system", "assistant", "node", "quest"];

fn yes() -> bool {
    true
}
fn default_context_events() -> u32 {
    20
}
fn default_runtime_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(120)
}
fn default_agent_kind() -> String {
    "assistant".into()
}
