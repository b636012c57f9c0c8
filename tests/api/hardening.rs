//! Hardening: no input stalls mirroring (NUL anywhere, ids that cannot be stored, events the
//! database refuses, long or odd txnIds, invalid UTF-8), the agent API refuses bad input with
//! Matrix errors, previews are bounded, failed authentications are limited, and old records are
//! pruned.

use rstest::rstest;
use serde_json::{Value, json};

use crate::support::{Backend, HS_TOKEN, TestApp, ev};

/// `skipped` counter of an outcome, from `/metrics`.
async fn skipped(app: &TestApp, outcome: &str) -> u64 {
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let needle = format!("daarion_bridge_events_skipped_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map(|n| n.trim().parse().unwrap())
        .unwrap_or(0)
}

/// A message event with the given content.
fn message(id: &str, content: Value) -> Value {
    ev::base("m.room.message", id, "@alice:localhost", content)
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_anywhere_never_stalls_mirroring(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    let mut events = vec![
        message("body", json!({ "msgtype": "m.text", "body": "a\u{0}b" })),
        message(
            "html",
            json!({ "msgtype": "m.text", "body": "", "format": "org.matrix.custom.html", "formatted_body": "<b>h\u{0}tml</b>" }),
        ),
        message(
            "emote",
            json!({ "msgtype": "m.emote", "body": "waves\u{0}" }),
        ),
        message(
            "loc",
            json!({ "msgtype": "m.location", "body": "here\u{0}", "geo_uri": "geo:1,2" }),
        ),
        message(
            "img",
            json!({ "msgtype": "m.image", "body": "pic", "filename": "a\u{0}.png", "url": "mxc://localhost/x" }),
        ),
        ev::base(
            "m.sticker",
            "stk",
            "@alice:localhost",
            json!({ "body": "st\u{0}icker", "url": "mxc://localhost/s", "info": {} }),
        ),
        message(
            "edit",
            json!({
                "msgtype": "m.text", "body": "* x",
                "m.new_content": { "msgtype": "m.text", "body": "edited\u{0}" },
                "m.relates_to": { "rel_type": "m.replace", "event_id": "$body" },
            }),
        ),
        message(
            "thread",
            json!({
                "msgtype": "m.text", "body": "in thread",
                "m.relates_to": { "rel_type": "m.thread", "event_id": "$root\u{0}x" },
            }),
        ),
        message(
            "bad\u{0}id",
            json!({ "msgtype": "m.text", "body": "bad id" }),
        ),
        ev::member("nulmember", "@x:localhost", "@a\u{0}b:localhost", "join"),
        ev::state(
            "m.room.name",
            "name",
            "@alice:localhost",
            "",
            json!({ "name": "Town\u{0}Square" }),
        ),
        ev::state(
            "m.room.topic",
            "topic",
            "@alice:localhost",
            "",
            json!({ "topic": "t\u{0}opic" }),
        ),
        ev::in_room(
            {
                let mut invite = ev::member("inv2", "@alice:localhost", ev::BOT, "invite");
                invite["unsigned"] = json!({ "invite_room_state": [
                    { "type": "m.room.name", "state_key": "", "sender": "@alice:localhost", "content": { "name": "Other\u{0}Room" } }
                ]});
                invite
            },
            "!other:localhost",
        ),
    ];
    events.push(message(
        "last",
        json!({ "msgtype": "m.text", "body": "still flowing" }),
    ));
    // The txnId holds NUL too (`a%00b` on the wire).
    let (status, body) = app.put_txn("a%00b", events.clone()).await;
    assert_eq!(status, 200, "{body}");
    let previews = app
        .rows("SELECT matrix_event_id, content_preview, thread_root_event_id FROM messages ORDER BY matrix_event_id")
        .await;
    let preview = |id: &str| {
        previews
            .iter()
            .find(|r| r[0].as_deref() == Some(id))
            .unwrap_or_else(|| panic!("{id} not mirrored: {previews:?}"))[1]
            .clone()
            .unwrap()
    };
    assert_eq!(
        preview("$body"),
        "edited\u{FFFD}",
        "the edit's new content, NUL replaced"
    );
    assert_eq!(preview("$html"), "h\u{FFFD}tml");
    assert_eq!(preview("$emote"), "* alice waves\u{FFFD}");
    assert_eq!(preview("$loc"), "[location] here\u{FFFD}");
    assert_eq!(preview("$img"), "[image] a\u{FFFD}.png");
    assert_eq!(preview("$stk"), "[sticker] st\u{FFFD}icker");
    assert_eq!(preview("$last"), "still flowing");
    let thread = previews
        .iter()
        .find(|r| r[0].as_deref() == Some("$thread"))
        .unwrap();
    assert_eq!(
        thread[2], None,
        "a thread root that is no valid id is dropped"
    );
    assert!(
        previews
            .iter()
            .all(|r| !r[0].as_deref().unwrap().contains('\0'))
    );
    assert_eq!(
        app.col("SELECT name FROM channels ORDER BY name").await,
        vec!["Other\u{FFFD}Room", "Town\u{FFFD}Square"]
    );
    assert_eq!(
        app.col("SELECT topic FROM channels WHERE topic IS NOT NULL")
            .await,
        vec!["t\u{FFFD}opic"]
    );
    assert_eq!(
        app.count("users WHERE external_id <> 'bridge:bot'").await,
        1,
        "the member with NUL in its id is skipped"
    );
    assert_eq!(
        skipped(&app, "invalid_id").await,
        2,
        "the event id and the state key"
    );
    // The same transaction again is a replay, whatever its txnId holds.
    let (status, _) = app.put_txn("a%00b", events).await;
    assert_eq!(status, 200);
    assert_eq!(app.count("messages").await, previews.len());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_database_refuses_is_skipped(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    // The database refuses one value (a constraint of another service, say): that event is
    // skipped and counted, the others of its transaction are applied.
    match b {
        Backend::Postgres => {
            app.exec(
                "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN \
                 IF NEW.content_preview = 'poison' THEN RAISE EXCEPTION 'refused' USING ERRCODE = '22023'; END IF; \
                 RETURN NEW; END $$ LANGUAGE plpgsql",
            )
            .await;
            app.exec(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
            )
            .await;
        }
        Backend::Sqlite => {
            app.exec(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON messages WHEN NEW.content_preview = 'poison' \
                 BEGIN SELECT RAISE(ABORT, 'refused'); END",
            )
            .await;
        }
    }
    let events = vec![
        ev::text("ok1", "@alice:localhost", "fine"),
        ev::text("bad", "@alice:localhost", "poison"),
        ev::text("ok2", "@alice:localhost", "also fine"),
    ];
    let (status, body) = app.put_txn("poison", events.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        app.col("SELECT matrix_event_id FROM messages ORDER BY matrix_event_id")
            .await,
        vec!["$ok1", "$ok2"]
    );
    assert_eq!(skipped(&app, "rejected").await, 1);
    // Recorded: the retry is a replay, not a second isolation.
    let (status, _) = app.put_txn("poison", events).await;
    assert_eq!(status, 200);
    assert_eq!(skipped(&app, "rejected").await, 1);
    assert_eq!(
        app.count("bridge_transactions").await,
        2,
        "setup and poison"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_and_odd_txn_ids(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    let long = "x".repeat(8000);
    let (status, body) = app
        .put_txn(&long, vec![ev::text("l1", "@alice:localhost", "long")])
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = app
        .put_txn(&long, vec![ev::text("l1", "@alice:localhost", "long")])
        .await;
    assert_eq!(status, 200);
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
        metrics.contains(r#"daarion_bridge_transactions_total{outcome="replay"} 1"#),
        "{metrics}"
    );
    let lengths = app
        .col("SELECT CAST(LENGTH(txn_hash) AS TEXT) FROM bridge_transactions")
        .await;
    assert!(lengths.iter().all(|l| l == "64"), "{lengths:?}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_decoded_lossily(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    let body = br#"{"events":[{"type":"m.room.message","event_id":"$u8","sender":"@alice:localhost","room_id":"!room:localhost","origin_server_ts":1700000000000,"content":{"msgtype":"m.text","body":"caf"#
        .iter()
        .copied()
        .chain([0xC3, 0x28])
        .chain(br#"e"}}]}"#.iter().copied())
        .collect::<Vec<u8>>();
    let (status, reply) = app.put_raw("u8", body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        app.col("SELECT content_preview FROM messages WHERE matrix_event_id = '$u8'")
            .await,
        vec!["caf\u{FFFD}(e"]
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_name_falls_back(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    let name = |n: Value, id: &str| ev::state("m.room.name", id, "@alice:localhost", "", n);
    let alias = ev::state(
        "m.room.canonical_alias",
        "al",
        "@alice:localhost",
        "",
        json!({ "alias": "#square:localhost" }),
    );
    assert_eq!(
        app.put_txn("1", vec![alias, name(json!({ "name": "Named" }), "n1")])
            .await
            .0,
        200
    );
    assert_eq!(app.col("SELECT name FROM channels").await, vec!["Named"]);
    // `""` removes the name: the canonical alias takes over.
    assert_eq!(
        app.put_txn("2", vec![name(json!({ "name": "" }), "n2")])
            .await
            .0,
        200
    );
    assert_eq!(
        app.col("SELECT name FROM channels").await,
        vec!["#square:localhost"]
    );
    // Without an alias, `{}` leaves the room id.
    let no_alias = ev::state(
        "m.room.canonical_alias",
        "al2",
        "@alice:localhost",
        "",
        json!({}),
    );
    assert_eq!(
        app.put_txn(
            "3",
            vec![
                name(json!({ "name": "Again" }), "n3"),
                no_alias,
                name(json!({}), "n4")
            ]
        )
        .await
        .0,
        200
    );
    assert_eq!(app.col("SELECT name FROM channels").await, vec![ev::ROOM]);
    // The alias survives a restart of the bridge (it is stored, not only cached).
    let restarted = app.restart().await;
    let alias = ev::state(
        "m.room.canonical_alias",
        "al3",
        "@alice:localhost",
        "",
        json!({ "alias": "#back:localhost" }),
    );
    assert_eq!(
        restarted
            .put_txn("4", vec![name(json!({ "name": "Third" }), "n5"), alias])
            .await
            .0,
        200
    );
    assert_eq!(
        restarted
            .put_txn("5", vec![name(json!({ "name": "" }), "n6")])
            .await
            .0,
        200
    );
    assert_eq!(
        app.col("SELECT name FROM channels").await,
        vec!["#back:localhost"]
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_are_bounded(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    // One grapheme cluster of 30,000 combining marks (the test config accepts 64 KiB bodies).
    let hostile = format!("a{}", "\u{301}".repeat(30_000));
    assert_eq!(
        app.put_txn("1", vec![ev::text("h", "@alice:localhost", &hostile)])
            .await
            .0,
        200
    );
    let preview = app
        .col("SELECT content_preview FROM messages WHERE matrix_event_id = '$h'")
        .await
        .remove(0);
    // preview_chars = 40 in the test config: at most 40 × 16 + 64 bytes.
    assert!(preview.len() <= 40 * 16 + 64, "{} bytes", preview.len());
    assert!(preview.ends_with('…'));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_api_refuses_bad_input(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let (channel, key) = crate::agents::setup(&app).await;
    let send = |body: Value, idem: Option<&'static str>| {
        let app = &app;
        let key = key.clone();
        let channel = channel.clone();
        async move {
            let mut r = app
                .http
                .post(app.url(&format!("/api/v1/channels/{channel}/messages")))
                .bearer_auth(key)
                .json(&body);
            if let Some(k) = idem {
                r = r.header("Idempotency-Key", k);
            }
            let r = r.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    // NUL is refused with a Matrix error, not a database error.
    let (s, body) = send(json!({ "text": "a\u{0}b" }), None).await;
    assert_eq!(
        (s, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    // An Idempotency-Key replays its first request, and refuses another one.
    let (s, first) = send(json!({ "text": "once" }), Some("k1")).await;
    assert_eq!(s, 200, "{first}");
    let (s, again) = send(json!({ "text": "once" }), Some("k1")).await;
    assert_eq!(s, 200);
    assert_eq!(again["event_id"], first["event_id"]);
    let (s, other) = send(json!({ "text": "another message" }), Some("k1")).await;
    assert_eq!(
        (s, other["errcode"].as_str()),
        (422, Some("M_INVALID_PARAM")),
        "{other}"
    );
    assert_eq!(
        app.hs.sent_messages().len(),
        1,
        "the second request was not sent"
    );
    // Bodies beyond api.max_body_bytes (1 MiB by default): 413 M_TOO_LARGE.
    let (s, big) = send(json!({ "text": "x".repeat(2 * 1024 * 1024) }), None).await;
    assert_eq!(
        (s, big["errcode"].as_str()),
        (413, Some("M_TOO_LARGE")),
        "{big}"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_limited_per_address(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.replace(
            "[bridge]\n",
            "[api]\nauth_failures_per_minute = 5\n\n[bridge]\n",
        )
    })
    .await;
    let (_, key) = crate::agents::setup(&app).await;
    let whoami = |k: String| {
        let app = &app;
        async move {
            let r = app
                .http
                .get(app.url("/api/v1/agent"))
                .bearer_auth(k)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.headers().get("retry-after").is_some(),
            )
        }
    };
    for _ in 0..5 {
        assert_eq!(whoami("dab_wrong".into()).await.0, 401);
    }
    // Limited: answered before any key lookup, with when to come back.
    assert_eq!(whoami("dab_wrong".into()).await, (429, true));
    assert_eq!(
        whoami(key).await.0,
        429,
        "the address is limited, whatever the key"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_records_are_pruned(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    assert_eq!(
        app.put_txn("recent", vec![ev::text("r", "@alice:localhost", "recent")])
            .await
            .0,
        200
    );
    let old = match b {
        Backend::Postgres => "now() - interval '30 days'",
        Backend::Sqlite => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-30 days')",
    };
    app.exec(&format!(
        "INSERT INTO bridge_transactions (txn_hash, fingerprint, processed_at, event_count) VALUES ('old', 'f', {old}, 1)"
    ))
    .await;
    // The bridge's own upkeep task prunes too (its first round runs at start-up and may land
    // after the insert on a slow machine), so the old record is gone either way, exactly once.
    let pruned = daarion_bridge::bridge::upkeep::Upkeep::new(
        app.store.clone(),
        app.registry.clone().unwrap(),
        std::sync::Arc::new(daarion_bridge::metrics::Metrics::new()),
        app.config.bridge.session_idle_after,
        daarion_bridge::bridge::upkeep::Retention::from_config(&app.config),
    )
    .prune(daarion_bridge::model::Ts::now())
    .await
    .unwrap();
    assert!(pruned <= 1, "{pruned}");
    assert_eq!(app.count("bridge_transactions").await, 2);
    assert!(
        app.col("SELECT txn_hash FROM bridge_transactions WHERE txn_hash = 'old'")
            .await
            .is_empty()
    );
    // Within the retention, a retry is still a replay.
    assert_eq!(
        app.put_txn("recent", vec![ev::text("r", "@alice:localhost", "recent")])
            .await
            .0,
        200
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
    assert!(metrics.contains(r#"daarion_bridge_transactions_total{outcome="replay"} 1"#));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_ups_are_durable(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    // The homeserver refuses the join twice (down): the job is retried until it joins.
    app.hs.fail_joins.lock().unwrap().extend([502, 502]);
    let (s, _) = app
        .put_txn(
            "inv",
            vec![ev::invite_bot("inv", "@alice:localhost", "Town Square")],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        app.col("SELECT status FROM bridge_jobs").await.len(),
        1,
        "written in the transaction's commit"
    );
    let joined = app
        .hs
        .wait_for("the join, after retries", |c| {
            c.path.ends_with("/join") && c.query.is_empty()
        })
        .await;
    let _ = joined;
    for _ in 0..200 {
        if app.col("SELECT status FROM bridge_jobs").await == ["done"] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(
        app.col("SELECT status FROM bridge_jobs").await,
        vec!["done"]
    );
    assert_eq!(app.hs.calls_to("/join").len(), 3);
    let _ = HS_TOKEN;
}
