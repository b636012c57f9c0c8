//! The `webhook` runtime: the run POSTed as signed JSON to the agent developer's URL.
//!
//! Signature: `X-Daarion-Signature: sha256=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>` with
//! `X-Daarion-Timestamp: <unix seconds>`; receivers reject stale timestamps to stop replays.
//! `200 {"reply": "…", "files": [{"name", "mimetype", "base64" | "url"}]}` is posted as the
//! agent; `202` means the runtime answers later through the agent API, quoting the run id.
//! `200 {"tool_calls": [{"id", "name", "arguments"}]}` asks the bridge to call the agent's
//! tools: the results come back in a follow-up request (`tool_rounds`), as for a model.

use futures_core::future::BoxFuture;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::mpsc;

use super::runtime::{
    Delta, OutContent, OutFile, RunOutput, RunRequest, Runtime, RuntimeError, ToolCall,
};
use crate::config::WebhookConfig;

/// A signed webhook of the agent developer's.
pub struct Webhook {
    http: reqwest::Client,
    config: WebhookConfig,
}

/// The signature header value for `body` sent at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this never fails.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

impl Webhook {
    /// The runtime for `config`, over a shared client.
    pub fn new(config: WebhookConfig, http: reqwest::Client) -> Self {
        Self { http, config }
    }

    async fn call_inner(
        &self,
        request: &RunRequest,
        deltas: mpsc::Sender<Delta>,
    ) -> Result<RunOutput, RuntimeError> {
        let secret = self
            .config
            .secret()
            .ok_or_else(|| RuntimeError::Config("no webhook secret".into()))?;
        let body =
            serde_json::to_vec(request).map_err(|e| RuntimeError::Malformed(e.to_string()))?;
        let timestamp = chrono::Utc::now().timestamp();
        let response = self
            .http
            .post(&self.config.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Daarion-Timestamp", timestamp.to_string())
            .header("X-Daarion-Signature", sign(&secret, timestamp, &body))
            .body(body)
            .send()
            .await
            .map_err(|e| RuntimeError::Network(e.to_string()))?;
        match response.status().as_u16() {
            202 => Ok(RunOutput {
                deferred: true,
                ..Default::default()
            }),
            200 => {
                let v: Value = response
                    .json()
                    .await
                    .map_err(|e| RuntimeError::Malformed(e.to_string()))?;
                let files = files_of(&v["files"]);
                let text = v["reply"].as_str().unwrap_or("").to_owned();
                let tool_calls = calls_of(&v["tool_calls"]);
                if text.trim().is_empty()
                    && files.is_empty()
                    && tool_calls.is_empty()
                    && request.tool_rounds.is_empty()
                {
                    return Err(RuntimeError::Malformed(
                        "200 without a non-empty \"reply\", \"files\" or \"tool_calls\"".into(),
                    ));
                }
                if !text.trim().is_empty() {
                    let _ = deltas.send(Delta::Text(text.clone())).await;
                }
                Ok(RunOutput {
                    text,
                    files,
                    tool_calls,
                    ..Default::default()
                })
            }
            _ => Err(super::runtime::status_error(response).await),
        }
    }
}

/// The `tool_calls` of an answer: `[{"id", "name", "arguments"}]` (`arguments` a JSON object
/// or its text). An entry without a name is dropped.
fn calls_of(v: &Value) -> Vec<ToolCall> {
    let Some(list) = v.as_array() else {
        return Vec::new();
    };
    list.iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let name = c["name"].as_str().filter(|n| !n.is_empty())?;
            Some(ToolCall {
                id: c["id"]
                    .as_str()
                    .map_or_else(|| format!("call_{i}"), str::to_owned),
                name: name.to_owned(),
                arguments: match &c["arguments"] {
                    Value::String(s) => s.clone(),
                    Value::Null => "{}".into(),
                    other => other.to_string(),
                },
            })
        })
        .collect()
}

/// The `files` of an answer: `[{"name", "mimetype"?, "base64" | "url"}]`. An entry that is
/// neither is skipped (logged): the rest of the answer still goes out.
pub(super) fn files_of(v: &Value) -> Vec<OutFile> {
    use base64::Engine;
    let Some(list) = v.as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|f| {
            let name = f["name"].as_str().filter(|n| !n.trim().is_empty())?;
            let mimetype = f["mimetype"].as_str().map(str::to_owned);
            let content = if let Some(data) = f["base64"].as_str() {
                base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .ok()
                    .map(OutContent::Bytes)
            } else {
                f["url"]
                    .as_str()
                    .and_then(|u| OutFile::from_uri(u, name))
                    .map(|f| f.content)
            };
            match content {
                Some(content) => Some(OutFile {
                    name: name.to_owned(),
                    mimetype,
                    content,
                }),
                None => {
                    tracing::warn!(name, "a webhook answer's file has neither valid base64 nor an http(s) url: skipped");
                    None
                }
            }
        })
        .collect()
}

impl Runtime for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
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

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_hmac_sha256_of_timestamp_and_body() {
        // Reference value computed independently:
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"s3cret",b"1700000000.{}",hashlib.sha256).hexdigest())'
        assert_eq!(
            super::sign("s3cret", 1_700_000_000, b"{}"),
            "sha256=97926816e98fbb41ccb1673225ff29a2f35369099990e1b1561651e7bd097ebf"
        );
    }
}
