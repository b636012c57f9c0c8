//! How an agent's runtime is reached and what it sends: the runtime settings of a blueprint
//! (`[blueprints.openai]`, `[blueprints.webhook]`, `[blueprints.nats]`, the same JSON in `bridge_blueprints`) and the
//! message kind. Shared by the config that declares them and the agents that use them.

use serde::{Deserialize, Serialize};

use super::duration;

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
    /// Runs published to NATS JetStream, taken by workers with a pull consumer.
    Nats,
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
    /// The model sees images: they go as `image_url` parts (`data:` URIs); otherwise as a text
    /// naming them.
    #[serde(default)]
    pub vision: bool,
    /// A speech-to-text model at the same endpoint (`{base_url}/audio/transcriptions`, e.g.
    /// `whisper-1`): voice messages and audio are transcribed, and the transcript is the turn's
    /// text. None: audio is named, not heard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcription_model: Option<String>,
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

/// `[blueprints.nats]`: the `nats` runtime (the server is `events.nats_url`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Bound on one call: publishing the request (retried while NATS is away) and waiting for
    /// the `final` reply.
    #[serde(default = "default_runtime_timeout", with = "duration")]
    pub timeout: std::time::Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            timeout: default_runtime_timeout(),
        }
    }
}

impl WebhookConfig {
    /// The signing secret: `secret`, else the variable `secret_env` names.
    pub fn secret(&self) -> Option<String> {
        self.secret
            .clone()
            .or_else(|| std::env::var(self.secret_env.as_deref()?).ok())
    }
}

fn yes() -> bool {
    true
}

fn default_runtime_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(120)
}
