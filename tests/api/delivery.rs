//! Puppet delivery through the agent API: send, edit, react, redact; idempotency and ordering;
//! the homeserver rate limiting or going away; a durable outbox across restarts; failed sends;
//! per-agent rate limits; on SQLite and PostgreSQL.

use std::time::Duration;

use rstest::rstest;
use serde_json::{Value, json};

use crate::{
    agents::{SESSION, api, setup},
    support::{Backend, TestApp, ev},
};

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_edit_react_redact(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let (channel, key) = setup(&app).await;
    let base = format!("/api/v1/channels/{channel}/messages");
    let (s, sent, _) = api(
        &app,
        reqwest::Method::POST,
        &base,
        &key,
        Some(json!({
            "text": "**Hello** <b>there</b>", "mentions": ["@alice:localhost"], "reply_to": "$aj",
        })),
    )
    .await;
    assert_eq!(s, 200, "{sent}");
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    let call = app.hs.calls_to("/send/m.room.message/").remove(0);
    assert_eq!(call.method, "PUT");
    assert!(
        call.query.contains("user_id=%40agent_sofia%3Alocalhost"),
        "identity assertion: {}",
        call.query
    );
    assert!(!call.query.contains("access_token"));
    assert_eq!(
        call.body["msgtype"], "m.notice",
        "agents send notices by default"
    );
    assert_eq!(call.body["body"], "**Hello** <b>there</b>");
    assert_eq!(
        call.body["formatted_body"],
        "<p><strong>Hello</strong> &lt;b&gt;there&lt;/b&gt;</p>"
    );
    assert_eq!(
        call.body["m.mentions"]["user_ids"],
        json!(["@alice:localhost"])
    );
    assert_eq!(
        call.body["m.relates_to"]["m.in_reply_to"]["event_id"],
        "$aj"
    );
    // Registered (as an appservice user) and named before the first send.
    assert!(
        app.hs
            .calls_to("/register")
            .iter()
            .any(|c| c.body["username"] == "agent_sofia")
    );
    assert!(
        app.hs
            .calls_to("/displayname")
            .iter()
            .any(|c| c.body["displayname"] == "Sofia")
    );
    // Mirrored at once as the agent's message; the echo in a later transaction changes nothing.
    let row = app
        .rows(&format!(
            "SELECT sender_type, content_preview FROM messages WHERE matrix_event_id = '{event_id}'"
        ))
        .await;
    assert_eq!(
        row,
        vec![vec![
            Some("agent".into()),
            Some("**Hello** <b>there</b>".into())
        ]]
    );
    let echo = ev::base(
        "m.room.message",
        &event_id[1..],
        ev::SOFIA,
        call.body.clone(),
    );
    assert_eq!(app.put_txn("echo", vec![echo]).await.0, 200);
    assert_eq!(app.count("messages").await, 1);
    // Edit own message.
    let (s, edited, _) = api(
        &app,
        reqwest::Method::PUT,
        &format!("{base}/{event_id}"),
        &key,
        Some(json!({ "text": "Hello again" })),
    )
    .await;
    assert_eq!(s, 200, "{edited}");
    let edit = app.hs.calls_to("/send/m.room.message/").pop().unwrap();
    assert_eq!(edit.body["m.relates_to"]["rel_type"], "m.replace");
    assert_eq!(edit.body["m.relates_to"]["event_id"], event_id.as_str());
    assert_eq!(edit.body["m.new_content"]["body"], "Hello again");
    assert_eq!(
        app.col(&format!(
            "SELECT content_preview FROM messages WHERE matrix_event_id = '{event_id}'"
        ))
        .await,
        vec!["Hello again"]
    );
    // Someone else's message: no.
    assert_eq!(
        app.put_txn("h", vec![ev::text("human1", "@alice:localhost", "mine")])
            .await
            .0,
        200
    );
    let (s, _, _) = api(
        &app,
        reqwest::Method::PUT,
        &format!("{base}/$human1"),
        &key,
        Some(json!({ "text": "x" })),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _, _) = api(
        &app,
        reqwest::Method::PUT,
        &format!("{base}/$nothere"),
        &key,
        Some(json!({ "text": "x" })),
    )
    .await;
    assert_eq!(s, 404);
    // React to the human's message.
    let (s, _, _) = api(
        &app,
        reqwest::Method::POST,
        &format!("{base}/$human1/reactions"),
        &key,
        Some(json!({ "key": "👍" })),
    )
    .await;
    assert_eq!(s, 200);
    let react = app.hs.calls_to("/send/m.reaction/").remove(0);
    assert_eq!(
        react.body["m.relates_to"],
        json!({ "rel_type": "m.annotation", "event_id": "$human1", "key": "👍" })
    );
    // Redact own message.
    let (s, _, _) = api(
        &app,
        reqwest::Method::DELETE,
        &format!("{base}/{event_id}"),
        &key,
        Some(json!({ "reason": "oops" })),
    )
    .await;
    assert_eq!(s, 200);
    let red = app.hs.calls_to("/redact/").remove(0);
    assert!(red.path.contains(&event_id), "{}", red.path);
    assert_eq!(red.body["reason"], "oops");
    // Typing and read marker go straight to the homeserver, as the puppet.
    let (s, _, _) = api(
        &app,
        reqwest::Method::PUT,
        &format!("/api/v1/channels/{channel}/typing"),
        &key,
        Some(json!({ "typing": true, "timeout_ms": 5000 })),
    )
    .await;
    assert_eq!(s, 200);
    let typing = app.hs.calls_to("/typing/").remove(0);
    assert_eq!(typing.body, json!({ "typing": true, "timeout": 5000 }));
    assert!(
        typing.path.ends_with("/typing/@agent_sofia:localhost"),
        "{}",
        typing.path
    );
    let (s, _, _) = api(
        &app,
        reqwest::Method::POST,
        &format!("/api/v1/channels/{channel}/read-marker"),
        &key,
        Some(json!({ "event_id": "$human1" })),
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        app.hs
            .calls_to("/receipt/m.read/")
            .iter()
            .any(|c| c.path.ends_with("/$human1"))
    );
    // The session counts the agent's activity.
    assert_eq!(app.col(SESSION).await, vec!["active"]);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_and_ordering(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let (channel, key) = setup(&app).await;
    let path = format!("/api/v1/channels/{channel}/messages");
    let send = |text: &'static str, idem: Option<&'static str>| {
        let mut req = app
            .http
            .post(app.url(&path))
            .bearer_auth(&key)
            .json(&json!({ "text": text }));
        if let Some(k) = idem {
            req = req.header("Idempotency-Key", k);
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (s1, a) = send("once", Some("k-1")).await;
    let (s2, b2) = send("once", Some("k-1")).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(a["event_id"], b2["event_id"]);
    assert_eq!(
        app.hs.calls_to("/send/").len(),
        1,
        "the same key never sends twice"
    );
    // Without a key, the same text twice is two messages.
    send("twice", None).await;
    send("twice", None).await;
    assert_eq!(app.hs.calls_to("/send/").len(), 3);
    // Per-room order is the order of the requests.
    for t in ["one", "two", "three"] {
        send(t, None).await;
    }
    let bodies: Vec<String> = app
        .hs
        .calls_to("/send/")
        .iter()
        .map(|c| c.body["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(&bodies[3..], ["one", "two", "three"]);
    // Pagination with cursors, newest first.
    let (s, page, _) = api(
        &app,
        reqwest::Method::GET,
        &format!("{path}?limit=2"),
        &key,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let msgs = page["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, page2, _) = api(
        &app,
        reqwest::Method::GET,
        &format!("{path}?limit=10&before={cursor}"),
        &key,
        None,
    )
    .await;
    let all: Vec<Value> = msgs
        .iter()
        .chain(page2["messages"].as_array().unwrap())
        .cloned()
        .collect();
    assert_eq!(all.len(), 6);
    let ids: std::collections::HashSet<&str> = all
        .iter()
        .map(|m| m["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 6, "no message twice across pages");
    assert!(page2["next_cursor"].is_null());
    assert_eq!(all[0]["sender"], ev::SOFIA);
    let (s, _, _) = api(
        &app,
        reqwest::Method::GET,
        &format!("{path}?limit=0"),
        &key,
        None,
    )
    .await;
    assert_eq!(s, 400);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn homeserver_429_and_outage(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.replace("[bridge]\n", "[api]\nsend_wait = \"1s\"\n\n[bridge]\n")
    })
    .await;
    let (channel, key) = setup(&app).await;
    let path = format!("/api/v1/channels/{channel}/messages");
    // 429 twice: honoured, then delivered once, with the same transaction id every time.
    app.hs.fail_sends.lock().unwrap().extend([429, 429]);
    let (s, body, _) = api(
        &app,
        reqwest::Method::POST,
        &path,
        &key,
        Some(json!({ "text": "patience" })),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let calls = app.hs.calls_to("/send/");
    assert_eq!(calls.len(), 3);
    assert!(
        calls.iter().all(|c| c.path == calls[0].path),
        "one transaction id for every retry"
    );
    // A longer outage: the API answers 202, the send stays queued and is delivered later.
    app.hs.fail_sends.lock().unwrap().extend([502; 4]);
    let (s, queued, _) = api(
        &app,
        reqwest::Method::POST,
        &path,
        &key,
        Some(json!({ "text": "after the outage" })),
    )
    .await;
    assert_eq!(s, 202, "{queued}");
    assert_eq!(queued["status"], "pending");
    let outbox = queued["outbox_id"].as_str().unwrap().to_owned();
    let mut status = 0;
    for _ in 0..100 {
        let (s, _, _) = api(
            &app,
            reqwest::Method::GET,
            &format!("/api/v1/outbox/{outbox}"),
            &key,
            None,
        )
        .await;
        status = s;
        if s == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    let texts: Vec<String> = app
        .hs
        .calls_to("/send/")
        .iter()
        .map(|c| c.body["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        texts.iter().filter(|t| *t == "after the outage").count(),
        4 + 1
    );
    assert_eq!(
        app.col("SELECT content_preview FROM messages WHERE content_preview = 'after the outage'")
            .await
            .len(),
        1
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_survives_restart(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.replace("[bridge]\n", "[api]\nsend_wait = \"200ms\"\n\n[bridge]\n")
    })
    .await;
    let (channel, key) = setup(&app).await;
    // The homeserver keeps failing: queued, not lost.
    app.hs.fail_sends.lock().unwrap().extend([500; 1000]);
    let (s, queued, _) = api(
        &app,
        reqwest::Method::POST,
        &format!("/api/v1/channels/{channel}/messages"),
        &key,
        Some(json!({ "text": "durable" })),
    )
    .await;
    assert_eq!(s, 202);
    assert_eq!(
        app.col("SELECT status FROM agent_outbox").await,
        vec!["pending"]
    );
    // A new bridge process over the same database picks it up once the homeserver is back.
    app.hs.fail_sends.lock().unwrap().clear();
    let restarted = app.restart().await;
    let id = queued["outbox_id"].as_str().unwrap();
    for _ in 0..100 {
        if app
            .col(&format!(
                "SELECT status FROM agent_outbox WHERE CAST(id AS TEXT) = '{id}'"
            ))
            .await
            == ["sent"]
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.col("SELECT status FROM agent_outbox").await,
        vec!["sent"]
    );
    assert_eq!(
        app.col("SELECT content_preview FROM messages WHERE sender_type = 'agent'")
            .await,
        vec!["durable"]
    );
    drop(restarted);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_send_is_recorded(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let (channel, key) = setup(&app).await;
    app.hs.fail_sends.lock().unwrap().push_back(403);
    let (s, body, _) = api(
        &app,
        reqwest::Method::POST,
        &format!("/api/v1/channels/{channel}/messages"),
        &key,
        Some(json!({ "text": "refused" })),
    )
    .await;
    assert_eq!(s, 502, "{body}");
    assert_eq!(body["status"], "failed");
    let rows = app.rows("SELECT status, error FROM agent_outbox").await;
    assert_eq!(rows[0][0].as_deref(), Some("failed"));
    assert!(rows[0][1].as_deref().unwrap().contains("403"), "{rows:?}");
    assert_eq!(
        app.hs.calls_to("/send/").len(),
        1,
        "a permanent refusal is not retried"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_per_agent(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.replace(
            "[bridge]\n",
            "[api]\nrate_limit_per_minute = 3\n\n[bridge]\n",
        )
    })
    .await;
    let (_, key) = setup(&app).await;
    for _ in 0..3 {
        assert_eq!(
            api(&app, reqwest::Method::GET, "/api/v1/agent", &key, None)
                .await
                .0,
            200
        );
    }
    let (s, body, headers) = api(&app, reqwest::Method::GET, "/api/v1/agent", &key, None).await;
    assert_eq!(
        (s, body["errcode"].as_str()),
        (429, Some("M_LIMIT_EXCEEDED"))
    );
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    assert!(body["retry_after_ms"].as_u64().unwrap() > 0);
}
