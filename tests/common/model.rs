#![allow(dead_code)] // each suite uses part of it
//! An OpenAI-compatible chat completions server for tests (shared by the suites through
//! `#[path]`): streaming (SSE), plain, failing, malformed and slow modes.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Body,
    extract::Request,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// A 1×1 PNG, base64: what the `image` mode answers with.
pub const IMAGE_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

/// An OpenAI-compatible chat completions server. `mode`: stream | long | plain | image | fail |
/// malformed | slow | script.
#[derive(Clone, Default)]
pub struct FakeModel {
    pub requests: Arc<Mutex<Vec<Value>>>,
    /// The multipart bodies `/audio/transcriptions` received.
    pub transcriptions: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Mode `script`: the assistant messages to answer with, one per request (`content`,
    /// `tool_calls`), streamed in pieces when the request asks for a stream; when empty, "Done."
    pub script: Arc<Mutex<std::collections::VecDeque<Value>>>,
}

impl FakeModel {
    pub async fn spawn(mode: &'static str) -> (Self, String) {
        Self::spawn_on(mode, "127.0.0.1:0").await
    }

    /// On a fixed address (the e2e config names it).
    pub async fn spawn_on(mode: &'static str, addr: &str) -> (Self, String) {
        let model = FakeModel::default();
        let m = model.clone();
        let app = Router::new().fallback(move |req: Request| {
            let m = m.clone();
            async move { m.handle(mode, req).await }
        });
        // A fixed address may still be held for a moment by the previous test's server, whose
        // runtime shuts down after that test released the serial lock: wait for it.
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot bind {addr}: {e}"),
            }
        };
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (model, url)
    }

    async fn handle(&self, mode: &str, req: Request) -> Response {
        let transcription = req.uri().path().ends_with("/audio/transcriptions");
        let bytes = axum::body::to_bytes(req.into_body(), 64 << 20)
            .await
            .unwrap();
        if transcription {
            // A speech-to-text endpoint: the multipart upload is kept whole; the "transcript"
            // names how many bytes it heard, so a test can tell the file arrived.
            self.transcriptions.lock().unwrap().push(bytes.to_vec());
            return Json(json!({ "text": format!("I said papaya ({} bytes heard)", bytes.len()) }))
                .into_response();
        }
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        // A stream asked for "a long story" is long too (the e2e config's one model).
        let asks_long = body.to_string().contains("a long story");
        let wants_stream = body["stream"] == true;
        self.requests.lock().unwrap().push(body);
        if mode == "script" {
            let message = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| json!({ "role": "assistant", "content": "Done." }));
            return if wants_stream {
                scripted_stream(message)
            } else {
                Json(json!({
                    "choices": [{ "message": message, "finish_reason": "stop" }],
                    "usage": { "prompt_tokens": 3, "completion_tokens": 2 },
                }))
                .into_response()
            };
        }
        match mode {
            "fail" => (StatusCode::INTERNAL_SERVER_ERROR, "model exploded").into_response(),
            "malformed" => ([("content-type", "application/json")], "{\"choices\": 7}").into_response(),
            "slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Json(json!({})).into_response()
            }
            // An answer with an image, as content parts (a data: URI) beside the text.
            "image" => Json(json!({
                "choices": [{ "message": { "role": "assistant", "content": [
                    { "type": "text", "text": "Here is the chart." },
                    { "type": "image_url", "image_url": { "url": format!("data:image/png;base64,{}", IMAGE_B64) } },
                ] } }],
            }))
            .into_response(),
            "plain" => Json(json!({
                "choices": [{ "message": { "role": "assistant", "content": "A plain **answer**." } }],
                "usage": { "prompt_tokens": 11, "completion_tokens": 4 },
            }))
            .into_response(),
            _ => {
                // Five pieces, 150 ms apart: the answer grows over ~600 ms ("long", or a
                // request whose messages ask for "a long story": forty pieces, ~6 s).
                let long = mode == "long" || asks_long;
                let pieces: Vec<&str> = if long {
                    std::iter::repeat_n("and on ", 39).chain(["the end."]).collect()
                } else {
                    vec!["The ", "answer ", "is ", "forty", "-two."]
                };
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(16);
                tokio::spawn(async move {
                    for piece in pieces {
                        let chunk = json!({ "choices": [{ "delta": { "content": piece } }] });
                        let _ = tx.send(Ok(format!("data: {chunk}\n\n"))).await;
                        tokio::time::sleep(Duration::from_millis(150)).await;
                    }
                    let usage = json!({ "choices": [], "usage": { "prompt_tokens": 20, "completion_tokens": 5 } });
                    let _ = tx.send(Ok(format!("data: {usage}\n\ndata: [DONE]\n\n"))).await;
                });
                let stream = tokio_stream(rx);
                Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream)).unwrap()
            }
        }
    }
}

/// A scripted message as SSE deltas, the way OpenAI streams: the content in two pieces; each
/// tool call's id and name first, then its arguments in two pieces, keyed by `index`.
fn scripted_stream(message: Value) -> Response {
    let mut chunks = Vec::new();
    if let Some(text) = message["content"].as_str() {
        let mid = text.char_indices().nth(text.chars().count() / 2).map_or(0, |(i, _)| i);
        for piece in [&text[..mid], &text[mid..]] {
            chunks.push(json!({ "choices": [{ "delta": { "content": piece } }] }));
        }
    }
    for (i, call) in message["tool_calls"].as_array().into_iter().flatten().enumerate() {
        let args = call["function"]["arguments"].as_str().unwrap_or("").to_owned();
        let mid = args.char_indices().nth(args.chars().count() / 2).map_or(0, |(i, _)| i);
        chunks.push(json!({ "choices": [{ "delta": { "tool_calls": [{
            "index": i, "id": call["id"], "type": "function",
            "function": { "name": call["function"]["name"], "arguments": &args[..mid] },
        }] } }] }));
        chunks.push(json!({ "choices": [{ "delta": { "tool_calls": [{
            "index": i, "function": { "arguments": &args[mid..] },
        }] } }] }));
    }
    let mut body: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    body.push_str("data: [DONE]\n\n");
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(body))
        .unwrap()
}

/// An mpsc receiver as a body stream (no extra crates).
fn tokio_stream(
    mut rx: tokio::sync::mpsc::Receiver<Result<String, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<String, std::io::Error>> + Send + 'static {
    struct S(tokio::sync::mpsc::Receiver<Result<String, std::io::Error>>);
    impl futures_core::Stream for S {
        type Item = Result<String, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }
    let _ = &mut rx;
    S(rx)
}
