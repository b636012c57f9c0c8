//! The runtime boundary: what a run gives a runtime and gets back, and the two runtimes that need
//! no network (echo, and the failing stand-in for unusable settings). Adding a runtime:
//! implement [`Runtime`] in a module of `runs/`, add a [`RuntimeSpec`](crate::model::RuntimeSpec)
//! variant (with its settings in `model::runtime` and its mapping from a blueprint in
//! `bridge::agents`), and a case in `runs::select::runtime_for`.

use futures_core::future::BoxFuture;
use serde::Serialize;
use tokio::sync::mpsc;

/// One turn of the room's recent history.
#[derive(Debug, Clone, Serialize)]
pub struct Turn {
    /// The sender's Matrix id.
    pub sender: String,
    /// Display name (else the localpart).
    pub name: String,
    /// The message's plain text.
    pub text: String,
    /// Sent by this run's agent (an assistant turn).
    pub is_self: bool,
    /// Sent by another agent: one of this bridge's agents, or a notice (how bots speak).
    pub is_agent: bool,
    /// The event.
    pub event_id: String,
    /// What the message carries besides its text: an image, file, audio or video.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
}

/// What an attachment is: the kinds of `message_parts` (a turn's parts are images, files,
/// audio and video).
pub use crate::model::PartKind;

/// An attachment of a turn, described, and given when the runtime can use it: an image's
/// bytes (models that see), a text file's text, a voice message's transcript.
#[derive(Debug, Clone, Serialize)]
pub struct Part {
    /// Its kind.
    pub kind: PartKind,
    /// The file name.
    pub name: String,
    /// Its MIME type: sniffed from the bytes when they were fetched, else as the sender said.
    pub mimetype: Option<String>,
    /// Size in bytes.
    pub size: Option<u64>,
    /// An image's or video's width in pixels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u64>,
    /// An image's or video's height in pixels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
    /// An audio's or video's duration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// A voice message (MSC3245).
    pub voice: bool,
    /// A text file's text, or a voice message's transcript.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Why its content is not given (too large, not found, a file that does not match its
    /// hash, …); none when it is, or was not asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    /// Where a webhook runtime fetches the file, decrypted: `/api/v1/media/{token}` on the
    /// bridge's API, with the agent's access key, for `media.link_ttl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// An image as a `data:` URI, for a model that sees (never serialized: webhook runtimes get
    /// a description and a link).
    #[serde(skip)]
    pub data: Option<std::sync::Arc<String>>,
}

impl Part {
    /// A short text naming it: `[image: cat.png, 200 KB]`.
    pub fn label(&self) -> String {
        let kind = if self.voice {
            "voice message"
        } else {
            self.kind.as_str()
        };
        match self.size {
            Some(size) => format!("[{kind}: {}, {}]", self.name, human_size(size)),
            None => format!("[{kind}: {}]", self.name),
        }
    }
}

/// `bytes` as a person reads a size.
pub fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / f64::from(1 << 20)),
        b if b >= 1 << 10 => format!("{} KB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// Everything a runtime gets (also the webhook runtime's JSON body).
#[derive(Debug, Clone, Serialize)]
pub struct RunRequest {
    /// The run (quoted back by deferred runtimes).
    pub run_id: String,
    /// The agent.
    pub agent: AgentInfo,
    /// The channel.
    pub channel: ChannelInfo,
    /// The agent's session in the channel.
    pub session_id: Option<String>,
    /// The blueprint's model.
    pub model: Option<String>,
    /// The system prompt.
    pub system_prompt: String,
    /// The events that addressed the agent (merged by the debounce), in full.
    pub triggers: Vec<Box<serde_json::value::RawValue>>,
    /// Their texts, in order.
    pub trigger_texts: Vec<String>,
    /// The same, as turns (sender, name, text).
    #[serde(skip)]
    pub trigger_turns: Vec<Turn>,
    /// Turns the blueprint's `context_chars` budget dropped from `context` (recorded with the
    /// run, not sent).
    #[serde(skip)]
    pub context_cut: usize,
    /// The last events of the room, oldest first.
    pub context: Vec<Turn>,
    /// The tools the agent may call now (none: no tools, or the rounds are used up).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolDef>,
    /// The rounds of tool calls so far in this run, each with its results, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_rounds: Vec<ToolRound>,
    /// The rounds or the time for tools are used up: answer now, call nothing (`tools` stay
    /// listed so the rounds before still make sense to the model).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub answer_now: bool,
    /// Cancelled when a person stops the run (never at a shutdown, whose runs resume): a
    /// runtime whose request outlives its call (`nats`) withdraws it then.
    #[serde(skip)]
    pub stop: tokio_util::sync::CancellationToken,
}

/// A tool the runtime may call, as a function definition.
#[derive(Debug, Clone, Serialize)]
pub struct ToolDef {
    /// The function name (`weather`, `files__read_file`, `matrix__read_history`).
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its arguments.
    pub parameters: serde_json::Value,
}

/// A call a runtime asks for.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ToolCall {
    /// The runtime's id for it (`tool_call_id` in the answer).
    pub id: String,
    /// The function name.
    pub name: String,
    /// The arguments as a JSON text, as given (checked when executed, not here).
    pub arguments: String,
}

/// One round: what the runtime said and asked for, and what the calls gave.
#[derive(Debug, Clone, Serialize)]
pub struct ToolRound {
    /// Text the runtime gave with its calls.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub text: String,
    /// The calls.
    pub calls: Vec<ToolCall>,
    /// Their results, in the same order.
    pub results: Vec<ToolResult>,
}

/// What a call gave, as the runtime gets it.
#[derive(Debug, Clone, Serialize)]
pub struct ToolResult {
    /// The call's id.
    pub call_id: String,
    /// `ok`, `failed`, `denied` or `interrupted`.
    pub status: crate::model::StepStatus,
    /// The result (JSON or text), or the error.
    pub content: String,
}

/// The agent a run is for.
#[derive(Debug, Clone, Serialize)]
pub struct AgentInfo {
    /// `agents.id`.
    pub id: String,
    /// `agents.external_id`.
    pub external_id: String,
    /// Display name.
    pub name: String,
    /// The puppet.
    pub matrix_id: String,
}

/// The channel a run answers in.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelInfo {
    /// `channels.id`.
    pub id: String,
    /// The Matrix room.
    pub room_id: String,
}

/// What a runtime answered.
#[derive(Debug, Clone, Default)]
pub struct RunOutput {
    /// The whole answer (also sent piece by piece through the deltas channel when streaming).
    pub text: String,
    /// Prompt tokens, when reported.
    pub prompt_tokens: Option<i32>,
    /// Completion tokens, when reported.
    pub completion_tokens: Option<i32>,
    /// The runtime answers later through the agent API (webhook `202`).
    pub deferred: bool,
    /// Files it answers with, posted after the text, through the same path as the agent API's
    /// `POST …/files`.
    pub files: Vec<OutFile>,
    /// Tools it asks to call before it answers (the run calls them and asks again).
    pub tool_calls: Vec<ToolCall>,
}

/// A file a runtime answers with.
#[derive(Debug, Clone)]
pub struct OutFile {
    /// Its name.
    pub name: String,
    /// Its type, as the runtime says (the bytes' own type wins).
    pub mimetype: Option<String>,
    /// Its bytes, or where to fetch them.
    pub content: OutContent,
}

/// Where a runtime's file is.
#[derive(Debug, Clone)]
pub enum OutContent {
    /// Given inline (base64 in the answer).
    Bytes(Vec<u8>),
    /// To fetch (`http(s)://`), bounded like any download.
    Url(String),
}

impl OutFile {
    /// A file from a `data:{type};base64,{data}` URI or an `http(s)://` URL; `None` for
    /// anything else.
    pub fn from_uri(uri: &str, name: &str) -> Option<Self> {
        use base64::Engine;
        if let Some(rest) = uri.strip_prefix("data:") {
            let (head, data) = rest.split_once(',')?;
            let mimetype = head.strip_suffix(";base64")?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .ok()?;
            return Some(Self {
                name: name.to_owned(),
                mimetype: (!mimetype.is_empty()).then(|| mimetype.to_owned()),
                content: OutContent::Bytes(bytes),
            });
        }
        (uri.starts_with("https://") || uri.starts_with("http://")).then(|| Self {
            name: name.to_owned(),
            mimetype: None,
            content: OutContent::Url(uri.to_owned()),
        })
    }
}

/// Why a runtime call failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Not reachable.
    #[error("runtime unreachable: {0}")]
    Network(String),
    /// A non-success status.
    #[error("runtime answered {status}: {body}")]
    Status {
        /// The status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// An answer that does not parse.
    #[error("runtime answer malformed: {0}")]
    Malformed(String),
    /// No answer in time.
    #[error("runtime timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// A missing secret or setting.
    #[error("runtime misconfigured: {0}")]
    Config(String),
    /// The runtime said it could not answer (a `nats` worker's `error` reply).
    #[error("runtime failed: {0}")]
    Failed(String),
}

/// A piece of an answer as it streams from a runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    /// More of the answer's text.
    Text(String),
    /// Forget what this call streamed so far: the answer starts again (a `nats` worker that
    /// took over a run from one that died mid-answer).
    Restart,
}

/// An agent runtime. `call` sends the answer's pieces through `deltas` as they come (a
/// non-streaming runtime sends the whole answer once) and returns the complete output.
pub trait Runtime: Send + Sync {
    /// `echo`, `openai`, `webhook`, `nats`.
    fn name(&self) -> &'static str;
    /// Answers `request`.
    fn call<'a>(
        &'a self,
        request: &'a RunRequest,
        deltas: mpsc::Sender<Delta>,
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
        deltas: mpsc::Sender<Delta>,
    ) -> BoxFuture<'a, Result<RunOutput, RuntimeError>> {
        Box::pin(async move {
            let text = format!("You said: {}", request.trigger_texts.join("\n"));
            let _ = deltas.send(Delta::Text(text.clone())).await;
            Ok(RunOutput {
                text,
                ..Default::default()
            })
        })
    }
}

/// The runtime of a blueprint whose settings are unusable: every call fails, saying why.
pub(super) struct Misconfigured(pub(super) String);

impl Runtime for Misconfigured {
    fn name(&self) -> &'static str {
        "misconfigured"
    }

    fn call<'a>(
        &'a self,
        _request: &'a RunRequest,
        _deltas: mpsc::Sender<Delta>,
    ) -> BoxFuture<'a, Result<RunOutput, RuntimeError>> {
        Box::pin(async move { Err(RuntimeError::Config(self.0.clone())) })
    }
}

/// The HTTP client runtimes share.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()
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

/// A non-success response as a [`RuntimeError`] (the first 300 characters of its body).
pub async fn status_error(response: reqwest::Response) -> RuntimeError {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    RuntimeError::Status {
        status,
        body: body.chars().take(300).collect(),
    }
}
