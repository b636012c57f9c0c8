//! The bridge's configuration: `config.toml` plus `DAARION_BRIDGE__SECTION__KEY` overrides.
//! Sections live here, declarations in [`decl`], durations in [`duration`], and the checks that
//! run before anything starts in `validate`.

pub mod decl;
pub use crate::model::duration;
mod encryption;
mod events;
mod leader;
mod media;
mod tools;
mod validate;

use std::{net::SocketAddr, path::Path, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use ruma::OwnedServerName;
use serde::{Deserialize, Serialize};

pub use self::{
    decl::*,
    encryption::EncryptionConfig,
    events::{AuditConfig, EventsConfig, Keep},
    leader::LeaderConfig,
    media::MediaConfig,
    tools::ToolsConfig,
};
use crate::model::Namespace;

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

/// Tokens shorter than this are refused: the hs/as tokens are the only secret between the two
/// servers.
pub const MIN_TOKEN_LEN: usize = 32;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[homeserver]`.
    pub homeserver: HomeserverConfig,
    /// `[appservice]`.
    pub appservice: AppserviceConfig,
    /// `[server]`: limits of the HTTP listener.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[leader]`: replicas sharing one PostgreSQL, and the leader lease.
    #[serde(default)]
    pub leader: LeaderConfig,
    /// `[database]`.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// `[bridge]`.
    #[serde(default)]
    pub bridge: BridgeConfig,
    /// `[logging]`.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// `[api]`: the agent API.
    #[serde(default)]
    pub api: ApiConfig,
    /// `[events]`: the outbox and its delivery to NATS JetStream.
    #[serde(default)]
    pub events: EventsConfig,
    /// `[audit]`: the audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// `[encryption]`: agents in end-to-end encrypted rooms.
    #[serde(default)]
    pub encryption: EncryptionConfig,
    /// `[media]`: the files people send, as agents get them.
    #[serde(default)]
    pub media: MediaConfig,
    /// `[tools]`: the bounds on agents' tool calls.
    #[serde(default)]
    pub tools: ToolsConfig,
    /// `[[microdaos]]`.
    #[serde(default)]
    pub microdaos: Vec<MicrodaoDecl>,
    /// `[[blueprints]]`.
    #[serde(default)]
    pub blueprints: Vec<BlueprintDecl>,
    /// `[[agents]]`.
    #[serde(default)]
    pub agents: Vec<AgentDecl>,
    /// `[secrets]`: named secrets runtimes refer to (`api_key_ref`, `secret_ref`), so none is
    /// ever stored in the database. Values may come from the environment
    /// (`DAARION_BRIDGE__SECRETS__NAME`).
    #[serde(default)]
    pub secrets: std::collections::BTreeMap<String, String>,
}

/// `[homeserver]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HomeserverConfig {
    /// Client-server API base URL, e.g. `http://127.0.0.1:8008`.
    pub url: String,
    /// The homeserver's server name (the part after `:` in user ids).
    pub server_name: OwnedServerName,
}

/// `[appservice]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppserviceConfig {
    /// Registration id.
    pub id: String,
    /// Socket address the bridge listens on.
    pub listen: SocketAddr,
    /// How the homeserver reaches the bridge (goes into the registration).
    pub url: String,
    /// Token the bridge sends to the homeserver.
    pub as_token: String,
    /// Token the homeserver sends to the bridge.
    pub hs_token: String,
    /// Localpart of the bridge bot.
    #[serde(default = "default_bot_localpart")]
    pub bot_localpart: String,
    /// Agents are puppets `@{agent_prefix}{name}:{server_name}`.
    #[serde(default = "default_agent_prefix")]
    pub agent_prefix: String,
    /// Largest accepted transaction body; larger ones get 413 `M_TOO_LARGE`.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

/// `[server]`: what keeps slow, idle or hostile clients from holding the listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Deadline for a request's headers, from when the connection began waiting for them (not
    /// restarted by each byte); an idle keep-alive connection is closed after it too.
    #[serde(default = "default_header_timeout", with = "duration")]
    pub header_timeout: Duration,
    /// Deadline for a request's whole body, from its headers (not restarted by each byte).
    #[serde(default = "default_body_timeout", with = "duration")]
    pub body_timeout: Duration,
    /// Connections open at once; at the limit a newcomer evicts the oldest connection not proven
    /// to be the homeserver's.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// On shutdown, in-flight requests get this long before connections are dropped.
    #[serde(default = "default_shutdown_grace", with = "duration")]
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            max_connections: default_max_connections(),
            shutdown_grace: default_shutdown_grace(),
        }
    }
}

/// `[database]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://…`.
    #[serde(default = "default_db_url")]
    pub url: String,
    /// Pool size.
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

/// `[bridge]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// `content_preview` length in grapheme clusters.
    #[serde(default = "default_preview_chars")]
    pub preview_chars: usize,
    /// External id (`microdao:7`) of the microDAO that rooms without one are placed in.
    #[serde(default)]
    pub default_microdao: Option<String>,
    /// An active agent session turns idle after this long without activity.
    #[serde(default = "default_idle_after", with = "duration")]
    pub session_idle_after: Duration,
    /// Messages older than this when they arrive address nobody.
    #[serde(default = "default_max_message_age", with = "duration")]
    pub max_message_age: Duration,
    /// At most this many agent→agent turns in a row (within `max_message_age`).
    #[serde(default = "default_max_agent_chain")]
    pub max_agent_chain: u32,
    /// Messages addressing the same agent in the same channel within this window merge into
    /// one run.
    #[serde(default = "default_debounce", with = "duration")]
    pub debounce: Duration,
    /// Runs executing at once, over all agents.
    #[serde(default = "default_max_concurrent_runs")]
    pub max_concurrent_runs: usize,
    /// Runs each agent may start per minute.
    #[serde(default = "default_runs_per_minute")]
    pub runs_per_minute: u32,
    /// Whether an edit addressing an agent triggers a run.
    #[serde(default)]
    pub answer_edits: bool,
    /// A streamed answer is edited at most this often while it grows.
    #[serde(default = "default_stream_edit_interval", with = "duration")]
    pub stream_edit_interval: Duration,
    /// A streamed answer makes at most this many edits in all, its final one included: past
    /// that only the final edit is sent (clients choke on rooms with thousands of edits).
    #[serde(default = "default_max_stream_edits")]
    pub max_stream_edits: u32,
    /// A run interrupted by a crash is resumed at most this many times in all.
    #[serde(default = "default_run_attempts")]
    pub run_attempts: u32,
    /// Transaction records (replay protection) and finished work rows are kept this long.
    #[serde(default = "default_retention", with = "duration")]
    pub retention: Duration,
    /// Failed follow-up jobs are kept this long after they failed (for `GET
    /// /api/v1/admin/failed` and a retry); failed sends and runs are never pruned.
    #[serde(default = "default_failed_retention", with = "duration")]
    pub failed_retention: Duration,
    /// The first word of bot commands in rooms (in a DM with the bot no prefix is needed).
    #[serde(default = "default_command_prefix")]
    pub command_prefix: String,
    /// Matrix ids allowed bridge-wide commands (`status`) and every room command anywhere.
    #[serde(default)]
    pub admins: Vec<ruma::OwnedUserId>,
    /// How often agents are re-read from the database as a safety net (PostgreSQL is notified
    /// of changes at once; SQLite re-reads at least every 500 ms).
    #[serde(default = "default_reconcile", with = "duration")]
    pub reconcile_interval: Duration,
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
            run_attempts: default_run_attempts(),
            max_stream_edits: default_max_stream_edits(),
            retention: default_retention(),
            failed_retention: default_failed_retention(),
            command_prefix: default_command_prefix(),
            admins: Vec::new(),
            reconcile_interval: default_reconcile(),
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
    /// Requests per minute each agent may make.
    #[serde(default = "default_rate_limit")]
    pub rate_limit_per_minute: u32,
    /// Failed authentications per minute from one address before it gets 429 (no database
    /// lookup is spent on it).
    #[serde(default = "default_auth_failures")]
    pub auth_failures_per_minute: u32,
    /// Largest accepted request body; larger ones get 413 `M_TOO_LARGE`.
    #[serde(default = "default_api_body")]
    pub max_body_bytes: usize,
    /// Largest file an agent may send (`POST …/files`); the homeserver's own limit
    /// (`m.upload.size`) applies too, whichever is smaller.
    #[serde(default = "default_max_upload")]
    pub max_upload_bytes: usize,
    /// How long a send waits for the homeserver before answering 202 with the queued id.
    #[serde(default = "default_send_wait", with = "duration")]
    pub send_wait: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: None,
            rate_limit_per_minute: default_rate_limit(),
            auth_failures_per_minute: default_auth_failures(),
            max_body_bytes: default_api_body(),
            max_upload_bytes: default_max_upload(),
            send_wait: default_send_wait(),
        }
    }
}

/// Log format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    #[default]
    Pretty,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// `[logging]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// A tracing filter (`RUST_LOG` wins when set).
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `pretty` or `json`.
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

fn default_command_prefix() -> String {
    "!daarion".into()
}
fn default_reconcile() -> Duration {
    Duration::from_secs(30)
}
fn default_bot_localpart() -> String {
    "daarion".into()
}
fn default_agent_prefix() -> String {
    "agent_".into()
}
fn default_max_upload() -> usize {
    50 << 20
}

fn default_max_body_bytes() -> usize {
    10 * 1024 * 1024
}
fn default_api_body() -> usize {
    1024 * 1024
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_connections() -> usize {
    1024
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
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
fn default_idle_after() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_rate_limit() -> u32 {
    120
}
fn default_auth_failures() -> u32 {
    30
}
fn default_send_wait() -> Duration {
    Duration::from_secs(10)
}
fn default_max_message_age() -> Duration {
    Duration::from_secs(600)
}
fn default_max_agent_chain() -> u32 {
    3
}
fn default_debounce() -> Duration {
    Duration::from_millis(500)
}
fn default_max_concurrent_runs() -> usize {
    4
}
fn default_runs_per_minute() -> u32 {
    30
}
fn default_stream_edit_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_max_stream_edits() -> u32 {
    100
}
fn default_run_attempts() -> u32 {
    3
}
fn default_failed_retention() -> Duration {
    Duration::from_secs(30 * 86_400)
}
fn default_retention() -> Duration {
    Duration::from_secs(7 * 86_400)
}

/// What can go wrong while loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file (or an override) does not parse.
    #[error("invalid config: {0}")]
    Parse(String),
    /// A value is not acceptable.
    #[error("invalid config: `{key}` {problem}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
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

    /// The bridge's user namespace (bot and puppets).
    pub fn namespace(&self) -> Result<Namespace, ConfigError> {
        Namespace::new(
            self.homeserver.server_name.clone(),
            &self.appservice.bot_localpart,
            &self.appservice.agent_prefix,
        )
        .ok_or_else(|| ConfigError::Invalid {
            key: "appservice.bot_localpart",
            problem: "and appservice.agent_prefix must form valid Matrix user ids".into(),
        })
    }
}

#[cfg(test)]
mod tests;
