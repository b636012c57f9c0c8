//! Agents as virtual users: sessions, access keys and capabilities, the agent API, and puppet
//! delivery (ordering, idempotency, retries, durability), on SQLite and PostgreSQL.

use daarion_bridge::{keys, model::Ts};
use rstest::rstest;
use serde_json::{Value, json};

use crate::support::{Backend, TestApp, ev};

/// A mirrored room where Sofia is an active member, and a key with every capability.
pub async fn setup(app: &TestApp) -> (String, String) {
    let (s, _) = app
        .put_txn(
            "agent-setup",
            vec![
                ev::invite_bot("inv", "@alice:localhost", "Town Square"),
                ev::member("aj", "@alice:localhost", "@alice:localhost", "join"),
                ev::now(ev::member("sj", ev::SOFIA, ev::SOFIA, "join")),
            ],
        )
        .await;
    assert_eq!(s, 200);
    let channel = app
        .col("SELECT CAST(id AS TEXT) FROM channels")
        .await
        .remove(0);
    let (_, key) = keys::create(
        &app.store,
        "agent:sofia",
        "test",
        &[],
        &["agent.runtime".into()],
        None,
        &daarion_bridge::db::audit::Actor::cli(),
    )
    .await
    .unwrap();
    (channel, key)
}

pub async fn api(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = app.http.request(method, app.url(path)).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.json().await.unwrap_or(Value::Null), headers)
}

pub(crate) const SESSION: &str = "SELECT s.status FROM agent_sessions s JOIN agents a ON a.id = s.agent_id WHERE a.external_id = 'agent:sofia' ORDER BY s.started_at, s.id";

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_follow_activity(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    setup(&app).await;
    // Joining opened an active session.
    assert_eq!(app.col(SESSION).await, vec!["active"]);
    let now = || Ts::now();
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
        metrics.contains("daarion_bridge_agent_sessions"),
        "{metrics}"
    );
    // Quiet for longer than session_idle_after (15 min): idle.
    let later = Ts(now().0 + chrono::Duration::minutes(16));
    let metrics = std::sync::Arc::new(daarion_bridge::metrics::Metrics::new());
    let n = app.sweep(&metrics, later).await;
    assert_eq!(n, 1);
    assert_eq!(app.col(SESSION).await, vec!["idle"]);
    assert!(
        metrics
            .render()
            .contains(r#"daarion_bridge_agent_sessions{status="idle"} 1"#),
        "{}",
        metrics.render()
    );
    // Not yet quiet long enough: stays active.
    let mut mention = ev::base(
        "m.room.message",
        "q1",
        "@alice:localhost",
        json!({
            "msgtype": "m.text", "body": "Sofia?", "m.mentions": { "user_ids": [ev::SOFIA] },
        }),
    );
    mention["origin_server_ts"] = json!(now().0.timestamp_millis());
    assert_eq!(app.put_txn("m1", vec![mention]).await.0, 200);
    assert_eq!(
        app.col(SESSION).await,
        vec!["active"],
        "being addressed revives the session"
    );
    let soon = Ts(now().0 + chrono::Duration::minutes(5));
    assert_eq!(app.sweep(&metrics, soon).await, 0);
    // Leaving closes it; a later rejoin opens a new row.
    assert_eq!(
        app.put_txn(
            "l",
            vec![ev::now(ev::member("sl", ev::SOFIA, ev::SOFIA, "leave"))]
        )
        .await
        .0,
        200
    );
    assert_eq!(app.col(SESSION).await, vec!["closed"]);
    assert_eq!(
        app.put_txn(
            "r",
            vec![ev::now(ev::member("sr", ev::SOFIA, ev::SOFIA, "join"))]
        )
        .await
        .0,
        200
    );
    assert_eq!(app.col(SESSION).await, vec!["closed", "active"]);
    // A closed session is never swept, and the schema allows one open session only.
    let far = Ts(now().0 + chrono::Duration::days(30));
    assert_eq!(app.sweep(&metrics, far).await, 1);
    assert_eq!(app.col(SESSION).await, vec!["closed", "idle"]);
    let dup = "INSERT INTO agent_sessions (id, agent_id, channel_id, status) SELECT '00000000-0000-4000-8000-0000000000aa', agent_id, channel_id, 'active' FROM agent_sessions WHERE status = 'idle'";
    let err = match app.store.pool() {
        daarion_bridge::db::Pool::Pg(p) => sqlx::query(dup).execute(p).await.err(),
        daarion_bridge::db::Pool::Sqlite(p) => sqlx::query(dup).execute(p).await.err(),
    };
    assert!(
        err.is_some(),
        "a second open session must violate the schema"
    );
    // Tombstone closes every open session of the room.
    let tomb = ev::state(
        "m.room.tombstone",
        "tomb",
        "@alice:localhost",
        "",
        json!({ "body": "moved", "replacement_room": "!new:localhost" }),
    );
    assert_eq!(app.put_txn("t", vec![tomb]).await.0, 200);
    assert_eq!(app.col(SESSION).await, vec!["closed", "closed"]);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_agent_idle_override(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.replace(
            "microdao = \"microdao:demo\"\n",
            "microdao = \"microdao:demo\"\nsession_idle_after = \"2m\"\n",
        )
    })
    .await;
    setup(&app).await;
    let metrics = std::sync::Arc::new(daarion_bridge::metrics::Metrics::new());
    let in3 = Ts(Ts::now().0 + chrono::Duration::minutes(3));
    assert_eq!(app.sweep(&metrics, in3).await, 1);
    assert_eq!(app.col(SESSION).await, vec!["idle"]);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_capabilities(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let (channel, key) = setup(&app).await;
    let get = reqwest::Method::GET;
    let (s, me, _) = api(&app, get.clone(), "/api/v1/agent", &key, None).await;
    assert_eq!(s, 200);
    assert_eq!(me["matrix_id"], ev::SOFIA);
    assert_eq!(me["external_id"], "agent:sofia");
    // Missing, unknown, revoked, expired.
    let r = app.http.get(app.url("/api/v1/agent")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["errcode"],
        "M_MISSING_TOKEN"
    );
    let (s, body, _) = api(&app, get.clone(), "/api/v1/agent", "dab_nope", None).await;
    assert_eq!(
        (s, body["errcode"].as_str()),
        (401, Some("M_UNKNOWN_TOKEN"))
    );
    let (_, revoked) = keys::create(
        &app.store,
        "agent:sofia",
        "old",
        &["chat.message.read".into()],
        &[],
        None,
        &daarion_bridge::db::audit::Actor::cli(),
    )
    .await
    .unwrap();
    assert_eq!(
        app.store
            .keys()
            .revoke(&revoked[..12], &daarion_bridge::db::audit::Actor::cli())
            .await
            .unwrap(),
        1
    );
    let (s, body, _) = api(&app, get.clone(), "/api/v1/agent", &revoked, None).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (401, Some("this access key was revoked"))
    );
    let past = Ts(Ts::now().0 - chrono::Duration::hours(1));
    let (_, expired) = keys::create(
        &app.store,
        "agent:sofia",
        "exp",
        &["chat.message.read".into()],
        &[],
        Some(past),
        &daarion_bridge::db::audit::Actor::cli(),
    )
    .await
    .unwrap();
    let (s, body, _) = api(&app, get.clone(), "/api/v1/agent", &expired, None).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (401, Some("this access key has expired"))
    );
    // Keys are stored hashed only, and last use is recorded.
    let stored = app.col("SELECT key_hash FROM access_keys").await;
    assert!(
        stored
            .iter()
            .all(|h| h.len() == 64 && !h.starts_with("dab_"))
    );
    assert!(stored.contains(&keys::hash(&key)));
    assert_ne!(app.col("SELECT CASE WHEN last_used_at IS NULL THEN 'never' ELSE 'used' END FROM access_keys WHERE key_prefix = 'KEY'".replace("KEY", &key[..12]).as_str()).await, vec!["never"]);
    // A read-only key cannot send.
    let (_, reader) = keys::create(
        &app.store,
        "agent:sofia",
        "ro",
        &["chat.message.read".into()],
        &[],
        None,
        &daarion_bridge::db::audit::Actor::cli(),
    )
    .await
    .unwrap();
    let (s, _, _) = api(
        &app,
        get.clone(),
        &format!("/api/v1/channels/{channel}/messages"),
        &reader,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, body, _) = api(
        &app,
        reqwest::Method::POST,
        &format!("/api/v1/channels/{channel}/messages"),
        &reader,
        Some(json!({ "text": "hi" })),
    )
    .await;
    assert_eq!((s, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("chat.message.send")
    );
    assert!(app.hs.calls_to("/send/").is_empty());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_and_input_rules(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let (channel, key) = setup(&app).await;
    let post = reqwest::Method::POST;
    let path = format!("/api/v1/channels/{channel}/messages");
    // Malformed bodies name the problem.
    let (s, body, _) = api(
        &app,
        post.clone(),
        &path,
        &key,
        Some(json!({ "txt": "typo" })),
    )
    .await;
    assert_eq!((s, body["errcode"].as_str()), (400, Some("M_BAD_JSON")));
    assert!(
        body["error"].as_str().unwrap().contains("txt")
            || body["error"].as_str().unwrap().contains("text"),
        "{body}"
    );
    let r = app
        .http
        .post(app.url(&path))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["errcode"], "M_NOT_JSON");
    let (s, body, _) = api(
        &app,
        post.clone(),
        &path,
        &key,
        Some(json!({ "text": "   " })),
    )
    .await;
    assert_eq!(
        (s, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM"))
    );
    let (s, body, _) = api(
        &app,
        post.clone(),
        "/api/v1/channels/not-a-uuid/messages",
        &key,
        Some(json!({ "text": "x" })),
    )
    .await;
    assert_eq!(
        (s, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM"))
    );
    // Whatever the failure, the body is a Matrix error (here a path that is not UTF-8).
    let r = app
        .http
        .post(app.url("/api/v1/channels/%FF/messages"))
        .bearer_auth(&key)
        .json(&json!({ "text": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.json::<Value>().await.unwrap()["errcode"]
            .as_str()
            .unwrap()
            .starts_with("M_")
    );
    // Unknown channel: 404. A channel the agent is not in: 403.
    let (s, body, _) = api(
        &app,
        post.clone(),
        "/api/v1/channels/00000000-0000-4000-8000-000000000000/messages",
        &key,
        Some(json!({ "text": "x" })),
    )
    .await;
    assert_eq!((s, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let other = "!other:localhost";
    let e = ev::in_room(
        ev::state(
            "city.daarion.channel",
            "d",
            "@alice:localhost",
            "",
            json!({ "microdao": "microdao:demo" }),
        ),
        other,
    );
    assert_eq!(app.put_txn("o", vec![e]).await.0, 200);
    let other_id = app
        .col(&format!(
            "SELECT CAST(id AS TEXT) FROM channels WHERE matrix_room_id = '{other}'"
        ))
        .await
        .remove(0);
    let (s, _, _) = api(
        &app,
        post.clone(),
        &format!("/api/v1/channels/{other_id}/messages"),
        &key,
        Some(json!({ "text": "x" })),
    )
    .await;
    assert_eq!(s, 403);
    // After leaving, the agent may no longer act in the channel.
    assert_eq!(
        app.put_txn(
            "leave",
            vec![ev::now(ev::member("sl", ev::SOFIA, ev::SOFIA, "leave"))]
        )
        .await
        .0,
        200
    );
    let (s, _, _) = api(&app, post, &path, &key, Some(json!({ "text": "x" }))).await;
    assert_eq!(s, 403);
    let (s, body, _) = api(&app, reqwest::Method::GET, "/api/v1/channels", &key, None).await;
    assert_eq!(s, 200);
    assert_eq!(body["channels"].as_array().unwrap().len(), 0);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_route(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let r = app
        .http
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let checked_in: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/agent-api.openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(doc, checked_in);
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/v1/agent", &["get"][..]),
        ("/api/v1/channels", &["get"]),
        ("/api/v1/sessions", &["get"]),
        ("/api/v1/channels/{channel_id}/messages", &["get", "post"]),
        (
            "/api/v1/channels/{channel_id}/messages/{event_id}",
            &["put", "delete"],
        ),
        (
            "/api/v1/channels/{channel_id}/messages/{event_id}/reactions",
            &["post"],
        ),
        ("/api/v1/channels/{channel_id}/typing", &["put"]),
        ("/api/v1/channels/{channel_id}/read-marker", &["post"]),
        ("/api/v1/outbox/{outbox_id}", &["get"]),
        ("/api/v1/runs", &["get"]),
        ("/api/v1/runs/{run_id}", &["get"]),
        ("/api/v1/channels/{channel_id}/settings", &["put"]),
        ("/api/v1/admin/status", &["get"]),
        ("/api/v1/admin/keys", &["post"]),
        ("/api/v1/admin/microdaos", &["get"]),
        (
            "/api/v1/admin/microdaos/{external_id}",
            &["get", "put", "delete"],
        ),
        ("/api/v1/admin/blueprints", &["get"]),
        ("/api/v1/admin/blueprints/{code}", &["get", "put", "delete"]),
        ("/api/v1/admin/agents", &["get"]),
        (
            "/api/v1/admin/agents/{external_id}",
            &["get", "put", "delete"],
        ),
        ("/api/v1/admin/agents/{external_id}/rooms", &["post"]),
        ("/api/v1/admin/channels", &["get", "post"]),
        ("/api/v1/admin/channels/{channel_id}", &["delete"]),
        (
            "/api/v1/admin/agents/{external_id}/rooms/{room_id}",
            &["delete"],
        ),
        (
            "/api/v1/admin/agents/{external_id}/channels/{channel_id}/respond",
            &["put"],
        ),
        ("/api/v1/admin/agents/{external_id}/keys", &["post"]),
        ("/api/v1/admin/keys/{key_id}", &["delete"]),
        ("/api/v1/admin/channels", &["get"]),
        ("/api/v1/admin/channels/{channel_id}/members", &["get"]),
        ("/api/v1/admin/channels/{channel_id}/export", &["get"]),
        ("/api/v1/admin/sessions", &["get"]),
        ("/api/v1/admin/runs", &["get"]),
        ("/api/v1/admin/audit", &["get"]),
        ("/api/v1/admin/events/dead", &["get"]),
        ("/api/v1/admin/events/dead/{id}/retry", &["post"]),
        ("/api/v1/admin/failed", &["get"]),
        ("/api/v1/admin/failed/{kind}/{id}/retry", &["post"]),
    ] {
        for m in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(*m)).is_some(),
                "{m} {path} is not documented"
            );
        }
    }
    // Every admin operation names its key scheme.
    for (path, methods) in paths
        .iter()
        .filter(|(p, _)| p.starts_with("/api/v1/admin/"))
    {
        for (m, op) in methods.as_object().unwrap() {
            assert_eq!(op["security"][0]["adminKey"], json!([]), "{m} {path}");
            assert!(op["responses"].get("403").is_some(), "{m} {path}");
        }
    }
}
