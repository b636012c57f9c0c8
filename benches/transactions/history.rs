//! A question in an encrypted room with a history: the time from the trigger transaction being
//! sent to the runtime (a fake OpenAI-compatible model) being called, when the room's last 20
//! messages are encrypted and the agent's device decrypts them all for the run's context; the
//! same path in a plaintext room of 20 plaintext messages, interleaved, for comparison.
//!
//! The bridge runs in-process (as in [`super::encrypted`]: the benchmark plays Alice's client with
//! matrix-sdk-crypto and shares her room key with Sofia's machine); the fake homeserver and the
//! fake model run in the same process and stamp what they receive. `/messages` answers what a
//! homeserver has once it sent the question: the question, then the 20 messages before it; the
//! bridge decrypts all 21 and gives the model the newest 20 (the default `context_events`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{extract::Request, http::StatusCode, response::IntoResponse};
use ruma::{OwnedRoomId, events::AnyMessageLikeEventContent, serde::Raw};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{SENTENCE, bridge_toml, free_port, put, stats};
use crate::e2ee::{ALICE, Alice, SOFIA, SOFIA_DEVICE, upload};

/// The encrypted room (its id tells the fake homeserver's paths apart).
const ENCRYPTED: &str = "!e2ee-run:localhost";
/// The plaintext room of the comparison.
const PLAIN: &str = "!plain-run:localhost";
/// Messages in each room before the question (the blueprint's default `context_events` is 20).
const HISTORY: usize = 20;
/// Questions per room left out of the figures (connections, caches, the sessions' first use).
const WARM_UP: usize = 20;
/// Questions per room measured.
const MEASURED: usize = 100;

/// What the fake homeserver answers and records, shared with the driver.
#[derive(Default)]
struct Room {
    /// The room's messages before the question, newest first (as `/messages` returns them).
    history: Vec<Value>,
    /// The question under way: the newest event of the timeline, as a homeserver has it once
    /// it sent the transaction.
    question: Option<Value>,
    /// When the run first asked the homeserver something (typing, or member names for the
    /// context: both go out together).
    run_seen: Option<Instant>,
    /// When the bridge last asked for the room's history.
    history_read: Option<Instant>,
}

/// The fake homeserver's rooms, by room id.
type Rooms = Arc<Mutex<HashMap<&'static str, Room>>>;

/// Which benchmark room a (percent-encoded) request path is about.
fn room_of(path: &str) -> Option<&'static str> {
    if path.contains("e2ee-run") {
        Some(ENCRYPTED)
    } else if path.contains("plain-run") {
        Some(PLAIN)
    } else {
        None
    }
}

/// A homeserver for one agent with a device in two rooms: it answers what the bridge asks on
/// start-up (registration, the device and its keys, cross-signing), while a run works (typing,
/// member names, history, the room's encryption) and when it answers (key sharing, the send).
async fn homeserver(rooms: Rooms) -> String {
    let hs = axum::Router::new().fallback(move |req: Request| {
        let rooms = rooms.clone();
        async move {
            let path = req.uri().path().to_owned();
            let room = room_of(&path);
            if path.ends_with("/messages")
                && let Some(room) = room
            {
                let mut rooms = rooms.lock().unwrap();
                let room = rooms.get_mut(room).unwrap();
                room.history_read = Some(Instant::now());
                let chunk: Vec<Value> =
                    room.question.iter().chain(&room.history).cloned().collect();
                // No `end`: the start of the room, the bridge pages no further.
                return axum::Json(json!({ "chunk": chunk, "start": "s" })).into_response();
            }
            if (path.contains("/typing/") || path.ends_with("/joined_members"))
                && let Some(room) = room
            {
                let mut rooms = rooms.lock().unwrap();
                let room = rooms.get_mut(room).unwrap();
                room.run_seen.get_or_insert_with(Instant::now);
            }
            if path.ends_with("/joined_members") {
                return axum::Json(json!({ "joined": {
                    ALICE: { "display_name": "Alice" },
                    SOFIA: { "display_name": "Sofia" },
                } }))
                .into_response();
            }
            if path.contains("/state/m.room.encryption") {
                // Asked before an answer goes out (the plaintext room's "no" is not cached).
                return match room {
                    Some(ENCRYPTED) => {
                        axum::Json(json!({ "algorithm": "m.megolm.v1.aes-sha2" })).into_response()
                    }
                    _ => (
                        StatusCode::NOT_FOUND,
                        axum::Json(json!({ "errcode": "M_NOT_FOUND", "error": "no state" })),
                    )
                        .into_response(),
                };
            }
            if path.ends_with("/state") {
                return axum::Json(json!([])).into_response();
            }
            if path.contains("/send/") {
                let txn = path.rsplit('/').next().unwrap_or("");
                return axum::Json(json!({ "event_id": format!("$sent-{txn}") })).into_response();
            }
            if path.ends_with("/keys/upload") {
                return axum::Json(json!({ "one_time_key_counts": { "signed_curve25519": 50 } }))
                    .into_response();
            }
            if path.ends_with("/keys/query") {
                // Every user asked about, with no devices: Alice's client stays unknown to
                // Sofia, so an answer's room key goes to nobody (the cheapest answer; it is not
                // timed). A user left out of the answer would stay "pending", and the bridge's
                // machine would wait 5 s for it before every encrypted answer.
                let bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
                    .await
                    .unwrap();
                let asked: Value = serde_json::from_slice(&bytes).unwrap();
                let users: serde_json::Map<String, Value> = asked["device_keys"]
                    .as_object()
                    .map(|users| users.keys().map(|u| (u.clone(), json!({}))).collect())
                    .unwrap_or_default();
                return axum::Json(json!({ "device_keys": users })).into_response();
            }
            if path.ends_with("/keys/claim") {
                return axum::Json(json!({ "one_time_keys": {} })).into_response();
            }
            if path.ends_with("/devices") {
                return axum::Json(json!({ "devices": [] })).into_response();
            }
            if path.ends_with("/joined_rooms") {
                return axum::Json(json!({ "joined_rooms": [] })).into_response();
            }
            if path.ends_with("/join") {
                return axum::Json(json!({ "room_id": room.unwrap_or(ENCRYPTED) })).into_response();
            }
            if path.ends_with("/register") {
                return axum::Json(json!({ "user_id": SOFIA })).into_response();
            }
            if path.ends_with("/ping") {
                return axum::Json(json!({ "duration_ms": 1 })).into_response();
            }
            // Typing, receipts, the device's name, cross-signing uploads, to-device sends: an
            // empty object is a complete answer to each.
            axum::Json(json!({})).into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hs).await.unwrap() });
    url
}

/// An OpenAI-compatible model that stamps each call as it arrives (before reading its body)
/// and hands the stamp and the request's `messages` to the driver.
async fn model(called: mpsc::UnboundedSender<(Instant, Vec<Value>)>) -> String {
    let model = axum::Router::new().fallback(move |req: Request| {
        let called = called.clone();
        async move {
            let at = Instant::now();
            let bytes = axum::body::to_bytes(req.into_body(), 1 << 22)
                .await
                .unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            let messages = body["messages"].as_array().cloned().unwrap_or_default();
            let _ = called.send((at, messages));
            axum::Json(
                json!({ "choices": [{ "message": { "role": "assistant", "content": "Forty-two." } }] }),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, model).await.unwrap() });
    url
}

/// Text of the `k`-th message of the history: a question of Alice's or, every other message,
/// an answer-like one (in the encrypted room all 20 are Alice's: her Megolm session is the one
/// Sofia holds).
fn text(k: usize) -> String {
    if k.is_multiple_of(2) {
        format!("Question {k}: {SENTENCE}?")
    } else {
        format!("Answer {k}: noted; {SENTENCE}. {SENTENCE}.")
    }
}

/// An event of Alice's in `room`.
fn event(room: &str, id: &str, kind: &str, ts: u64, content: Value) -> Value {
    json!({ "type": kind, "event_id": id, "sender": ALICE, "room_id": room,
            "origin_server_ts": ts, "content": content, "unsigned": { "age": 5 } })
}

/// The question of round `i`: it mentions Sofia by id and by name.
fn question(i: usize) -> Value {
    json!({ "msgtype": "m.text", "body": format!("Sofia, question {i}: what is six times seven?"),
            "m.mentions": { "user_ids": [SOFIA] } })
}

/// One measured path's stamps, from the transaction being sent.
#[derive(Default)]
struct Path {
    /// The transaction answered `200`.
    answered: Vec<Duration>,
    /// The run's first homeserver request.
    run_seen: Vec<Duration>,
    /// The bridge asked the homeserver for the room's history.
    history_read: Vec<Duration>,
    /// The runtime was called.
    called: Vec<Duration>,
}

/// Runs the comparison on `db_url` and prints a table.
pub async fn run_history(db_url: &str) {
    let store = daarion_bridge::db::Store::connect(db_url, 4).await.unwrap();
    store.migrate().await.unwrap();
    // Sofia's device exists from an earlier start: the bridge opens her machine before serving
    // and the benchmark exchanges keys with it.
    store.crypto().device(SOFIA, SOFIA_DEVICE).await.unwrap();
    let rooms: Rooms = Arc::default();
    let hs_url = homeserver(rooms.clone()).await;
    let (called_tx, mut called) = mpsc::unbounded_channel();
    let model_url = model(called_tx).await;
    let port = free_port();
    let toml = bridge_toml(
        port,
        db_url,
        &hs_url,
        &format!(
            r#"
[encryption]
pickle_key = "bench-pickle-key-0123456789-abcdefghijk"

[[blueprints]]
code = "bench"
runtime = "openai"
[blueprints.openai]
base_url = "{model_url}/v1"
stream = false

[[agents]]
external_id = "agent:sofia"
name = "Sofia"
blueprint = "bench"
microdao = "microdao:bench"
"#
        ),
    );
    let config = daarion_bridge::config::Config::from_toml_str(&toml).unwrap();
    let bridge = daarion_bridge::Bridge::build(config).await.unwrap();
    let crypto = bridge.crypto.clone().unwrap();
    let sofia = crypto.opened()[0].clone();
    assert_eq!(
        sofia.user.as_str(),
        SOFIA,
        "Sofia's is the only machine yet"
    );
    // Her keys are uploaded here, before the bridge serves (it would upload them itself then):
    // Alice needs them to meet her.
    let keys = upload(&sofia.machine).await;
    let mut alice = Alice::meet(&keys).await;
    alice.room = ENCRYPTED.try_into().unwrap();
    // One session for the whole run (the default rotates every 100 messages).
    let to_device = alice
        .share_key_with(matrix_sdk_crypto::EncryptionSettings {
            rotation_period_msgs: u64::MAX,
            rotation_period: Duration::from_secs(86_400),
            ..Default::default()
        })
        .await;

    // The histories, newest first, and every question, encrypted before timing.
    let encrypted_room: OwnedRoomId = ENCRYPTED.try_into().unwrap();
    let seal = async |content: &Value| {
        let raw: Raw<AnyMessageLikeEventContent> = Raw::new(content).unwrap().cast_unchecked();
        let sealed = alice
            .machine
            .encrypt_room_event_raw(&encrypted_room, "m.room.message", &raw)
            .await
            .unwrap();
        serde_json::to_value(&sealed.content).unwrap()
    };
    let old = 1_700_000_000_000u64;
    let (mut sealed_history, mut plain_history) = (Vec::new(), Vec::new());
    for k in 0..HISTORY {
        let content = json!({ "msgtype": "m.text", "body": text(k) });
        let ts = old + k as u64 * 60_000;
        sealed_history.push(event(
            ENCRYPTED,
            &format!("$eh{k}"),
            "m.room.encrypted",
            ts,
            seal(&content).await,
        ));
        plain_history.push(event(
            PLAIN,
            &format!("$ph{k}"),
            "m.room.message",
            ts,
            content,
        ));
    }
    sealed_history.reverse();
    plain_history.reverse();
    let rounds = WARM_UP + MEASURED;
    let mut questions = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let content = question(i);
        let sealed = event(
            ENCRYPTED,
            &format!("$eq{i}"),
            "m.room.encrypted",
            0,
            seal(&content).await,
        );
        let plain = event(PLAIN, &format!("$pq{i}"), "m.room.message", 0, content);
        questions.push((sealed, plain));
    }
    {
        let mut rooms = rooms.lock().unwrap();
        rooms.entry(ENCRYPTED).or_default().history = sealed_history;
        rooms.entry(PLAIN).or_default().history = plain_history;
    }

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bridge.run(listener, async move {
        let _ = stopped.await;
    }));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..40 {
        if http.get(format!("{base}/health/live")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Sofia's device made ready against the fake homeserver now, not in the first round (and a
    // homeserver answer the bridge cannot take fails here, not as slow runs).
    crypto
        .machine(&sofia.user)
        .await
        .expect("Sofia's device ready");
    // Both rooms mirrored, Alice and Sofia in both; the encrypted room says so, and Alice's room
    // key reaches Sofia's device.
    let member = |room: &str, id: &str, user: &str, membership: &str| {
        json!({ "type": "m.room.member", "state_key": user, "sender": ALICE, "room_id": room,
                "event_id": id, "origin_server_ts": old, "content": { "membership": membership } })
    };
    let mut setup = Vec::new();
    for (room, p) in [(ENCRYPTED, "e"), (PLAIN, "p")] {
        setup.push(member(
            room,
            &format!("${p}inv"),
            "@daarion:localhost",
            "invite",
        ));
        setup.push(member(room, &format!("${p}alice"), ALICE, "join"));
        setup.push(member(room, &format!("${p}sofia"), SOFIA, "join"));
    }
    setup.push(
        json!({ "type": "m.room.encryption", "state_key": "", "sender": ALICE,
        "room_id": ENCRYPTED, "event_id": "$eenc", "origin_server_ts": old,
        "content": { "algorithm": "m.megolm.v1.aes-sha2" } }),
    );
    let setup = json!({ "events": setup, "de.sorunome.msc2409.to_device": to_device });
    put(&http, &base, "hsetup", serde_json::to_vec(&setup).unwrap()).await;

    let runs = sqlx::PgPool::connect(db_url).await.unwrap();
    let (mut sealed, mut clear) = (Path::default(), Path::default());
    let mut fewest_turns = usize::MAX;
    for (i, (encrypted_question, plain_question)) in questions.into_iter().enumerate() {
        // Interleaved, each room first every other round.
        let mut pair = [
            (ENCRYPTED, encrypted_question, &mut sealed),
            (PLAIN, plain_question, &mut clear),
        ];
        if i % 2 == 1 {
            pair.reverse();
        }
        for (room, mut question, path) in pair {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            question["origin_server_ts"] = json!(now_ms);
            let event_id = question["event_id"].as_str().unwrap().to_owned();
            {
                let mut rooms = rooms.lock().unwrap();
                let room = rooms.get_mut(room).unwrap();
                room.question = Some(question.clone());
                room.run_seen = None;
                room.history_read = None;
            }
            let body = serde_json::to_vec(&json!({ "events": [question] })).unwrap();
            let sent = Instant::now();
            let answered = put(&http, &base, &format!("h{i}-{room}"), body).await;
            let (at, messages) = tokio::time::timeout(Duration::from_secs(10), called.recv())
                .await
                .unwrap_or_else(|_| panic!("the runtime was never called for {event_id}"))
                .unwrap();
            let (run_seen, history_read) = {
                let rooms = rooms.lock().unwrap();
                let room = &rooms[room];
                (
                    room.run_seen.expect("the run asked the homeserver"),
                    room.history_read.expect("the history was read"),
                )
            };
            // Guard against measuring an empty context: the history must reach the model,
            // decrypted (the newest history message, Alice's, by its text).
            let turns = messages.len().saturating_sub(1);
            let newest = format!("Alice: {}", text(HISTORY - 1));
            assert!(
                turns >= HISTORY && messages.iter().any(|m| m["content"] == newest.as_str()),
                "{room}: the model got {turns} turns besides the system prompt: {messages:?}"
            );
            fewest_turns = fewest_turns.min(turns);
            if i >= WARM_UP {
                path.answered.push(answered);
                path.run_seen.push(run_seen - sent);
                path.history_read.push(history_read - sent);
                path.called.push(at - sent);
            }
            // One run at a time: the next question comes once this one's answer is posted.
            let mut status = String::new();
            for _ in 0..5_000 {
                status = sqlx::query_scalar::<_, String>(
                    "SELECT status FROM agent_runs WHERE trigger_event_id = $1",
                )
                .bind(&event_id)
                .fetch_optional(&runs)
                .await
                .unwrap()
                .unwrap_or_default();
                if status != "queued" && status != "running" && !status.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            assert_eq!(status, "completed", "the run of {event_id}");
        }
    }
    println!(
        "\n## A question in a room with {HISTORY} messages of history (PostgreSQL, in-process bridge, openai runtime, debounce 0)\n"
    );
    println!(
        "| room | runs | PUT → 200 p50 ms | → run's first homeserver request p50 | → history requested p50 | → runtime called p50 | p90 | p99 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, path) in [("encrypted", sealed), ("plaintext", clear)] {
        let n = path.called.len();
        let (answered, seen, read, called) = (
            stats(path.answered),
            stats(path.run_seen),
            stats(path.history_read),
            stats(path.called),
        );
        println!(
            "| {name} | {n} | {:.2} | {:.2} | {:.2} | **{:.2}** | {:.2} | {:.2} |",
            answered.p50, seen.p50, read.p50, called.p50, called.p90, called.p99
        );
    }
    println!(
        "\nthe model got at least {fewest_turns} turns besides the system prompt in every run"
    );
    let _ = stop.send(());
    let _ = server.await;
}
