//! The tools of a run: the definitions its agent may use (HTTP endpoints, MCP servers,
//! built-ins), checked against the agent's allow-list by the bridge on every call, recorded
//! before they are executed (`db::steps`), audited, and bounded (time, bytes, concurrency).

mod builtin;
mod http;
pub mod mcp;
mod run;

pub use run::{RunPlace, RunTools, Tools};

use std::time::Duration;

/// Why a tool call failed (what the model is told, and `agent_run_steps.error`). Never holds a
/// secret: URLs are named without their query, headers never.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ToolError {
    /// The agent may not use it (or no such tool): never called.
    #[error("not allowed: `{0}` is not one of this agent's tools")]
    NotAllowed(String),
    /// The arguments are not a JSON object, or too large.
    #[error("bad arguments: {0}")]
    Arguments(String),
    /// The tool's host is not in `tools.allowed_hosts`.
    #[error("not allowed: {0}")]
    Host(String),
    /// Not reachable.
    #[error("unreachable: {0}")]
    Network(String),
    /// A non-success HTTP status.
    #[error("the tool answered {status}: {body}")]
    Status {
        /// The status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// No answer in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The tool ran and reported an error (an MCP `isError` result).
    #[error("the tool reported an error: {0}")]
    Tool(String),
    /// The server broke the protocol (MCP), or answered something unreadable.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A missing secret or setting.
    #[error("misconfigured: {0}")]
    Config(String),
    /// The bridge stopped while it ran: not repeated.
    #[error("interrupted: the bridge stopped while this call ran; it was not repeated")]
    Interrupted,
}

/// A result read up to the cap.
#[derive(Debug, Clone)]
pub struct Bounded {
    /// The text (JSON as the tool gave it, or text).
    pub text: String,
    /// The cap cut it.
    pub cut: bool,
}
