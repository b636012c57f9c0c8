//! Start-up validation: everything that would otherwise fail later and less clearly, each
//! failure naming the offending key.

use ruma::UserId;

use super::{Config, ConfigError, MIN_TOKEN_LEN, RuntimeKind, is_placeholder};

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

fn http_url(key: &'static str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(invalid(key, "must start with http:// or https://"))
    }
}

impl Config {
    /// Checks everything that would otherwise fail later and less clearly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_tokens()?;
        self.validate_rest()
    }

    /// Everything but the tokens (used by `generate-registration`, which fills the tokens in).
    pub fn validate_rest(&self) -> Result<(), ConfigError> {
        self.leader
            .check()
            .map_err(|(field, problem)| invalid(field, problem))?;
        http_url("homeserver.url", &self.homeserver.url)?;
        let a = &self.appservice;
        if a.id.trim().is_empty() {
            return Err(invalid("appservice.id", "must not be empty"));
        }
        http_url("appservice.url", &a.url)?;
        let server = &self.homeserver.server_name;
        if UserId::parse(format!("@{}:{server}", a.bot_localpart))
            .map_or(true, |u| u.validate_strict().is_err())
        {
            return Err(invalid(
                "appservice.bot_localpart",
                "is not a valid Matrix localpart",
            ));
        }
        if a.agent_prefix.is_empty()
            || UserId::parse(format!("@{}x:{server}", a.agent_prefix))
                .map_or(true, |u| u.validate_strict().is_err())
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
        if self.api.max_body_bytes < 1024 {
            return Err(invalid("api.max_body_bytes", "must be at least 1024"));
        }
        let s = &self.server;
        if s.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        if s.header_timeout.is_zero() || s.body_timeout.is_zero() {
            return Err(invalid(
                "server.header_timeout",
                "and server.body_timeout must be positive",
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
        self.events
            .check()
            .map_err(|(key, why)| invalid(key, why))?;
        self.encryption
            .check()
            .map_err(|(key, why)| invalid(key, why))?;
        if self
            .audit
            .retention
            .is_some_and(|r| r < std::time::Duration::from_secs(3600))
        {
            return Err(invalid("audit.retention", "must be at least 1h"));
        }
        self.validate_bridge()?;
        self.validate_declarations()
    }

    fn validate_bridge(&self) -> Result<(), ConfigError> {
        let b = &self.bridge;
        if b.command_prefix.trim().is_empty() || b.command_prefix.contains(char::is_whitespace) {
            return Err(invalid(
                "bridge.command_prefix",
                "must be one word, e.g. !daarion",
            ));
        }
        if b.reconcile_interval < std::time::Duration::from_millis(100) {
            return Err(invalid(
                "bridge.reconcile_interval",
                "must be at least 100ms",
            ));
        }
        if b.preview_chars == 0 {
            return Err(invalid("bridge.preview_chars", "must be at least 1"));
        }
        if b.default_microdao
            .as_deref()
            .is_some_and(|d| d.trim().is_empty())
        {
            return Err(invalid("bridge.default_microdao", "must not be empty"));
        }
        if b.max_concurrent_runs == 0 || b.runs_per_minute == 0 {
            return Err(invalid(
                "bridge.max_concurrent_runs",
                "and bridge.runs_per_minute must be at least 1",
            ));
        }
        if b.max_stream_edits == 0 {
            return Err(invalid(
                "bridge.max_stream_edits",
                "must be at least 1 (the final edit holds the whole answer)",
            ));
        }
        if b.run_attempts == 0 {
            return Err(invalid("bridge.run_attempts", "must be at least 1"));
        }
        if b.session_idle_after.is_zero() {
            return Err(invalid("bridge.session_idle_after", "must be positive"));
        }
        if b.retention < std::time::Duration::from_secs(3600) {
            return Err(invalid(
                "bridge.retention",
                "must be at least 1h (the homeserver retries a transaction for longer than minutes)",
            ));
        }
        if b.failed_retention < std::time::Duration::from_secs(3600) {
            return Err(invalid(
                "bridge.failed_retention",
                "must be at least 1h (failed jobs are kept for operators to see and retry)",
            ));
        }
        if self.api.rate_limit_per_minute == 0 || self.api.auth_failures_per_minute == 0 {
            return Err(invalid(
                "api.rate_limit_per_minute",
                "and api.auth_failures_per_minute must be at least 1",
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.logging.level).is_err() {
            return Err(invalid("logging.level", "is not a valid tracing filter"));
        }
        Ok(())
    }

    /// `[tools]` bounds that would make every call useless (a zero cap, no parallelism).
    fn validate_tools(&self) -> Result<(), ConfigError> {
        let t = &self.tools;
        if !(1..=64).contains(&t.max_parallel) {
            return Err(invalid("tools.max_parallel", "must be 1 to 64"));
        }
        if t.max_argument_bytes < 256 || t.max_result_bytes < 256 {
            return Err(invalid(
                "tools.max_result_bytes",
                "max_argument_bytes and max_result_bytes must be at least 256",
            ));
        }
        if t.run_budget < std::time::Duration::from_secs(1) {
            return Err(invalid("tools.run_budget", "must be at least 1s"));
        }
        if let Some(h) = t.allowed_hosts.iter().find(|h| h.trim().is_empty()) {
            return Err(invalid(
                "tools.allowed_hosts",
                format!("an empty host pattern `{h}`"),
            ));
        }
        Ok(())
    }

    fn validate_declarations(&self) -> Result<(), ConfigError> {
        self.validate_tools()?;
        for b in &self.blueprints {
            crate::model::tools::validate(&b.tools, &self.tools.allowed_hosts, &|name| {
                self.secrets.contains_key(name)
            })
            .map_err(|e| invalid("blueprints.tools", format!("blueprint `{}`: {}", b.code, e)))?;
            if b.max_tool_rounds > crate::model::tools::MAX_ROUNDS_LIMIT {
                return Err(invalid(
                    "blueprints.max_tool_rounds",
                    format!("blueprint `{}`: max_tool_rounds must be 0 to 20", b.code),
                ));
            }
            if b.context_chars.is_some_and(|n| n > 1_000_000) {
                return Err(invalid(
                    "blueprints.context_chars",
                    format!("blueprint `{}`: context_chars must be 0 to 1000000", b.code),
                ));
            }
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
                RuntimeKind::Webhook
                    if b.webhook.as_ref().is_none_or(|w| {
                        w.secret().is_none()
                            && w.secret_ref
                                .as_ref()
                                .is_none_or(|r| !self.secrets.contains_key(r))
                    }) =>
                {
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
            let refs = [
                b.openai.as_ref().and_then(|o| o.api_key_ref.as_ref()),
                b.webhook.as_ref().and_then(|w| w.secret_ref.as_ref()),
            ];
            if let Some(missing) = refs
                .into_iter()
                .flatten()
                .find(|r| !self.secrets.contains_key(*r))
            {
                return Err(invalid(
                    "secrets",
                    format!(
                        "blueprint `{}` refers to secret `{missing}`, which [secrets] does not define",
                        b.code
                    ),
                ));
            }
        }
        let namespace = self.namespace()?;
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
            if namespace
                .agent_user_id(&agent.external_id, agent.localpart.as_deref())
                .is_none()
            {
                return Err(invalid(
                    "agents.localpart",
                    format!(
                        "agent `{}` does not give a valid Matrix user id",
                        agent.external_id
                    ),
                ));
            }
            if !super::AGENT_KINDS.contains(&agent.kind.as_str()) {
                return Err(invalid(
                    "agents.kind",
                    format!(
                        "agent `{}`: kind must be one of {}",
                        agent.external_id,
                        super::AGENT_KINDS.join(", ")
                    ),
                ));
            }
            if agent
                .respond
                .as_deref()
                .is_some_and(|r| crate::model::Respond::parse(r).is_none())
            {
                return Err(invalid(
                    "agents.respond",
                    format!(
                        "agent `{}`: must be mentions, all or never",
                        agent.external_id
                    ),
                ));
            }
            if let Some(narrow) = &agent.tools {
                crate::model::tools::validate_narrowing(narrow).map_err(|e| {
                    invalid(
                        "agents.tools",
                        format!("agent `{}`: {e}", agent.external_id),
                    )
                })?;
            }
            // A blueprint the config does not declare may exist in the database; the seed at
            // start-up checks that.
            if agent
                .blueprint
                .as_deref()
                .is_some_and(|b| b.trim().is_empty())
            {
                return Err(invalid("agents.blueprint", "must not be empty"));
            }
            // A microDAO the config does not declare may exist in the database; the seed at
            // start-up checks that (check-config has no database).
            if let Some(m) = &agent.microdao
                && m.trim().is_empty()
            {
                return Err(invalid("agents.microdao", "must not be empty"));
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
}
