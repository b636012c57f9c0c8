//! An agent that uses tools (issue #25), end to end: a person asks Atlas in an encrypted DM,
//! with a real E2EE client the bridge did not write (`tests/e2ee-client`, matrix-sdk) and the
//! real Synapse. The scripted model calls an allowed HTTP tool (served here, its signature
//! checked) and one the agent may not use; the person's client decrypts an answer carrying the
//! tool's result, the line naming the tools and the calls (`io.daarion.tool_calls`); the
//! database holds both calls with their outcomes, and the audit log the call and the denial.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::Request, response::IntoResponse};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::{
    e2ee::{E2eeClient, assert_trusted},
    encryption::bridge_with_identity,
    harness::*,
    model::FakeModel,
};

const ATLAS: &str = "@agent_atlas:localhost";
/// What the weather tool answers: the answer the person reads must carry it.
const FORECAST: &str = "drizzle, then sun at 17 °C";

/// One request the tool server received.
#[derive(Debug, Clone)]
struct ToolCall {
    path: String,
    /// `X-Daarion-Signature` is the HMAC of `"{X-Daarion-Timestamp}.{body}"` with the secret.
    signed: bool,
    /// `X-Daarion-Timestamp`.
    timestamp: i64,
    /// `X-Daarion-Agent`, `X-Daarion-Tool`.
    agent: String,
    tool: String,
    body: Value,
}

/// The HTTP tool of the e2e config's `atlas` blueprint, on its fixed port: records every
/// request (any path), answers `/weather` with [`FORECAST`].
async fn spawn_tool(secret: String) -> Arc<Mutex<Vec<ToolCall>>> {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let app = Router::new().fallback(move |req: Request| {
        let seen = seen.clone();
        let secret = secret.clone();
        async move {
            let (parts, body) = req.into_parts();
            let header = |n: &str| {
                parts
                    .headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            let (ts, sig) = (header("x-daarion-timestamp"), header("x-daarion-signature"));
            let (agent, tool) = (header("x-daarion-agent"), header("x-daarion-tool"));
            let path = parts.uri.path().to_owned();
            let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(format!("{ts}.").as_bytes());
            mac.update(&bytes);
            let hex: String = mac
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            seen.lock().unwrap().push(ToolCall {
                path,
                signed: sig == format!("sha256={hex}"),
                timestamp: ts.parse().unwrap_or(0),
                agent,
                tool,
                body: body.clone(),
            });
            Json(json!({ "city": body["city"], "forecast": FORECAST })).into_response()
        }
    });
    // The port may still be held for a moment by a previous run's server: wait for it.
    let mut tries = 0;
    let listener = loop {
        match tokio::net::TcpListener::bind("127.0.0.1:29336").await {
            Ok(listener) => break listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot bind 127.0.0.1:29336 for the weather tool: {e}"),
        }
    };
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    calls
}

/// An assistant message calling tools: (id, function name, arguments text).
fn calls(list: &[(&str, &str, &str)]) -> Value {
    let calls: Vec<Value> = list
        .iter()
        .map(|(id, name, args)| {
            json!({ "id": id, "type": "function", "function": { "name": name, "arguments": args } })
        })
        .collect();
    json!({ "role": "assistant", "content": null, "tool_calls": calls })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_uses_an_allowed_tool_and_is_denied_another_in_an_encrypted_dm() {
    // The e2e config names the model's and the tool's ports: one test at a time holds them.
    let _serial = serial().lock().await;
    let secret = config("sqlite://unused").secrets["weather_tool"].clone();
    let tool = spawn_tool(secret.clone()).await;
    let (model, _) = FakeModel::spawn_on("script", "127.0.0.1:29335").await;
    let answer_text = format!("In Kyiv: {FORECAST}.");
    model.script.lock().unwrap().extend([
        calls(&[
            ("c1", "weather", r#"{"city": "Kyiv"}"#),
            ("c2", "files__delete_file", r#"{"path": "/"}"#),
        ]),
        json!({ "role": "assistant", "content": answer_text }),
    ]);
    let db_url = fresh_pg().await;
    let bridge = bridge_with_identity(&db_url, ATLAS).await;
    let pool = bridge.store.pool().clone();

    let erin = Person::register("erin").await;
    let mut client = E2eeClient::start(&erin).await;
    let room = client.run(&format!("dm {ATLAS}")).await["room"]
        .as_str()
        .unwrap()
        .to_owned();
    client.run(&format!("joined {room} {ATLAS}")).await;
    client
        .run(&format!("send {room} what is the weather in Kyiv?"))
        .await;
    let runs = "SELECT r.status FROM agent_runs r JOIN agents a ON a.id = r.agent_id \
                WHERE a.external_id = 'agent:atlas'";
    wait_rows(&pool, runs, "Atlas's run", |r| {
        r == [vec![Some("completed".to_owned())]]
    })
    .await;

    // The person's client decrypts the final text: the tool's result, the line naming the
    // tools, and the calls in the content, at the top and in `m.new_content`.
    let footer = "_Tools: weather ✓, files.delete_file ✗ not allowed_";
    let answer = client.run(&format!("expect {room} {ATLAS} {footer}")).await;
    assert_trusted(&answer);
    let content = &answer["content"];
    let shown = if content["m.new_content"].is_object() {
        &content["m.new_content"]
    } else {
        content
    };
    let body = shown["body"].as_str().unwrap_or_default();
    assert!(
        body.starts_with(&answer_text) && body.ends_with(footer),
        "{answer}"
    );
    assert!(!body.contains("_Using"), "the status line is gone: {body}");
    let notes = &content["io.daarion.tool_calls"];
    assert_eq!(
        *notes,
        json!([
            { "name": "weather", "arguments": r#"{"city":"Kyiv"}"#, "status": "ok" },
            { "name": "files.delete_file", "arguments": r#"{"path":"/"}"#, "status": "denied" },
        ]),
        "{answer}"
    );
    assert_eq!(shown["io.daarion.tool_calls"], *notes, "{answer}");
    // On the wire, everything Atlas sent into the room is encrypted.
    let wire = timeline(&erin, &room).await;
    let from_atlas: Vec<&str> = wire
        .iter()
        .filter(|e| e["sender"] == ATLAS && e.get("state_key").is_none())
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect();
    assert!(
        !from_atlas.is_empty() && from_atlas.iter().all(|t| *t == "m.room.encrypted"),
        "{from_atlas:?}"
    );

    // The tool got exactly one call: signed, recent, the model's arguments; the disallowed
    // tool was never called (nothing else reached the tool server).
    let received = tool.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "{received:?}");
    let call = &received[0];
    assert_eq!(call.path, "/weather");
    assert!(call.signed, "signed with the tool's secret: {call:?}");
    assert!(
        (chrono::Utc::now().timestamp() - call.timestamp).abs() < 300,
        "{call:?}"
    );
    assert_eq!(call.body, json!({ "city": "Kyiv" }));
    assert_eq!(
        (call.agent.as_str(), call.tool.as_str()),
        ("agent:atlas", "weather")
    );

    // The model was offered only the allowed tool, and given both outcomes.
    let requests = model.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "one tool round, then the answer");
    let offered: Vec<&str> = requests[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(offered, ["weather"]);
    let results: Vec<(&str, &str)> = requests[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            (
                m["tool_call_id"].as_str().unwrap_or(""),
                m["content"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(results[0].0, "c1");
    assert!(results[0].1.contains(FORECAST), "{results:?}");
    assert_eq!(results[1].0, "c2");
    assert!(results[1].1.contains("not allowed"), "{results:?}");

    // The database holds both calls of Atlas's run with their outcomes.
    let steps = rows(
        &pool,
        "SELECT s.tool, s.status, s.round::text, s.call_id, s.arguments, s.result, s.error \
         FROM agent_run_steps s JOIN agent_runs r ON r.id = s.run_id \
         JOIN agents a ON a.id = r.agent_id WHERE a.external_id = 'agent:atlas' \
         ORDER BY s.round, s.position",
    )
    .await;
    assert_eq!(steps.len(), 2, "{steps:?}");
    let step = |i: usize, c: usize| steps[i][c].as_deref();
    assert_eq!(
        (step(0, 0), step(0, 1), step(0, 2), step(0, 3)),
        (Some("weather"), Some("ok"), Some("0"), Some("c1"))
    );
    assert!(step(0, 4).unwrap().contains("Kyiv"), "{steps:?}");
    assert!(step(0, 5).unwrap().contains(FORECAST), "{steps:?}");
    assert_eq!(step(0, 6), None);
    assert_eq!(
        (step(1, 0), step(1, 1), step(1, 2), step(1, 3)),
        (
            Some("files.delete_file"),
            Some("denied"),
            Some("0"),
            Some("c2")
        )
    );
    assert_eq!(step(1, 5), None, "a denied call has no result");
    assert!(step(1, 6).unwrap().contains("not allowed"), "{steps:?}");

    // The audit log holds the call and the denial, by Atlas in this room, and no secret.
    let audit = rows(
        &pool,
        "SELECT action, target, outcome, actor_type, actor_id, details->>'room_id' \
         FROM audit_log WHERE action LIKE 'tool.%' ORDER BY action",
    )
    .await;
    let row = |action: &str, target: &str, outcome: &str| {
        [
            action,
            target,
            outcome,
            "agent",
            "agent:atlas",
            room.as_str(),
        ]
        .map(|s| Some(s.to_owned()))
        .to_vec()
    };
    assert_eq!(
        audit,
        [
            row("tool.called", "weather", "allowed"),
            row("tool.denied", "files.delete_file", "denied"),
        ]
    );
    let all_audit = rows(&pool, "SELECT details::text FROM audit_log").await;
    assert!(
        all_audit
            .iter()
            .all(|r| !r[0].as_deref().unwrap_or("").contains(&secret)),
        "no secret in the audit log"
    );
    bridge.stop().await;
}
