//! The bridge's configuration: `config.toml` plus `DAARION_BRIDGE__SECTION__KEY` overrides, and
//! the validation that runs before anything starts.

use std::{net::SocketAddr, path::Path};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use ruma::{OwnedServerName, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

/// Prefix of environment overrides: `DAARION_BRIDGE__DATABASE__URL` sets `[database] url`.
pub const ENV_PREFIX: &str = "DAARION_BRIDGE__";

/// Values that mean "not configured yet"; `generate-registration` replaces them.
const PLACEHOLDERS: &[&str] = &[
    "",
    "change_me",
    "changeme",
    "replace_me",
    "generate",
    "placeholder",
];

/// Tokens shorter than this are refused: the hs/as tokens are the only secret between the two servers.
pub const MIN_TOKEN_LEN: usize = 32;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub homeserver: HomeserverConfig,
    pub appservice: AppserviceConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub bridge: BridgeConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub microdaos: Vec<MicrodaoDecl>,
    #[serde(default)]
    pub blueprints: Vec<BlueprintDecl>,
    #[serde(default)]
    pub agents: Vec<AgentDecl>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HomeserverConfig {
    /// Client-server API base URL, e.g. `http://127.0.0.1:8008`.
    pub url: String,
    /// The homeserver's server name (the part after `:` in user ids).
    pub server_name: OwnedServerName,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppserviceConfig {
    pub id: String,
    pub listen: SocketAddr,
    /// How the homeserver reaches the bridge (goes into the registration).
    pub url: String,
    pub as_token: String,
    pub hs_token: String,
    #[serde(default = "default_bot_localpart")]
    pub bot_localpart: String,
    #[serde(default = "default_agent_prefix")]
    pub agent_prefix: String,
    /// Largest accepted request body; larger ones get 413 `M_TOO_LARGE`.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    #[serde(default = "default_db_url")]
    pub url: String,
    #[serde(default = "default_pool")]
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: default_db_url(),
            max_connections: default_pool(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    #[serde(default = "default_preview_chars")]
    pub preview_chars: usize,
    /// External id (`microdao:7`) of the microDAO that rooms without one are placed in.
    #[serde(default)]
    pub default_microdao: Option<String>,
    /// An active agent session turns idle after this long without activity ("15m", "900s", 900).
    #[serde(default = "default_idle_after", with = "duration")]
    pub session_idle_after: std::time::Duration,
    /// Messages older than this when they arrive address nobody (after an outage, recent
    /// questions are answered, stale ones are not).
    #[serde(default = "default_max_message_age", with = "duration")]
    pub max_message_age: std::time::Duration,
    /// At most this many agent→agent turns in a row (within `max_message_age`).
    #[serde(default = "default_max_agent_chain")]
    pub max_agent_chain: u32,
    /// Messages addressing the same agent in the same channel within this window are merged
    /// into one run.
    #[serde(default = "default_debounce", with = "duration")]
    pub debounce: std::time::Duration,
    /// Runs executing at once, over all agents.
    #[serde(default = "default_max_concurrent_runs")]
    pub max_concurrent_runs: usize,
    /// Runs each agent may start per minute.
    #[serde(default = "default_runs_per_minute")]
    pub runs_per_minute: u32,
    /// Whether an edit addressing an agent (by its new text or new mentions) triggers a run.
    #[serde(default)]
    pub answer_edits: bool,
    /// A streamed answer is edited at most this often while it grows.
    #[serde(default = "default_stream_edit_interval", with = "duration")]
    pub stream_edit_interval: std::time::Duration,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            preview_chars: default_preview_chars(),
            default_microdao: None,
            session_idle_after: default_idle_after(),
            max_message_age: default_max_message_age(),
            max_agent_chain: default_max_agent_chain(),
            debounce: default_debounce(),
            max_concurrent_runs: default_max_concurrent_runs(),
            runs_per_minute: default_runs_per_minute(),
            stream_edit_interval: default_stream_edit_interval(),
            answer_edits: false,
        }
    }
}

/// `[api]`: the agent API (`/api/v1`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// A second listener for the agent API only; by default it shares `appservice.listen`.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Requests per minute each agent may make (a token bucket of this size, refilled evenly).
    #[serde(default = "default_rate_limit")]
    pub rate_limit_per_minute: u32,
    /// How long a send waits for the homeserver before answering 202 with the queued id.
    #[serde(default = "default_send_wait", with = "duration")]
    pub send_wait: std::time::Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: None,
            rate_limit_per_minute: default_rate_limit(),
            send_wait: default_send_wait(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// `m.notice`: other bots do not answer notices, so agents do not loop on each other.
    #[default]
    Notice,
    Text,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: LogFormat::Pretty,
        }
    }
}

/// A `[[microdaos]]` entry, upserted at start-up.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MicrodaoDecl {
    pub external_id: String,
    pub name: String,
}

/// A `[[blueprints]]` entry, upserted at start-up by `code`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BlueprintDecl {
    pub code: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
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
    #[serde(default)]
    pub openai: Option<OpenAiConfig>,
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
}

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

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Echo => "echo",
            RuntimeKind::Openai => "openai",
            RuntimeKind::Webhook => "webhook",
        }
    }
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
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Stream the answer (SSE) and edit the message as it grows.
    #[serde(default = "yes")]
    pub stream: bool,
    #[serde(default = "default_runtime_timeout", with = "duration")]
    pub timeout: std::time::Duration,
}

/// `[blueprints.webhook]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Name of the environment variable holding the HMAC secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// The HMAC secret itself (prefer `secret_env` outside tests).
    #[serde(default)]
    pub secret: Option<String>,
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

fn yes() -> bool {
    true
}

/// An `[[agents]]` entry, upserted at start-up by `external_id`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDecl {
    /// `agent:sofia`; the part after `agent:` names the puppet (`@{agent_prefix}sofia`).
    pub external_id: String,
    pub name: String,
    #[serde(default = "default_agent_kind")]
    pub kind: String,
    #[serde(default)]
    pub blueprint: Option<String>,
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
    #[serde(default, with = "duration_opt")]
    pub session_idle_after: Option<std::time::Duration>,
}

fn default_bot_localpart() -> String {
    "daarion".into()
}
fn default_agent_prefix() -> String {
    "agent_".into()
}
fn default_max_body_bytes() -> usize {
    10 * 1024 * 1024
}
fn default_db_url() -> String {
    "sqlite://daarion-bridge.db".into()
}
fn default_pool() -> u32 {
    10
}
fn default_preview_chars() -> usize {
    500
}
fn default_log_level() -> String {
    "info".into()
}
fn default_idle_after() -> std::time::Duration {
    std::time::Duration::from_secs(15 * 60)
}
fn default_rate_limit() -> u32 {
    120
}
fn default_send_wait() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}
fn default_max_message_age() -> std::time::Duration {
    std::time::Duration::from_secs(600)
}
fn default_max_agent_chain() -> u32 {
    3
}
fn default_debounce() -> std::time::Duration {
    std::time::Duration::from_millis(500)
}
fn default_max_concurrent_runs() -> usize {
    4
}
fn default_runs_per_minute() -> u32 {
    30
}
fn default_stream_edit_interval() -> std::time::Duration {
    std::time::Duration::from_secs(1)
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

/// Durations as seconds (`900`) or with a unit (`"500ms"`, `"30s"`, `"15m"`, `"1h"`).
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }

    pub fn parse(s: &str) -> Option<Duration> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (n, unit) = s.split_at(split);
        let n: u64 = n.parse().ok()?;
        Some(match unit.trim() {
            "" | "s" => Duration::from_secs(n),
            "ms" => Duration::from_millis(n),
            "m" | "min" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return None,
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Ok(Duration::from_secs(n)),
            Raw::Text(t) => parse(&t).ok_or_else(|| {
                D::Error::custom(format!("`{t}` is not a duration like 30s, 15m, 1h"))
            }),
        }
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }
}

/// [`duration`] for optional values.
pub mod duration_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::duration")] Duration);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

/// What can go wrong while loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config: `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// Whether a token value is a placeholder that must be generated.
pub fn is_placeholder(token: &str) -> bool {
    let t = token.trim().to_ascii_lowercase();
    PLACEHOLDERS.contains(&t.as_str()) || (t.starts_with('<') && t.ends_with('>'))
}

impl Config {
    /// Reads `path` and applies environment overrides, without validating.
    pub fn load_unvalidated(path: &Path) -> Result<Self, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::Read {
                path: path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
            });
        }
        Figment::from(Toml::file(path))
            .merge(Env::prefixed(ENV_PREFIX).split("__"))
            .extract()
            .map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Reads, overrides and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config = Self::load_unvalidated(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML string (tests), with no environment overrides.
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        Figment::from(Toml::string(toml))
            .extract()
            .map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Checks everything that would otherwise fail later and less clearly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_tokens()?;
        self.validate_rest()
    }

    /// Everything but the tokens (used by `generate-registration`, which fills the tokens in).
    pub fn validate_rest(&self) -> Result<(), ConfigError> {
        let hs = &self.homeserver;
        if !(hs.url.starts_with("http://") || hs.url.starts_with("https://")) {
            return Err(invalid(
                "homeserver.url",
                "must start with http:// or https://",
            ));
        }
        let a = &self.appservice;
        if a.id.trim().is_empty() {
            return Err(invalid("appservice.id", "must not be empty"));
        }
        if !(a.url.starts_with("http://") || a.url.starts_with("https://")) {
            return Err(invalid(
                "appservice.url",
                "must start with http:// or https://",
            ));
        }
        if UserId::parse(format!("@{}:{}", a.bot_localpart, hs.server_name)).is_err() {
            return Err(invalid(
                "appservice.bot_localpart",
                "is not a valid Matrix localpart",
            ));
        }
        if a.agent_prefix.is_empty()
            || UserId::parse(format!("@{}x:{}", a.agent_prefix, hs.server_name)).is_err()
        {
            return Err(invalid(
                "appservice.agent_prefix",
                "must be a non-empty localpart prefix",
            ));
        }
        if a.bot_localpart.starts_with(&a.agent_prefix) {
            return Err(invalid(
                "appservice.bot_localpart",
                "must not start with agent_prefix (the bot is not an agent)",
            ));
        }
        if a.max_body_bytes < 1024 {
            return Err(invalid(
                "appservice.max_body_bytes",
                "must be at least 1024",
            ));
        }
        let db = &self.database.url;
        if !(db.starts_with("sqlite:")
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database.url",
                "must start with sqlite:// or postgres://",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        if self.bridge.preview_chars == 0 {
            return Err(invalid("bridge.preview_chars", "must be at least 1"));
        }
        if let Some(d) = &self.bridge.default_microdao
            && d.trim().is_empty()
        {
            return Err(invalid("bridge.default_microdao", "must not be empty"));
        }
        for b in &self.blueprints {
            match b.runtime {
                RuntimeKind::Openai if b.openai.is_none() => {
                    return Err(invalid(
                        "blueprints.openai",
                        format!(
                            "blueprint `{}` uses runtime openai but has no [blueprints.openai] table",
                            b.code
                        ),
                    ));
                }
                RuntimeKind::Webhook if b.webhook.as_ref().is_none_or(|w| w.secret().is_none()) => {
                    return Err(invalid(
                        "blueprints.webhook",
                        format!(
                            "blueprint `{}` uses runtime webhook but has no [blueprints.webhook] url and secret",
                            b.code
                        ),
                    ));
                }
                _ => {}
            }
        }
        if self.bridge.max_concurrent_runs == 0 || self.bridge.runs_per_minute == 0 {
            return Err(invalid(
                "bridge.max_concurrent_runs",
                "and bridge.runs_per_minute must be at least 1",
            ));
        }
        if self.api.rate_limit_per_minute == 0 {
            return Err(invalid("api.rate_limit_per_minute", "must be at least 1"));
        }
        if self.bridge.session_idle_after.is_zero() {
            return Err(invalid("bridge.session_idle_after", "must be positive"));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.logging.level).is_err() {
            return Err(invalid("logging.level", "is not a valid tracing filter"));
        }
        for agent in &self.agents {
            if !agent.external_id.starts_with("agent:") && agent.localpart.is_none() {
                return Err(invalid(
                    "agents.external_id",
                    format!(
                        "`{}` must look like `agent:NAME` (or set `localpart`)",
                        agent.external_id
                    ),
                ));
            }
            let mxid = self.agent_user_id(agent);
            if mxid.is_none() {
                return Err(invalid(
                    "agents.localpart",
                    format!(
                        "agent `{}` does not give a valid Matrix user id",
                        agent.external_id
                    ),
                ));
            }
            if let Some(bp) = &agent.blueprint
                && !self.blueprints.iter().any(|b| &b.code == bp)
            {
                return Err(invalid(
                    "agents.blueprint",
                    format!(
                        "agent `{}` names unknown blueprint `{bp}`",
                        agent.external_id
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_tokens(&self) -> Result<(), ConfigError> {
        let a = &self.appservice;
        for (key, token) in [
            ("appservice.as_token", &a.as_token),
            ("appservice.hs_token", &a.hs_token),
        ] {
            if is_placeholder(token) {
                return Err(invalid(
                    key,
                    "is a placeholder: run `daarion-bridge generate-registration` to generate tokens",
                ));
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(invalid(
                    key,
                    format!("must be at least {MIN_TOKEN_LEN} characters"),
                ));
            }
        }
        if a.as_token == a.hs_token {
            return Err(invalid("appservice.hs_token", "must differ from as_token"));
        }
        Ok(())
    }

    /// `@{bot_localpart}:{server_name}`.
    pub fn bot_user_id(&self) -> OwnedUserId {
        UserId::parse(format!(
            "@{}:{}",
            self.appservice.bot_localpart, self.homeserver.server_name
        ))
        .expect("validated at start-up")
    }

    /// The puppet id of a declared agent: `@{agent_prefix}{name}:{server_name}`.
    pub fn agent_user_id(&self, agent: &AgentDecl) -> Option<OwnedUserId> {
        let name = agent
            .localpart
            .clone()
            .or_else(|| agent.external_id.strip_prefix("agent:").map(str::to_owned))?;
        UserId::parse(format!(
            "@{}{}:{}",
            self.appservice.agent_prefix,
            name.to_ascii_lowercase(),
            self.homeserver.server_name
        ))
        .ok()
    }

    /// The declaration of the agent whose puppet is `user_id`, if the config declares it.
    pub fn agent_decl(&self, user_id: &UserId) -> Option<&AgentDecl> {
        self.agents
            .iter()
            .find(|a| self.agent_user_id(a).as_deref() == Some(user_id))
    }

    /// The blueprint of a puppet's agent, if declared.
    pub fn agent_blueprint(&self, user_id: &UserId) -> Option<&BlueprintDecl> {
        let code = self.agent_decl(user_id)?.blueprint.as_ref()?;
        self.blueprints.iter().find(|b| &b.code == code)
    }

    /// The message type an agent sends by default (from its blueprint).
    pub fn agent_message_kind(&self, user_id: &UserId) -> MessageKind {
        self.agent_decl(user_id)
            .and_then(|a| a.blueprint.as_ref())
            .and_then(|code| self.blueprints.iter().find(|b| &b.code == code))
            .map(|b| b.message_type)
            .unwrap_or_default()
    }

    /// Whether `user_id` is in the bridge's exclusive puppet namespace.
    pub fn is_puppet(&self, user_id: &UserId) -> bool {
        user_id.server_name() == self.homeserver.server_name
            && user_id
                .localpart()
                .starts_with(&self.appservice.agent_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[homeserver]
url = "http://127.0.0.1:8008"
server_name = "example.org"
[appservice]
id = "daarion"
listen = "127.0.0.1:29333"
url = "http://127.0.0.1:29333"
as_token = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
hs_token = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
"#;

    fn err(toml: &str) -> String {
        Config::from_toml_str(toml)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_apply() {
        let c = Config::from_toml_str(BASE).unwrap();
        c.validate().unwrap();
        assert_eq!(c.appservice.agent_prefix, "agent_");
        assert_eq!(c.appservice.bot_localpart, "daarion");
        assert_eq!(c.bridge.preview_chars, 500);
        assert!(c.database.url.starts_with("sqlite://"));
        assert_eq!(c.bot_user_id().as_str(), "@daarion:example.org");
    }

    #[test]
    fn validation_names_the_offending_key() {
        assert!(
            err(&BASE.replace("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "CHANGE_ME"))
                .contains("appservice.as_token")
        );
        assert!(
            err(&BASE.replace("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "short"))
                .contains("at least 32")
        );
        assert!(
            err(&BASE.replace(
                "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            ))
            .contains("appservice.hs_token")
        );
        assert!(
            err(&BASE.replace("http://127.0.0.1:8008", "127.0.0.1:8008"))
                .contains("homeserver.url")
        );
        let bad_db = format!("{BASE}[database]\nurl = \"mysql://x\"\n");
        assert!(err(&bad_db).contains("database.url"));
        let bad_agent = format!("{BASE}[[agents]]\nexternal_id = \"sofia\"\nname = \"Sofia\"\n");
        assert!(err(&bad_agent).contains("agents.external_id"));
        let bad_bp = format!(
            "{BASE}[[agents]]\nexternal_id = \"agent:sofia\"\nname = \"Sofia\"\nblueprint = \"nope\"\n"
        );
        assert!(err(&bad_bp).contains("unknown blueprint"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = Config::from_toml_str(&format!("{BASE}[bridge]\npreview_char = 3\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("preview_char"), "{e}");
    }

    #[test]
    fn puppets_are_recognised() {
        let c = Config::from_toml_str(BASE).unwrap();
        assert!(c.is_puppet(&UserId::parse("@agent_sofia:example.org").unwrap()));
        assert!(!c.is_puppet(&UserId::parse("@agent_sofia:other.org").unwrap()));
        assert!(!c.is_puppet(&UserId::parse("@alice:example.org").unwrap()));
    }
}
