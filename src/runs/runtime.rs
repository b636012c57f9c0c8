//! The runtime boundary: what a run gives a runtime and gets back. A new runtime is one file
//! implementing [`Runtime`].

use futures_core::future::BoxFuture;
use serde::Serialize;
use tokio::sync::mpsc;

/// One turn of the room's recent history.
#[derive(Debug, Clone, Serialize)]
pub struct Turn {
    pub sender: String,
    /// Display name (else the localpart).
    pub name: String,
    pub text: String,
    /// Sent by this run's agent (an assistant turn).
    pub is_self: bool,
    pub event_id: String,
}

/// Everything a runtime gets.
#[derive(Debug, Clone, Serialize)]
pub struct RunRequest {
    pub run_id: String,
    pub agent: AgentInfo,
    pub channel: ChannelInfo,
    pub session_id: Option<String>,
    /// The blueprint's model.
    pub model: Option<String>,
    pub system_prompt: String,
    /// The events that addressed the agent (merged by the debounce), in full.
    pub triggers: Vec<serde_json::Value>,
    /// Their texts, in order.
    pub trigger_texts: Vec<String>,
    /// The last events of the room, oldest first.
    pub context: Vec<Turn>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentInfo {
    pub id: String,
    pub external_id: String,
    pub name: String,
    pub matrix_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChannelInfo {
    pub id: String,
    pub room_id: String,
}

/// What a runtime answered.
#[derive(Debug, Clone, Default)]
pub struct RunOutput {
    /// The whole answer (also sent piece by piece through the deltas channel when streaming).
    pub text: String,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
    /// The runtime answers later through the agent API (webhook `202`).
    pub deferred: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("runtime unreachable: {0}")]
    Network(String),
    #[error("runtime answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("runtime answer malformed: {0}")]
    Malformed(String),
    #[error("runtime timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("runtime misconfigured: {0}")]
    Config(String),
}

/// An agent runtime. `call` sends the answer's pieces through `deltas` as they come (a
/// non-streaming runtime sends the whole answer once) and returns the complete output.
pub trait Runtime: Send + Sync {
    fn name(&self) -> &'static str;
    fn call<'a>(
        &'a self,
        request: &'a RunRequest,
        deltas: mpsc::Sender<String>,
    ) -> BoxFuture<'a, Result<RunOutput, RuntimeError>>;
}

/// Answers with what it was sent: the triggering text appears verbatim in the reply.
pub struct Echo;

impl Runtime for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }

    fn call<'a>(
        &'a self,
        request: &'a RunRequest,
        deltas: mpsc::Sender<String>,
    ) -> BoxFuture<'a, Result<RunOutput, RuntimeError>> {
        Box::pin(async move {
            let text = format!("You said: {}", request.trigger_texts.join("\n"));
            let _ = deltas.send(text.clone()).await;
            Ok(RunOutput {
                text,
                ..Default::default()
            })
        })
    }
}

/// Bounds a runtime call by its configured timeout.
pub async fn with_timeout<F>(
    timeout: std::time::Duration,
    call: F,
) -> Result<RunOutput, RuntimeError>
where
    F: std::future::Future<Output = Result<RunOutput, RuntimeError>>,
{
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| RuntimeError::Timeout(timeout))?
}
