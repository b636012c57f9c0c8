//! The runtimes against servers written here: OpenAI-compatible (streaming and not; slow,
//! failing, malformed) and the signed webhook (reply, defer, fail), on SQLite and PostgreSQL.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::Request, http::StatusCode, response::IntoResponse};
use hmac::{Hmac, Mac};
use rstest::rstest;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::{
    agents::{api, setup},
    model::FakeModel,
    runs::{mention, runtime_config, wait_runs},
    support::{Backend, TestApp, ev},
};

/// A webhook runtime that checks the signature itself. `mode`: reply | defer | fail | files.
#[derive(Clone, Default)]
pub struct FakeWebhook {
    pub calls: Arc<Mutex<Vec<(bool, Value)>>>,
}

const SECRET: &str = "webhook-test-secret";

impl FakeWebhook {
    pub async fn spawn(mode: &'static str) -> (Self, String) {
        let hook = FakeWebhook::default();
        let h = hook.clone();
        let app = Router::new().fallback(move |req: Request| {
            let h = h.clone();
            async move {
                // The files a `files` answer names by URL.
                if req.uri().path() == "/files/notes.txt" {
                    return "notes from the runtime".into_response();
                }
                let host = req
                    .headers()
                    .get("host")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let ts = req
                    .headers()
                    .get("x-daarion-timestamp")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let sig = req
                    .headers()
                    .get("x-daarion-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
                    .await
                    .unwrap();
                let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
                mac.update(format!("{ts}.").as_bytes());
                mac.update(&bytes);
                let expected: String = mac
                    .finalize()
                    .into_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                let fresh = ts
                    .parse::<i64>()
                    .is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() < 300);
                let valid = sig == format!("sha256={expected}") && fresh;
                h.calls
                    .lock()
                    .unwrap()
                    .push((valid, serde_json::from_slice(&bytes).unwrap_or(Value::Null)));
                if !valid {
                    return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
                }
                match mode {
                    "defer" => StatusCode::ACCEPTED.into_response(),
                    "fail" => (StatusCode::BAD_GATEWAY, "down").into_response(),
                    "files" => Json(json!({ "reply": "Two files.", "files": [
                        { "name": "chart.png", "mimetype": "image/png", "base64": crate::model::IMAGE_B64 },
                        { "name": "notes.txt", "mimetype": "text/plain", "url": format!("http://{host}/files/notes.txt") },
                        { "name": "broken.bin" },
                        { "name": "gone.txt", "url": format!("http://{host}/files/gone.txt") },
                    ] }))
                    .into_response(),
                    _ => Json(json!({ "reply": "Webhook says hi" })).into_response(),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (hook, url)
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_streams_into_one_edited_message(#[case] b: Backend) {
    let (model, url) = FakeModel::spawn("stream").await;
    let app = TestApp::spawn_with(
        b,
        runtime_config(
            "openai",
            &format!(
                "[blueprints.openai]\nbase_url = \"{url}\"\ntemperature = 0.2\nmax_tokens = 64\n"
            ),
        ),
    )
    .await;
    setup(&app).await;
    app.hs.history.lock().unwrap().extend([
        ev::now(ev::text(
            "q",
            "@alice:localhost",
            "Sofia, what is six times seven?",
        )),
        ev::now(ev::base(
            "m.room.message",
            "old-answer",
            ev::SOFIA,
            json!({ "msgtype": "m.notice", "body": "Earlier answer" }),
        )),
    ]);
    assert_eq!(
        app.put_txn(
            "1",
            vec![mention(
                "q",
                "Sofia, what is six times seven?",
                &[ev::SOFIA]
            )]
        )
        .await
        .0,
        200
    );
    let runs = wait_runs(&app, 1, "completed").await;
    // The model got the blueprint's model, options, system prompt and named turns.
    let req = model.requests.lock().unwrap()[0].clone();
    assert_eq!(req["model"], "test-model");
    assert_eq!(req["stream"], true);
    assert_eq!(req["max_tokens"], 64);
    assert_eq!(
        req["messages"][0],
        json!({ "role": "system", "content": "Be brief." })
    );
    let turns = req["messages"].as_array().unwrap();
    assert!(
        turns
            .iter()
            .any(|m| m["role"] == "assistant" && m["content"] == "Earlier answer"),
        "{req}"
    );
    assert!(
        turns.iter().any(|m| m["role"] == "user"
            && m["content"] == "Alice Liddell: Sofia, what is six times seven?"),
        "{req}"
    );
    // One message, then edits; the last edit holds the whole text.
    let sent = app.hs.sent_messages();
    let first = &sent[0].1.body;
    assert!(
        first
            .get("m.relates_to")
            .is_none_or(|r| r["rel_type"] != "m.replace")
    );
    let edits: Vec<&Value> = sent[1..].iter().map(|(_, c)| &c.body).collect();
    assert!(!edits.is_empty(), "a streamed answer is edited as it grows");
    assert!(edits.len() <= 4, "edits are rate limited: {}", edits.len());
    assert!(
        edits
            .iter()
            .all(|e| e["m.relates_to"]["rel_type"] == "m.replace")
    );
    assert_eq!(
        edits.last().unwrap()["m.new_content"]["body"],
        "The answer is forty-two."
    );
    let rows = app.rows("SELECT CAST(output AS TEXT), CAST(prompt_tokens AS TEXT), CAST(completion_tokens AS TEXT) FROM agent_runs").await;
    assert!(
        rows[0][0]
            .as_deref()
            .unwrap()
            .contains("The answer is forty-two.")
    );
    assert_eq!(
        (rows[0][1].as_deref(), rows[0][2].as_deref()),
        (Some("20"), Some("5"))
    );
    // The mirror shows the final text on the one message row.
    let reply = runs[0][2].clone().unwrap();
    assert_eq!(
        app.col(&format!(
            "SELECT content_preview FROM messages WHERE matrix_event_id = '{reply}'"
        ))
        .await,
        vec!["The answer is forty-two."]
    );
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("daarion_bridge_time_to_first_token_seconds_count 1"),
        "{metrics}"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_plain_and_failures(#[case] b: Backend) {
    for (mode, expect) in [
        ("plain", "completed"),
        ("fail", "failed"),
        ("malformed", "failed"),
        ("slow", "failed"),
    ] {
        let (_model, url) = FakeModel::spawn(mode).await;
        let app = TestApp::spawn_with(
            b,
            runtime_config(
                "openai",
                &format!(
                    "[blueprints.openai]\nbase_url = \"{url}\"\nstream = false\ntimeout = \"1s\"\n"
                ),
            ),
        )
        .await;
        setup(&app).await;
        assert_eq!(
            app.put_txn("1", vec![mention("q", "Sofia?", &[ev::SOFIA])])
                .await
                .0,
            200
        );
        let runs = wait_runs(&app, 1, expect).await;
        let sent = app.hs.sent_messages();
        if expect == "completed" {
            assert_eq!(sent.len(), 1, "{mode}");
            assert_eq!(
                sent[0].1.body["formatted_body"],
                "<p>A plain <strong>answer</strong>.</p>"
            );
        } else {
            // One short notice, never a retried answer.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let sent = app.hs.sent_messages();
            assert_eq!(sent.len(), 1, "{mode}: exactly one notice");
            assert!(
                sent[0].1.body["body"]
                    .as_str()
                    .unwrap()
                    .contains("could not answer"),
                "{mode}"
            );
            assert!(
                runs[0][5].as_deref().unwrap().len() > 3,
                "{mode}: the error is recorded"
            );
        }
        if mode == "slow" {
            assert!(runs[0][5].as_deref().unwrap().contains("timed out"));
        }
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_runtime(#[case] b: Backend) {
    // 200 with a reply: posted as the agent; the signature checked by the receiver.
    let (hook, url) = FakeWebhook::spawn("reply").await;
    let app = TestApp::spawn_with(
        b,
        runtime_config(
            "webhook",
            &format!("[blueprints.webhook]\nurl = \"{url}\"\nsecret = \"webhook-test-secret\"\n"),
        ),
    )
    .await;
    setup(&app).await;
    assert_eq!(
        app.put_txn("1", vec![mention("q", "Sofia, hook?", &[ev::SOFIA])])
            .await
            .0,
        200
    );
    wait_runs(&app, 1, "completed").await;
    let (valid, payload) = hook.calls.lock().unwrap()[0].clone();
    assert!(valid, "signature verifies");
    assert_eq!(payload["agent"]["matrix_id"], ev::SOFIA);
    assert_eq!(
        payload["triggers"][0]["event_id"], "$q",
        "the triggering event in full"
    );
    assert_eq!(payload["triggers"][0]["content"]["body"], "Sofia, hook?");
    assert!(payload["run_id"].as_str().unwrap().len() == 36);
    assert_eq!(app.hs.sent_messages()[0].1.body["body"], "Webhook says hi");

    // 202: the runtime answers later through the agent API with the run id.
    let (_hook, url) = FakeWebhook::spawn("defer").await;
    let app = TestApp::spawn_with(
        b,
        runtime_config(
            "webhook",
            &format!("[blueprints.webhook]\nurl = \"{url}\"\nsecret = \"webhook-test-secret\"\n"),
        ),
    )
    .await;
    let (channel, key) = setup(&app).await;
    assert_eq!(
        app.put_txn("1", vec![mention("q", "Sofia, later?", &[ev::SOFIA])])
            .await
            .0,
        200
    );
    wait_runs(&app, 1, "running").await;
    let run_id = app
        .col("SELECT CAST(id AS TEXT) FROM agent_runs")
        .await
        .remove(0);
    // The webhook's 202 is recorded (the run is deferred) just after the run shows running.
    let deferred = format!(
        "SELECT CAST(COUNT(*) AS TEXT) FROM agent_runs WHERE deferred_at IS NOT NULL \
         AND CAST(id AS TEXT) = '{run_id}'"
    );
    app.eventually("the run is deferred", Duration::from_secs(10), || async {
        app.col(&deferred).await == ["1"]
    })
    .await;
    // A restart keeps a deferred webhook run waiting, and fails a run interrupted more often
    // than `bridge.run_attempts` (a run interrupted less often is resumed: see the fault test).
    let interrupted = app.insert_running_run(ev::SOFIA, 3).await;
    let restarted = app.restart().await;
    let status =
        |id: String| format!("SELECT status FROM agent_runs WHERE CAST(id AS TEXT) = '{id}'");
    for _ in 0..500 {
        if app.col(&status(interrupted.clone())).await == ["failed"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.col(&status(interrupted.clone())).await, vec!["failed"]);
    assert_eq!(app.col(&status(run_id.clone())).await, vec!["running"]);
    let (s, sent, _) = api(
        &restarted,
        reqwest::Method::POST,
        &format!("/api/v1/channels/{channel}/messages"),
        &key,
        Some(json!({ "text": "Here you go", "run_id": run_id })),
    )
    .await;
    assert_eq!(s, 200, "{sent}");
    let done = app
        .rows(&format!(
            "SELECT status, reply_event_id FROM agent_runs WHERE CAST(id AS TEXT) = '{run_id}'"
        ))
        .await;
    assert_eq!(done[0][0].as_deref(), Some("completed"));
    assert_eq!(done[0][1].as_deref(), sent["event_id"].as_str());
    let (s, _, _) = api(
        &restarted,
        reqwest::Method::POST,
        &format!("/api/v1/channels/{channel}/messages"),
        &key,
        Some(json!({ "text": "again", "run_id": run_id })),
    )
    .await;
    assert_eq!(s, 400, "a finished run cannot be answered twice");
    drop(restarted);

    // An error: the run fails, and webhook runtimes post no notice by default.
    let (_hook, url) = FakeWebhook::spawn("fail").await;
    let app = TestApp::spawn_with(
        b,
        runtime_config(
            "webhook",
            &format!("[blueprints.webhook]\nurl = \"{url}\"\nsecret = \"webhook-test-secret\"\n"),
        ),
    )
    .await;
    setup(&app).await;
    assert_eq!(
        app.put_txn("1", vec![mention("q", "Sofia?", &[ev::SOFIA])])
            .await
            .0,
        200
    );
    let runs = wait_runs(&app, 1, "failed").await;
    assert!(runs[0][5].as_deref().unwrap().contains("502"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.hs.sent_messages().is_empty());
}
