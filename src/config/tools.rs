//! `[tools]`: the bounds on agents' tool calls, whatever their blueprint names: which hosts
//! tools may live on, how much goes each way, how many calls run at once, how long a run may
//! spend on tools, how long an MCP server's tool list is trusted.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

/// `[tools]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsConfig {
    /// Hosts HTTP tools and MCP servers may be on (globs: `*.example.org`); empty: any host.
    /// Checked when a blueprint is written and again at every call; redirects are not followed.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Bytes of a call's arguments sent at most (16 KiB): a larger call fails, unsent.
    #[serde(default = "default_arguments")]
    pub max_argument_bytes: usize,
    /// Bytes of a result given to the model at most (32 KiB): the rest is cut, and the model
    /// is told so.
    #[serde(default = "default_result")]
    pub max_result_bytes: usize,
    /// Calls of one round run at once at most.
    #[serde(default = "default_parallel")]
    pub max_parallel: usize,
    /// Time one run may spend on tool rounds; past it, the model is asked to answer with what
    /// it has.
    #[serde(default = "default_budget", with = "duration")]
    pub run_budget: Duration,
    /// How long an MCP server's `tools/list` is used before it is asked again.
    #[serde(default = "default_list_ttl", with = "duration")]
    pub mcp_list_ttl: Duration,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            max_argument_bytes: default_arguments(),
            max_result_bytes: default_result(),
            max_parallel: default_parallel(),
            run_budget: default_budget(),
            mcp_list_ttl: default_list_ttl(),
        }
    }
}

fn default_arguments() -> usize {
    16 * 1024
}

fn default_result() -> usize {
    32 * 1024
}

fn default_parallel() -> usize {
    4
}

fn default_budget() -> Duration {
    Duration::from_secs(120)
}

fn default_list_ttl() -> Duration {
    Duration::from_secs(300)
}
