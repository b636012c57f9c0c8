//! HTTP tools: the model's arguments POSTed as JSON to the tool's URL, signed like webhook
//! runs (`X-Daarion-Timestamp`, `X-Daarion-Signature: sha256=HMAC(secret, "{ts}.{body}")`),
//! the JSON or text answer read up to the result cap, all within the tool's timeout.

use crate::{model::tools::HttpTool, runs::webhook::sign};

use super::{Bounded, ToolError};

/// Who is calling, sent as headers so the tool can log and rate limit.
pub(super) struct Caller<'a> {
    /// The run.
    pub run_id: &'a str,
    /// The agent's external id.
    pub agent: &'a str,
}

/// POSTs `body` (the arguments object, as given) to the tool.
pub(super) async fn call(
    http: &reqwest::Client,
    tool: &HttpTool,
    body: &str,
    caller: &Caller<'_>,
    max_result: usize,
) -> Result<Bounded, ToolError> {
    let secret = tool.signing_secret().ok_or_else(|| {
        ToolError::Config(format!(
            "the signing secret of tool `{}` is not set",
            tool.name
        ))
    })?;
    let timestamp = chrono::Utc::now().timestamp();
    let call = async {
        let mut response = http
            .post(&tool.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Daarion-Timestamp", timestamp.to_string())
            .header(
                "X-Daarion-Signature",
                sign(&secret, timestamp, body.as_bytes()),
            )
            .header("X-Daarion-Run", caller.run_id)
            .header("X-Daarion-Agent", caller.agent)
            .header("X-Daarion-Tool", &tool.name)
            .body(body.to_owned())
            .send()
            .await
            .map_err(|e| ToolError::Network(without_url(&e)))?;
        let status = response.status();
        // Read no more than the cap (and one byte to know it was passed), whatever the tool
        // declares.
        let mut bytes = Vec::new();
        let mut cut = false;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ToolError::Network(without_url(&e)))?
        {
            let room = max_result.saturating_sub(bytes.len());
            if chunk.len() > room {
                bytes.extend_from_slice(&chunk[..room]);
                cut = true;
                break;
            }
            bytes.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if !status.is_success() {
            return Err(ToolError::Status {
                status: status.as_u16(),
                body: text.chars().take(300).collect(),
            });
        }
        Ok(Bounded { text, cut })
    };
    tokio::time::timeout(tool.timeout, call)
        .await
        .map_err(|_| ToolError::Timeout(tool.timeout))?
}

/// A request error without its URL (a tool URL may carry a key in its query).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_redirect() {
        "redirected (redirects are not followed)"
    } else if e.is_body() || e.is_decode() {
        "the answer broke off"
    } else {
        "request failed"
    };
    let source = std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_default();
    if source.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {source}")
    }
}
