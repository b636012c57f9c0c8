//! The Application Service protocol: transactions (replays, duplicates, malformed and oversize
//! bodies), authentication, routes (current and legacy), queries, ping and third-party lookups.

use rstest::rstest;
use serde_json::{Value, json};

use crate::{
    mirrored,
    support::{Backend, HS_TOKEN, TestApp, ev},
};

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_invite_mirrors_room_and_joins(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    app.hs.state.lock().unwrap().insert(
        ev::ROOM.into(),
        vec![
            ev::state(
                "m.room.create",
                "c",
                "@alice:localhost",
                "",
                json!({ "room_version": "11", "creator": "@alice:localhost" }),
            ),
            ev::state(
                "m.room.name",
                "n",
                "@alice:localhost",
                "",
                json!({ "name": "Town Square (full)" }),
            ),
            ev::state(
                "m.room.topic",
                "t",
                "@alice:localhost",
                "",
                json!({ "topic": "Everything" }),
            ),
            ev::state(
                "m.room.join_rules",
                "j",
                "@alice:localhost",
                "",
                json!({ "join_rule": "public" }),
            ),
            ev::state(
                "m.room.power_levels",
                "p",
                "@alice:localhost",
                "",
                json!({ "users": { "@alice:localhost": 100, "@mod:localhost": 50 } }),
            ),
            ev::member("m1", "@alice:localhost", "@alice:localhost", "join"),
            ev::member("m2", "@mod:localhost", "@mod:localhost", "join"),
            ev::member("m3", "@bob:localhost", "@bob:localhost", "join"),
            ev::member("m4", ev::BOT, ev::BOT, "join"),
        ],
    );
    let (status, body) = app
        .put_txn(
            "t1",
            vec![ev::invite_bot("inv", "@alice:localhost", "Town Square")],
        )
        .await;
    assert_eq!((status, body), (200, json!({})));
    // Created at once from the invite's stripped state, in the default microDAO.
    let rows = app
        .rows("SELECT c.name, c.slug, c.visibility, m.external_id FROM channels c JOIN microdaos m ON m.id = c.microdao_id")
        .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][1].as_deref(), Some("town-square"));
    assert_eq!(rows[0][3].as_deref(), Some("microdao:demo"));
    // The bot joins (as itself: no identity assertion) and reads the state.
    let join = app
        .hs
        .wait_for("a join", |c| {
            c.path == format!("/_matrix/client/v3/rooms/{}/join", ev::ROOM)
        })
        .await;
    assert_eq!(join.method, "POST");
    assert_eq!(join.auth, format!("Bearer {}", crate::support::AS_TOKEN));
    assert!(
        !join.query.contains("access_token"),
        "tokens never travel in query strings"
    );
    app.hs
        .wait_for("a state read", |c| c.path.ends_with("/state"))
        .await;
    // ... and the channel is completed from it.
    for _ in 0..100 {
        if app.count("channel_members").await == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let ch = app
        .rows("SELECT name, topic, visibility FROM channels")
        .await;
    assert_eq!(
        ch[0],
        vec![
            Some("Town Square (full)".into()),
            Some("Everything".into()),
            Some("public".into())
        ]
    );
    let roles = app
        .rows("SELECT u.matrix_id, cm.role FROM channel_members cm JOIN users u ON u.id = cm.member_user_id ORDER BY u.matrix_id")
        .await;
    assert_eq!(
        roles,
        vec![
            vec![Some("@alice:localhost".into()), Some("owner".into())],
            vec![Some("@bob:localhost".into()), Some("member".into())],
            vec![Some("@mod:localhost".into()), Some("admin".into())],
        ]
    );
    // The bot is not a DAARION user.
    assert!(
        app.col("SELECT matrix_id FROM users WHERE external_id <> 'bridge:bot'")
            .await
            .iter()
            .all(|m| m != ev::BOT)
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_txn_changes_nothing_even_after_restart(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    mirrored(&app).await;
    let (s, _) = app
        .put_txn(
            "t1",
            vec![
                ev::text("m1", "@alice:localhost", "one"),
                ev::text("m2", "@alice:localhost", "two"),
            ],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(app.count("messages").await, 2);
    // A retry of t1 (as homeservers resend it: same events, a new `unsigned.age`; here even a
    // tampered body): acknowledged, nothing applied, also by a restarted bridge.
    let mut retry = vec![
        ev::text("m1", "@alice:localhost", "one (tampered)"),
        ev::text("m2", "@alice:localhost", "two"),
    ];
    retry[0]["unsigned"] = json!({ "age": 1234 });
    let (s, body) = app.put_txn("t1", retry.clone()).await;
    assert_eq!((s, body), (200, json!({})));
    assert_eq!(app.count("messages").await, 2);
    let restarted = app.restart().await;
    let (s, _) = restarted.put_txn("t1", retry).await;
    assert_eq!(s, 200);
    let previews = app
        .col("SELECT content_preview FROM messages ORDER BY content_preview")
        .await;
    assert_eq!(previews, vec!["one", "two"]);
    assert_eq!(
        app.count("bridge_transactions").await,
        2,
        "setup + t1, recorded once"
    );
    // The restarted bridge counted the replay (the first one stopped at the restart).
    let metrics = restarted.metrics().await;
    assert!(
        metrics.contains(r#"daarion_bridge_transactions_total{outcome="replay"} 1"#),
        "{metrics}"
    );
    // Synapse on SQLite restarts its txnIds at 1 after a restart: the same txnId with other
    // events is a new transaction, and its events must not be lost.
    let (s, _) = restarted
        .put_txn("t1", vec![ev::text("m3", "@alice:localhost", "three")])
        .await;
    assert_eq!(s, 200);
    assert_eq!(app.count("messages").await, 3);
    // Only a hash of the txnId is stored.
    let t1: String = {
        use sha2::Digest;
        sha2::Sha256::digest(b"t1")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert_eq!(
        app.col(&format!(
            "SELECT txn_hash FROM bridge_transactions WHERE txn_hash = '{t1}'"
        ))
        .await,
        vec![t1.clone(), t1]
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_event_in_another_txn_is_not_doubled(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    mirrored(&app).await;
    let e = ev::text("m1", "@alice:localhost", "once");
    assert_eq!(app.put_txn("a", vec![e.clone(), e.clone()]).await.0, 200);
    assert_eq!(app.put_txn("b", vec![e.clone()]).await.0, 200);
    assert_eq!(app.count("messages").await, 1);
    assert_eq!(
        app.count("users WHERE external_id <> 'bridge:bot'").await,
        1
    );
    assert_eq!(app.count("channel_members").await, 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_enforced(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let url = app.url("/_matrix/app/v1/transactions/x");
    let body = r#"{"events":[]}"#;
    let r = app.http.put(&url).body(body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["errcode"],
        "M_UNAUTHORIZED"
    );
    let r = app
        .http
        .put(&url)
        .bearer_auth("wrong")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["errcode"], "M_FORBIDDEN");
    // Legacy query parameter (conduwuit/tuwunel send it).
    let r = app
        .http
        .put(format!("{url}?access_token={HS_TOKEN}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .http
        .put(format!("{url}2?access_token=wrong"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Both present: they must agree.
    let r = app
        .http
        .put(format!("{url}3?access_token=other"))
        .bearer_auth(HS_TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = app
        .http
        .put(format!("{url}4?access_token={HS_TOKEN}"))
        .bearer_auth(HS_TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Every appservice route is protected.
    for path in [
        "/_matrix/app/v1/users/@agent_sofia:localhost",
        "/_matrix/app/v1/rooms/%23a:localhost",
        "/users/@a:localhost",
    ] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = app
        .http
        .post(app.url("/_matrix/app/v1/ping"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_matrix_errors(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let (s, body) = app.put_raw("x", b"{not json".to_vec()).await;
    assert_eq!((s, body["errcode"].as_str()), (400, Some("M_NOT_JSON")));
    let (s, body) = app.put_raw("x", br#"{"events": 5}"#.to_vec()).await;
    assert_eq!((s, body["errcode"].as_str()), (400, Some("M_BAD_JSON")));
    assert!(body["error"].as_str().unwrap().len() > 5);
    // A rejected body is not recorded: the same txnId still applies later.
    mirrored(&app).await;
    assert_eq!(
        app.put_txn("x", vec![ev::text("m", "@alice:localhost", "hi")])
            .await
            .0,
        200
    );
    assert_eq!(app.count("messages").await, 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_event_is_skipped_not_fatal(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    mirrored(&app).await;
    let events = vec![
        json!(42),
        json!({ "type": "m.room.message" }),
        ev::base(
            "m.room.message",
            "bad",
            "@alice:localhost",
            json!({ "msgtype": "m.text" }),
        ),
        ev::base(
            "m.room.message",
            "weird",
            "@alice:localhost",
            json!("content is a string"),
        ),
        ev::text("good", "@alice:localhost", "still here"),
    ];
    assert_eq!(app.put_txn("t", events).await.0, 200);
    assert_eq!(
        app.col("SELECT content_preview FROM messages").await,
        vec!["still here"]
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
        metrics.contains(r#"daarion_bridge_events_skipped_total{outcome="malformed"} 4"#),
        "{metrics}"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_body_is_413(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let big = format!(r#"{{"events":[],"pad":"{}"}}"#, "x".repeat(70_000));
    let (s, body) = app.put_raw("big", big.into_bytes()).await;
    assert_eq!((s, body["errcode"].as_str()), (413, Some("M_TOO_LARGE")));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let r = app
        .http
        .get(app.url("/_matrix/app/v1/nope"))
        .bearer_auth(HS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["errcode"],
        "M_UNRECOGNIZED"
    );
    let r = app
        .http
        .get(app.url("/_matrix/app/v1/transactions/t"))
        .bearer_auth(HS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.json::<Value>().await.unwrap()["errcode"],
        "M_UNRECOGNIZED"
    );
    // A txnId is opaque (only its hash is stored): one that does not decode as UTF-8 is
    // accepted as sent, so no homeserver's txnId can make its queue stall.
    let r = app
        .http
        .put(app.url("/_matrix/app/v1/transactions/%FF%FE"))
        .bearer_auth(HS_TOKEN)
        .body(r#"{"events": []}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A path parameter of another route that is not UTF-8 is a Matrix error.
    let r = app
        .http
        .get(app.url("/_matrix/app/v1/users/%FF%FE"))
        .bearer_auth(HS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["errcode"],
        "M_INVALID_PARAM"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_routes_work(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    mirrored(&app).await;
    let r = app
        .http
        .put(app.url("/transactions/legacy1"))
        .bearer_auth(HS_TOKEN)
        .json(&json!({ "events": [ev::text("l", "@alice:localhost", "legacy")] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        app.col("SELECT content_preview FROM messages").await,
        vec!["legacy"]
    );
    let r = app
        .http
        .get(app.url("/users/@nobody:localhost"))
        .bearer_auth(HS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_ping_and_thirdparty(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let get = |p: &str| app.http.get(app.url(p)).bearer_auth(HS_TOKEN).send();
    // A known agent is registered on demand and exists.
    let r = get("/_matrix/app/v1/users/@agent_sofia:localhost")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let reg = app
        .hs
        .wait_for("a register", |c| c.path == "/_matrix/client/v3/register")
        .await;
    assert_eq!(reg.body["type"], "m.login.application_service");
    assert_eq!(reg.body["username"], "agent_sofia");
    assert_eq!(reg.body["inhibit_login"], true);
    for (path, code) in [
        (
            "/_matrix/app/v1/users/@agent_nobody:localhost",
            "M_NOT_FOUND",
        ),
        ("/_matrix/app/v1/users/@alice:localhost", "M_NOT_FOUND"),
        ("/_matrix/app/v1/rooms/%23room:localhost", "M_NOT_FOUND"),
        ("/_matrix/app/v1/thirdparty/protocol/irc", "M_NOT_FOUND"),
        ("/_matrix/app/v1/thirdparty/user/irc", "M_NOT_FOUND"),
        ("/_matrix/app/v1/thirdparty/location/irc", "M_NOT_FOUND"),
        ("/_matrix/app/v1/thirdparty/user", "M_NOT_FOUND"),
        ("/_matrix/app/v1/thirdparty/location", "M_NOT_FOUND"),
    ] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(r.json::<Value>().await.unwrap()["errcode"], code, "{path}");
    }
    let r = app
        .http
        .post(app.url("/_matrix/app/v1/ping"))
        .bearer_auth(HS_TOKEN)
        .json(&json!({ "transaction_id": "p1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({}));
    // The bridge pings the homeserver at start-up.
    app.hs
        .wait_for("a ping", |c| {
            c.path == "/_matrix/client/v1/appservice/daarion-test/ping"
        })
        .await;
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_refused_with_reason(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    // Unknown puppet: refused, nothing mirrored.
    let room = "!r2:localhost";
    let e = ev::in_room(
        ev::member("i1", "@alice:localhost", "@agent_ghost:localhost", "invite"),
        room,
    );
    assert_eq!(app.put_txn("1", vec![e]).await.0, 200);
    let leave = app
        .hs
        .wait_for("a rejection", |c| {
            c.path == format!("/_matrix/client/v3/rooms/{room}/leave")
        })
        .await;
    assert!(
        leave.query.contains("user_id=%40agent_ghost%3Alocalhost")
            || leave.query.contains("user_id=@agent_ghost:localhost"),
        "{:?}",
        leave.query
    );
    assert!(
        leave.body["reason"]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );
    assert_eq!(app.count("channels").await, 0);
    // A known agent of a microDAO is mirrored into its microDAO and joins as itself.
    let room3 = "!r3:localhost";
    let e = ev::in_room(
        ev::member("i2", "@alice:localhost", ev::SOFIA, "invite"),
        room3,
    );
    assert_eq!(app.put_txn("2", vec![e]).await.0, 200);
    let join = app
        .hs
        .wait_for("a puppet join", |c| {
            c.path == format!("/_matrix/client/v3/rooms/{room3}/join")
        })
        .await;
    assert!(
        join.query.contains("agent_sofia"),
        "identity assertion: {:?}",
        join.query
    );
    let rows = app.rows("SELECT m.external_id, CAST(c.created_by_agent_id IS NOT NULL AS TEXT) FROM channels c JOIN microdaos m ON m.id = c.microdao_id").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0].as_deref(), Some("microdao:demo"));
    // Without a default microDAO, a bot invite is refused with a reason.
    let app2 = TestApp::spawn_with(b, |c| {
        c.replace("default_microdao = \"microdao:demo\"\n", "")
    })
    .await;
    assert_eq!(
        app2.put_txn("1", vec![ev::invite_bot("i", "@alice:localhost", "X")])
            .await
            .0,
        200
    );
    let leave = app2
        .hs
        .wait_for("a bot rejection", |c| c.path.ends_with("/leave"))
        .await;
    assert!(leave.body["reason"].as_str().unwrap().contains("microDAO"));
    assert_eq!(app2.count("channels").await, 0);
}
