//! The bridge's own overhead around an agent runtime: from the transaction arriving to the
//! runtime being called, and from the runtime's final chunk to the homeserver receiving the answer.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::json;

use super::{ROOM, start_bridge, stats};

/// Shared clock of the run-overhead benchmark: the fake model and the fake homeserver stamp
/// what they see, the driver stamps what it sends; all in this process.
#[derive(Clone, Default)]
struct Stamps {
    model_called: Arc<Mutex<Vec<Instant>>>,
    model_answered: Arc<Mutex<Vec<Instant>>>,
    hs_sent: Arc<Mutex<Vec<Instant>>>,
}

/// A homeserver that says yes: joins succeed, state and member lists are empty. The transaction
/// benchmarks point the bridge at it so that the bot's joins of the benchmark's rooms finish at
/// once instead of being retried in the background (against an unreachable homeserver they
/// were retried with backoff for minutes, and that work was counted in the bridge's CPU).
pub async fn quiet_homeserver() -> String {
    let hs = axum::Router::new().fallback(|req: axum::extract::Request| async move {
        let path = req.uri().path();
        if path.ends_with("/state") {
            return axum::Json(json!([]));
        }
        if path.ends_with("/joined_members") {
            return axum::Json(json!({ "joined": {} }));
        }
        if path.ends_with("/messages") {
            return axum::Json(json!({ "chunk": [], "start": "s" }));
        }
        axum::Json(json!({ "user_id": "@daarion:localhost", "room_id": ROOM, "event_id": "$ok" }))
    });
    serve(hs).await
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

/// The bridge's own overhead around a runtime: from the transaction arriving to the runtime
/// being called, and from the runtime's final chunk to the homeserver receiving the answer.
pub async fn run_overhead(db_url: &str, dir: &std::path::Path) {
    let stamps = Stamps::default();
    let st = stamps.clone();
    let model = axum::Router::new().fallback(move || {
        let st = st.clone();
        async move {
            st.model_called.lock().unwrap().push(Instant::now());
            let body = json!({ "choices": [{ "message": { "role": "assistant", "content": "Forty-two." } }] });
            // The final (only) chunk leaves now.
            st.model_answered.lock().unwrap().push(Instant::now());
            axum::Json(body)
        }
    });
    let model_url = serve(model).await;
    let st = stamps.clone();
    let hs = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let st = st.clone();
        async move {
            let path = req.uri().path().to_owned();
            if path.contains("/send/m.room.message/") {
                let mut sent = st.hs_sent.lock().unwrap();
                sent.push(Instant::now());
                return axum::Json(json!({ "event_id": format!("$bench{}", sent.len()) }));
            }
            if path.ends_with("/messages") {
                return axum::Json(json!({ "chunk": [], "start": "s" }));
            }
            if path.ends_with("/joined_members") {
                return axum::Json(json!({ "joined": {} }));
            }
            axum::Json(json!({ "user_id": "@x:localhost", "room_id": ROOM, "duration_ms": 1 }))
        }
    });
    let hs_url = serve(hs).await;
    let extra = format!(
        r#"
[[blueprints]]
code = "bench"
runtime = "openai"
[blueprints.openai]
base_url = "{model_url}/v1"
stream = false

[[agents]]
external_id = "agent:bench"
name = "Bench"
blueprint = "bench"
microdao = "microdao:bench"
"#
    );
    let bridge = start_bridge(db_url, dir, &hs_url, &extra).await;
    let agent = "@agent_bench:localhost";
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let member = |id: &str, user: &str, membership: &str| {
        json!({ "type": "m.room.member", "state_key": user, "sender": user, "room_id": ROOM,
                "event_id": id, "origin_server_ts": now_ms(), "content": { "membership": membership } })
    };
    let setup = vec![
        member("$oi", "@daarion:localhost", "invite"),
        member("$oj0", "@user0:localhost", "join"),
        member("$oj1", "@user1:localhost", "join"),
        member("$oa", agent, "join"),
    ];
    bridge
        .put(
            "overhead-setup",
            serde_json::to_vec(&json!({ "events": setup })).unwrap(),
        )
        .await;
    let n = 120;
    let mut sent_at = Vec::new();
    for i in 0..n {
        let event = json!({
            "type": "m.room.message", "event_id": format!("$q{i}"), "sender": "@user0:localhost", "room_id": ROOM,
            "origin_server_ts": now_ms(),
            "content": { "msgtype": "m.text", "body": "Bench, what is six times seven?", "m.mentions": { "user_ids": [agent] } },
        });
        let before = stamps.hs_sent.lock().unwrap().len();
        sent_at.push(Instant::now());
        bridge
            .put(
                &format!("q{i}"),
                serde_json::to_vec(&json!({ "events": [event] })).unwrap(),
            )
            .await;
        // One run at a time: wait for its answer before the next question.
        for _ in 0..20_000 {
            if stamps.hs_sent.lock().unwrap().len() > before {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let called = stamps.model_called.lock().unwrap().clone();
    let answered = stamps.model_answered.lock().unwrap().clone();
    let delivered = stamps.hs_sent.lock().unwrap().clone();
    assert_eq!(called.len(), n, "every question reached the runtime");
    assert_eq!(delivered.len(), n, "every answer reached the homeserver");
    let to_runtime: Vec<Duration> = called
        .iter()
        .zip(&sent_at)
        .map(|(c, s)| *c - *s)
        .skip(20)
        .collect();
    let to_homeserver: Vec<Duration> = delivered
        .iter()
        .zip(&answered)
        .map(|(d, a)| *d - *a)
        .skip(20)
        .collect();
    let a = stats(to_runtime);
    let b = stats(to_homeserver);
    println!("\n## Run overhead (PostgreSQL, openai runtime, debounce 0)\n");
    println!("| path | runs | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|");
    println!(
        "| transaction PUT sent → runtime called | {} | {:.2} | {:.2} |",
        n - 20,
        a.p50,
        a.p99
    );
    println!(
        "| runtime's final chunk → homeserver send | {} | {:.2} | {:.2} |",
        n - 20,
        b.p50,
        b.p99
    );
}
