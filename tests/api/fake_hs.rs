//! A fake homeserver that records the bridge's requests and answers with canned state, history
//! and failures: for request shapes only (the real-Synapse proof is the e2e suite).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::Request, http::StatusCode, response::IntoResponse};
use serde_json::{Value, json};

/// One request the bridge sent to the fake homeserver.
#[derive(Clone, Debug)]
pub struct HsCall {
    pub method: String,
    pub path: String,
    pub query: String,
    pub auth: String,
    pub body: Value,
}

/// One upload the fake media repository received: `(query, bytes)`.
pub type Upload = (String, Vec<u8>);

/// What the fake media repository answers for one id: the bytes, or an error status.
pub type MediaAnswer = Result<Vec<u8>, u16>;

#[derive(Clone, Default)]
pub struct FakeHs {
    pub calls: Arc<Mutex<Vec<HsCall>>>,
    /// Room state `/rooms/{roomId}/state` answers with.
    pub state: Arc<Mutex<HashMap<String, Vec<Value>>>>,
    /// What `/rooms/{roomId}/messages` answers (newest first), for run context.
    pub history: Arc<Mutex<Vec<Value>>>,
    /// Events `/rooms/{roomId}/event/{eventId}` answers with, by event id (404 otherwise).
    pub events: Arc<Mutex<HashMap<String, Value>>>,
    /// Statuses to answer the next sends/redactions with (429 carries retry_after_ms 50).
    pub fail_sends: Arc<Mutex<std::collections::VecDeque<u16>>>,
    /// Statuses to answer the next joins with.
    pub fail_joins: Arc<Mutex<std::collections::VecDeque<u16>>>,
    /// A delay before answering sends (keeps answers in flight).
    pub send_delay: Arc<Mutex<Duration>>,
    /// Media `/_matrix/client/v1/media/download/{server}/{id}` serves, by `server/id`: bytes,
    /// or a status to answer with (404 otherwise).
    pub media: Arc<Mutex<HashMap<String, MediaAnswer>>>,
    /// Files uploaded through `/_matrix/media/v3/upload`: `(query, bytes)`; each gets
    /// `mxc://localhost/up{n}`, which the media repository then serves.
    pub uploads: Arc<Mutex<Vec<Upload>>>,
    /// `m.upload.size` of `/_matrix/client/v1/media/config` (none: 100 MiB).
    pub upload_size: Arc<Mutex<Option<u64>>>,
}

impl FakeHs {
    pub async fn spawn() -> (Self, String) {
        let hs = FakeHs::default();
        let handler_hs = hs.clone();
        let app = Router::new().fallback(move |req: Request| {
            let hs = handler_hs.clone();
            async move { hs.handle(req).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (hs, url)
    }

    async fn handle(&self, req: Request) -> axum::response::Response {
        let method = req.method().to_string();
        let path = percent_decode(req.uri().path());
        let query = req.uri().query().unwrap_or("").to_owned();
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = axum::body::to_bytes(req.into_body(), 256 << 20)
            .await
            .unwrap();
        if path == "/_matrix/client/v1/media/config" {
            let size = self.upload_size.lock().unwrap().unwrap_or(100 << 20);
            return Json(json!({ "m.upload.size": size })).into_response();
        }
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        self.calls.lock().unwrap().push(HsCall {
            method,
            path: path.clone(),
            query: query.clone(),
            auth,
            body,
        });
        if let Some(id) = path.strip_prefix("/_matrix/client/v1/media/download/") {
            return match self.media.lock().unwrap().get(id).cloned() {
                Some(Ok(bytes)) => bytes.into_response(),
                Some(Err(status)) => (
                    StatusCode::from_u16(status).unwrap(),
                    Json(json!({ "errcode": "M_UNKNOWN", "error": "media failed" })),
                )
                    .into_response(),
                None => (
                    StatusCode::NOT_FOUND,
                    Json(json!({ "errcode": "M_NOT_FOUND", "error": "no such media" })),
                )
                    .into_response(),
            };
        }
        // An agent's upload (the bot's avatar upload, without `user_id`, is answered below).
        if path == "/_matrix/media/v3/upload" && query.contains("user_id=") {
            let mut uploads = self.uploads.lock().unwrap();
            uploads.push((query.clone(), bytes.to_vec()));
            let id = format!("up{}", uploads.len());
            self.media
                .lock()
                .unwrap()
                .insert(format!("localhost/{id}"), Ok(bytes.to_vec()));
            return Json(json!({ "content_uri": format!("mxc://localhost/{id}") })).into_response();
        }
        if path.contains("/send/") || path.contains("/redact/") {
            let delay = *self.send_delay.lock().unwrap();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let Some(status) = self.fail_sends.lock().unwrap().pop_front() {
                let body = if status == 429 {
                    json!({ "errcode": "M_LIMIT_EXCEEDED", "error": "slow down", "retry_after_ms": 50 })
                } else {
                    json!({ "errcode": "M_UNKNOWN", "error": "down" })
                };
                return (StatusCode::from_u16(status).unwrap(), Json(body)).into_response();
            }
            // The homeserver deduplicates by transaction id: same txn, same event.
            let txn = path.rsplit('/').next().unwrap_or("");
            return Json(json!({ "event_id": format!("$sent-{txn}") })).into_response();
        }
        if let Some((_, id)) = path.split_once("/event/") {
            return match self.events.lock().unwrap().get(id) {
                Some(event) => Json(event.clone()).into_response(),
                None => (
                    axum::http::StatusCode::NOT_FOUND,
                    Json(json!({ "errcode": "M_NOT_FOUND", "error": "no such event" })),
                )
                    .into_response(),
            };
        }
        if path.ends_with("/messages") {
            let chunk = self.history.lock().unwrap().clone();
            return Json(json!({ "chunk": chunk, "start": "s" })).into_response();
        }
        if path.ends_with("/joined_members") {
            return Json(
                json!({ "joined": { "@alice:localhost": { "display_name": "Alice Liddell" } } }),
            )
            .into_response();
        }
        if path.contains("/typing/") || path.contains("/receipt/") || path.contains("/profile/") {
            return Json(json!({})).into_response();
        }
        if path.ends_with("/upload") {
            return Json(json!({ "content_uri": "mxc://localhost/avatar" })).into_response();
        }
        if path.ends_with("/createRoom") {
            // Each room created gets the next id: `!made1:localhost`, `!made2:localhost`, ….
            let n = self.calls_to("/createRoom").len();
            return Json(json!({ "room_id": format!("!made{n}:localhost") })).into_response();
        }
        if path.ends_with("/join") || path.contains("/client/v3/join/") {
            if let Some(status) = self.fail_joins.lock().unwrap().pop_front() {
                return (
                    StatusCode::from_u16(status).unwrap(),
                    Json(json!({ "errcode": "M_UNKNOWN", "error": "down" })),
                )
                    .into_response();
            }
            // `/rooms/{room}/join` and `/join/{room}` (through servers): the room is the 6th part.
            let room = path.split('/').nth(5).unwrap_or("").to_owned();
            return Json(json!({ "room_id": room })).into_response();
        }
        if path.ends_with("/state") {
            let room = path.split('/').nth(5).unwrap_or("").to_owned();
            let state = self
                .state
                .lock()
                .unwrap()
                .get(&room)
                .cloned()
                .unwrap_or_default();
            return Json(Value::Array(state)).into_response();
        }
        if path.ends_with("/register") {
            return Json(json!({ "user_id": "@x:localhost" })).into_response();
        }
        if path.contains("/appservice/") && path.ends_with("/ping") {
            return Json(json!({ "duration_ms": 1 })).into_response();
        }
        if path.ends_with("/leave") || path.ends_with("/invite") {
            return Json(json!({})).into_response();
        }
        if path.ends_with("/joined_rooms") {
            // The rooms this user joined and has not left since, as the calls tell.
            let user = user_of(&query);
            let mut rooms: Vec<String> = Vec::new();
            for c in self.calls() {
                if user_of(&c.query) != user {
                    continue;
                }
                let room = c.path.split('/').nth(5).unwrap_or("").to_owned();
                let joined = c.path.ends_with("/join") || c.path.contains("/client/v3/join/");
                if joined && !rooms.contains(&room) {
                    rooms.push(room);
                } else if c.path.ends_with("/leave") {
                    rooms.retain(|r| *r != room);
                }
            }
            return Json(json!({ "joined_rooms": rooms })).into_response();
        }
        (
            StatusCode::NOT_FOUND,
            Json(json!({"errcode": "M_UNRECOGNIZED", "error": "fake"})),
        )
            .into_response()
    }

    /// The messages the bot sent (command answers), as their content.
    pub fn bot_notices(&self) -> Vec<Value> {
        self.sent_messages()
            .into_iter()
            .filter(|(user, _)| user.is_empty() || user == "@daarion:localhost")
            .map(|(_, c)| c.body)
            .collect()
    }

    /// The messages puppets sent, as `(sender, txn path, content)`, in order.
    pub fn sent_messages(&self) -> Vec<(String, HsCall)> {
        self.calls_to("/send/m.room.message/")
            .into_iter()
            .map(|c| {
                let user = c
                    .query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("user_id="))
                    .unwrap_or("")
                    .replace("%40", "@")
                    .replace("%3A", ":");
                (user, c)
            })
            .collect()
    }

    /// Calls whose path contains `needle`.
    pub fn calls_to(&self, needle: &str) -> Vec<HsCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.path.contains(needle))
            .collect()
    }

    pub fn calls(&self) -> Vec<HsCall> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits until a call matching `pred` was made.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&HsCall) -> bool) -> HsCall {
        for _ in 0..200 {
            if let Some(c) = self.calls().into_iter().find(|c| pred(c)) {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the bridge never sent {what}; calls: {:#?}", self.calls());
    }
}

fn percent_decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// The `user_id` a query acts as (empty: the bot).
fn user_of(query: &str) -> String {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("user_id="))
        .unwrap_or("")
        .replace("%40", "@")
        .replace("%3A", ":")
}
