//! The `webhook` runtime: the run POSTed as signed JSON to the agent developer's URL.
//!
//! Signature: `X-Daarion-Signature: sha256=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>` with
//! `X-Daarion-Timestamp: <unix seconds>`; receivers reject stale timestamps to stop replays.
//! `200 {"reply": "…"}` is posted as the agent; `202` means the runtime answers later through
//! the agent API, quoting the run id.

use futures_core::future::BoxFuture;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::mpsc;

use super::runtime::{RunOutput, RunRequest, Runtime, RuntimeError};
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
        deltas: mpsc::Sender<String>,
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
                let text = v["reply"]
                    .as_str()
                    .filter(|t| !t.trim().is_empty())
                    .ok_or_else(|| {
                        RuntimeError::Malformed("200 without a non-empty \"reply\"".into())
                    })?
                    .to_owned();
                let _ = deltas.send(text.clone()).await;
                Ok(RunOutput {
                    text,
                    ..Default::default()
                })
            }
            _ => Err(super::runtime::status_error(response).await),
        }
    }
}

impl Runtime for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn call<'a>(
        &'a self,
        request: &'a RunRequest,
        deltas: mpsc::Sender<String>,
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
