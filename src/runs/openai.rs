//! The `openai` runtime: any OpenAI-compatible `/v1/chat/completions` endpoint, streaming (SSE)
//! or not.

use futures_core::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::runtime::{Delta, OutFile, RunOutput, RunRequest, Runtime, RuntimeError, ToolCall};

use crate::config::OpenAiConfig;

/// An OpenAI-compatible chat completions endpoint.
pub struct OpenAi {
    http: reqwest::Client,
    config: OpenAiConfig,
}

impl OpenAi {
    /// The runtime for `config`, over a shared client.
    pub fn new(config: OpenAiConfig, http: reqwest::Client) -> Self {
        Self { http, config }
    }

    /// System prompt, then the room as user/assistant turns ("Name: text" for people, "Name
    /// (agent): text" for other agents).
    fn messages(request: &RunRequest) -> Vec<Value> {
        let mut messages = vec![json!({ "role": "system", "content": request.system_prompt })];
        for turn in &request.context {
            if turn.is_self {
                messages.push(json!({ "role": "assistant", "content": turn.text }));
            } else {
                messages.push(json!({ "role": "user", "content": content(turn) }));
            }
        }
        // The triggers are normally the newest context turns; make sure they are there.
        for turn in &request.trigger_turns {
            if !request.context.iter().any(|t| t.event_id == turn.event_id) {
                messages.push(json!({ "role": "user", "content": content(turn) }));
            }
        }
        // What the model asked for in this run, and what it got.
        for round in &request.tool_rounds {
            let calls: Vec<Value> = round
                .calls
                .iter()
                .map(|c| {
                    json!({ "id": c.id, "type": "function",
                            "function": { "name": c.name, "arguments": c.arguments } })
                })
                .collect();
            let text = (!round.text.is_empty()).then_some(round.text.as_str());
            messages.push(json!({ "role": "assistant", "content": text, "tool_calls": calls }));
            for result in &round.results {
                messages.push(json!({
                    "role": "tool", "tool_call_id": result.call_id, "content": result.content,
                }));
            }
        }
        messages
    }

    /// `tools` (and `tool_choice`) of the request body, when the agent has tools.
    fn tools(request: &RunRequest, body: &mut Value) {
        if request.tools.is_empty() {
            return;
        }
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                json!({ "type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters,
                } })
            })
            .collect();
        body["tools"] = Value::Array(tools);
        if request.answer_now {
            body["tool_choice"] = json!("none");
        }
    }

    async fn call_inner(
        &self,
        request: &RunRequest,
        deltas: mpsc::Sender<Delta>,
    ) -> Result<RunOutput, RuntimeError> {
        let mut body = json!({
            "model": request.model.clone().unwrap_or_else(|| "gpt-4o-mini".into()),
            "messages": Self::messages(request),
            "stream": self.config.stream,
        });
        if let Some(t) = self.config.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(m) = self.config.max_tokens {
            body["max_tokens"] = json!(m);
        }
        if self.config.stream {
            body["stream_options"] = json!({ "include_usage": true });
        }
        Self::tools(request, &mut body);
        let url = format!(
            "{}/chat/completions",
            self.config.base_url.trim_end_matches('/')
        );
        let mut req = self.http.post(url).json(&body);
        if let Some(var) = self
            .config
            .api_key_env
            .as_ref()
            .filter(|_| self.config.api_key.is_none())
            && std::env::var(var).is_err()
        {
            return Err(RuntimeError::Config(format!(
                "environment variable {var} is not set"
            )));
        }
        if let Some(key) = api_key(&self.config) {
            req = req.bearer_auth(key);
        }
        let mut response = req
            .send()
            .await
            .map_err(|e| RuntimeError::Network(e.to_string()))?;
        if !response.status().is_success() {
            return Err(super::runtime::status_error(response).await);
        }
        let is_sse = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            // A non-streaming endpoint (or one that ignores `stream`).
            let v: Value = response
                .json()
                .await
                .map_err(|e| RuntimeError::Malformed(e.to_string()))?;
            let message = &v["choices"][0]["message"];
            let (text, files) = answer_of(message);
            let tool_calls = calls_of(message);
            if text.trim().is_empty()
                && files.is_empty()
                && tool_calls.is_empty()
                && request.tool_rounds.is_empty()
            {
                return Err(RuntimeError::Malformed(
                    "no choices[0].message.content".into(),
                ));
            }
            if !text.trim().is_empty() {
                let _ = deltas.send(Delta::Text(text.clone())).await;
            }
            return Ok(RunOutput {
                text,
                files,
                prompt_tokens: v["usage"]["prompt_tokens"].as_i64().map(|n| n as i32),
                completion_tokens: v["usage"]["completion_tokens"].as_i64().map(|n| n as i32),
                deferred: false,
                tool_calls,
            });
        }
        // Server-sent events: `data: {json}` lines, `data: [DONE]` at the end.
        let mut out = RunOutput::default();
        let mut calls = StreamedCalls::default();
        let mut buffer = String::new();
        let mut done = false;
        while !done {
            let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| RuntimeError::Network(e.to_string()))?
            else {
                break;
            };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(newline) = buffer.find('\n') {
                let line = buffer[..newline].trim_end_matches('\r').to_owned();
                buffer.drain(..=newline);
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    done = true;
                    break;
                }
                let v: Value = serde_json::from_str(data)
                    .map_err(|e| RuntimeError::Malformed(format!("bad SSE chunk: {e}")))?;
                if let Some(piece) = v["choices"][0]["delta"]["content"].as_str()
                    && !piece.is_empty()
                {
                    out.text.push_str(piece);
                    let _ = deltas.send(Delta::Text(piece.to_owned())).await;
                }
                if let Some(pieces) = v["choices"][0]["delta"]["tool_calls"].as_array() {
                    pieces.iter().for_each(|p| calls.add(p));
                }
                if let Some(usage) = v.get("usage").filter(|u| u.is_object()) {
                    out.prompt_tokens = usage["prompt_tokens"].as_i64().map(|n| n as i32);
                    out.completion_tokens = usage["completion_tokens"].as_i64().map(|n| n as i32);
                }
            }
        }
        if !done {
            return Err(RuntimeError::Malformed(
                "stream ended without [DONE]".into(),
            ));
        }
        out.tool_calls = calls.finish();
        if out.text.trim().is_empty() && out.tool_calls.is_empty() && request.tool_rounds.is_empty()
        {
            return Err(RuntimeError::Malformed("empty answer".into()));
        }
        Ok(out)
    }
}

impl Runtime for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn call<'a>(
        &'a self,
        request: &'a RunRequest,
        deltas: mpsc::Sender<Delta>,
    ) -> BoxFuture<'a, Result<RunOutput, RuntimeError>> {
        Box::pin(super::runtime::with_timeout(
            self.config.timeout,
            self.call_inner(request, deltas),
        ))
    }
}

/// A turn of someone else, as a user message: "Name: text", "Name (agent): text" for an agent.
fn said(turn: &super::runtime::Turn) -> String {
    if turn.is_agent {
        format!("{} (agent): {}", turn.name, turn.text)
    } else {
        format!("{}: {}", turn.name, turn.text)
    }
}

/// The API key of `config`: the resolved secret, else the named environment variable's value.
pub(super) fn api_key(config: &OpenAiConfig) -> Option<String> {
    config
        .api_key
        .clone()
        .or_else(|| std::env::var(config.api_key_env.as_deref()?).ok())
}

/// A user turn's content: its text, or, when it carries what a model can take (an image's
/// bytes, a text file's text), content parts: the text first, then each attachment.
fn content(turn: &super::runtime::Turn) -> Value {
    let given: Vec<Value> = turn
        .parts
        .iter()
        .filter_map(|part| {
            if let Some(uri) = &part.data {
                return Some(json!({ "type": "image_url", "image_url": { "url": uri.as_str() } }));
            }
            let text = part.text.as_ref()?;
            // A transcript is already the turn's text.
            (part.kind != super::runtime::PartKind::Audio)
                .then(|| json!({ "type": "text", "text": format!("{}:\n{text}", part.name) }))
        })
        .collect();
    if given.is_empty() {
        return json!(said(turn));
    }
    let mut parts = vec![json!({ "type": "text", "text": said(turn) })];
    parts.extend(given);
    Value::Array(parts)
}

/// The text and images of an answer's `message`: `content` as a string, or as parts (`text`,
/// `image_url` with a `data:` URI or an http(s) URL, or `b64_json`), plus any `images` list
/// beside it (as some OpenAI-compatible servers answer).
fn answer_of(message: &Value) -> (String, Vec<OutFile>) {
    let mut text = String::new();
    let mut files = Vec::new();
    let mut part = |p: &Value| {
        if let Some(t) = p.as_str() {
            text.push_str(t);
            return;
        }
        if p["type"] == "text" {
            text.push_str(p["text"].as_str().unwrap_or(""));
            return;
        }
        let name = format!("image-{}.png", files.len() + 1);
        let uri = p["image_url"]["url"]
            .as_str()
            .or_else(|| p["image_url"].as_str())
            .map(str::to_owned)
            .or_else(|| {
                p["b64_json"]
                    .as_str()
                    .map(|b| format!("data:image/png;base64,{b}"))
            });
        if let Some(file) = uri.and_then(|u| OutFile::from_uri(&u, &name)) {
            files.push(file);
        }
    };
    match &message["content"] {
        Value::Array(parts) => parts.iter().for_each(&mut part),
        other => part(other),
    }
    if let Some(images) = message["images"].as_array() {
        images.iter().for_each(&mut part);
    }
    (text, files)
}

/// The `tool_calls` of an answer's `message`. An entry without a function name is dropped; its
/// `arguments` stay text as given (a malformed one is the tool's error to report, not ours).
fn calls_of(message: &Value) -> Vec<ToolCall> {
    let Some(list) = message["tool_calls"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let name = c["function"]["name"].as_str().filter(|n| !n.is_empty())?;
            Some(ToolCall {
                id: c["id"]
                    .as_str()
                    .map_or_else(|| format!("call_{i}"), str::to_owned),
                name: name.to_owned(),
                arguments: arguments_text(&c["function"]["arguments"]),
            })
        })
        .collect()
}

/// Arguments as JSON text: a string as given; an object (some servers send one) serialized.
fn arguments_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Streamed tool calls, put together from their pieces (`delta.tool_calls[]`, keyed by
/// `index`: the id and name come once, the arguments in pieces).
#[derive(Default)]
struct StreamedCalls(std::collections::BTreeMap<u64, (String, String, String)>);

impl StreamedCalls {
    fn add(&mut self, piece: &Value) {
        let index = piece["index"].as_u64().unwrap_or(0);
        let entry = self.0.entry(index).or_default();
        if let Some(id) = piece["id"].as_str() {
            entry.0 = id.to_owned();
        }
        if let Some(name) = piece["function"]["name"].as_str() {
            entry.1.push_str(name);
        }
        match &piece["function"]["arguments"] {
            Value::String(s) => entry.2.push_str(s),
            Value::Null => {}
            other => entry.2.push_str(&other.to_string()),
        }
    }

    fn finish(self) -> Vec<ToolCall> {
        self.0
            .into_iter()
            .filter(|(_, (_, name, _))| !name.is_empty())
            .map(|(i, (id, name, arguments))| ToolCall {
                id: if id.is_empty() {
                    format!("call_{i}")
                } else {
                    id
                },
                name,
                arguments,
            })
            .collect()
    }
}
