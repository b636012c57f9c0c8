//! Integration tests of the HTTP surface and the mirror, each run against SQLite and a real
//! PostgreSQL (a fresh database per test).

mod agents;
mod cli;
mod hardening;
#[path = "../common/model.rs"]
mod model;
mod plans;
mod process;
mod runs;
mod spec;
mod support;

use agents::*;
use cli::*;
use hardening::*;
use plans::*;
use process::*;
use runs::*;
use spec::*;

use serde_json::{Value, json};
use support::{Backend, HS_TOKEN, TestApp, ev};

/// Runs each listed test once per backend.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await
            }
        }
    )*};
}

both_backends!(
    bot_invite_mirrors_room_and_joins,
    replayed_txn_changes_nothing_even_after_restart,
    same_event_in_another_txn_is_not_doubled,
    auth_is_enforced,
    malformed_bodies_get_matrix_errors,
    malformed_event_is_skipped_not_fatal,
    oversize_body_is_413,
    unknown_routes_and_methods,
    legacy_routes_work,
    queries_ping_and_thirdparty,
    daarion_channel_state_places_room,
    unmirrored_rooms_are_ignored,
    platform_user_rows_are_reused,
    membership_lifecycle_and_roles,
    previews_by_message_kind,
    edits_and_redactions,
    name_topic_and_visibility_follow_state,
    agent_messages_and_membership,
    invites_refused_with_reason,
    agents_created_elsewhere_are_found,
    database_down_is_5xx_and_nothing_is_lost,
    health_and_metrics,
    migrations_are_reversible,
    sessions_follow_activity,
    per_agent_idle_override,
    keys_and_capabilities,
    membership_and_input_rules,
    send_edit_react_redact,
    idempotency_and_ordering,
    homeserver_429_and_outage,
    outbox_survives_restart,
    failed_send_is_recorded,
    rate_limited_per_agent,
    openapi_documents_every_route,
    echo_answers_mentions_and_dms,
    settings_debounce_and_cancel,
    queued_run_cancelled_by_redaction,
    openai_streams_into_one_edited_message,
    openai_plain_and_failures,
    webhook_runtime,
    agent_chain_stops_at_the_limit,
    command_line,
    puppet_avatar_is_uploaded_once,
    thread_participation_addresses_the_agent,
    conforms_to_the_appservice_spec,
    edits_trigger_only_when_configured,
    renamed_agents_get_their_new_name,
    nul_anywhere_never_stalls_mirroring,
    an_event_the_database_refuses_is_skipped,
    long_and_odd_txn_ids,
    invalid_utf8_is_decoded_lossily,
    removing_the_name_falls_back,
    previews_are_bounded,
    agent_api_refuses_bad_input,
    failed_authentication_is_limited_per_address,
    old_records_are_pruned,
    follow_ups_are_durable,
    slow_and_idle_clients_are_cut_off,
    the_connection_limit_holds,
    idle_connections_do_not_starve_the_homeserver,
    negative_content_length_is_refused,
    sigterm_with_a_half_open_connection_exits_cleanly,
    sigkill_mid_load_loses_and_doubles_no_answer,
    any_transaction_gets_200_or_a_matrix_4xx,
    lookups_by_event_id_use_the_index_at_any_size,
);

pub(crate) async fn mirrored(app: &TestApp) {
    let (status, _) = app
        .put_txn(
            "setup",
            vec![
                ev::invite_bot("inv", "@alice:localhost", "Town Square"),
                ev::member("aj", "@alice:localhost", "@alice:localhost", "join"),
            ],
        )
        .await;
    assert_eq!(status, 200);
}

async fn bot_invite_mirrors_room_and_joins(b: Backend) {
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
    assert_eq!(join.auth, format!("Bearer {}", support::AS_TOKEN));
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
        app.col("SELECT matrix_id FROM users")
            .await
            .iter()
            .all(|m| m != ev::BOT)
    );
}

async fn replayed_txn_changes_nothing_even_after_restart(b: Backend) {
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

async fn same_event_in_another_txn_is_not_doubled(b: Backend) {
    let app = TestApp::spawn(b).await;
    mirrored(&app).await;
    let e = ev::text("m1", "@alice:localhost", "once");
    assert_eq!(app.put_txn("a", vec![e.clone(), e.clone()]).await.0, 200);
    assert_eq!(app.put_txn("b", vec![e.clone()]).await.0, 200);
    assert_eq!(app.count("messages").await, 1);
    assert_eq!(app.count("users").await, 1);
    assert_eq!(app.count("channel_members").await, 1);
}

async fn auth_is_enforced(b: Backend) {
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

async fn malformed_bodies_get_matrix_errors(b: Backend) {
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

async fn malformed_event_is_skipped_not_fatal(b: Backend) {
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

async fn oversize_body_is_413(b: Backend) {
    let app = TestApp::spawn(b).await;
    let big = format!(r#"{{"events":[],"pad":"{}"}}"#, "x".repeat(70_000));
    let (s, body) = app.put_raw("big", big.into_bytes()).await;
    assert_eq!((s, body["errcode"].as_str()), (413, Some("M_TOO_LARGE")));
}

async fn unknown_routes_and_methods(b: Backend) {
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

async fn legacy_routes_work(b: Backend) {
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

async fn queries_ping_and_thirdparty(b: Backend) {
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

async fn daarion_channel_state_places_room(b: Backend) {
    let app = TestApp::spawn(b).await;
    let room = "!garden:localhost";
    let events = vec![
        ev::in_room(
            ev::state(
                "city.daarion.channel",
                "d",
                "@alice:localhost",
                "",
                json!({ "microdao": "microdao:7", "slug": "General Chat", "visibility": "microdao" }),
            ),
            room,
        ),
        ev::in_room(
            ev::state(
                "m.room.join_rules",
                "j",
                "@alice:localhost",
                "",
                json!({ "join_rule": "public" }),
            ),
            room,
        ),
        ev::in_room(ev::text("m", "@alice:localhost", "hello garden"), room),
    ];
    assert_eq!(app.put_txn("t", events).await.0, 200);
    let rows = app.rows("SELECT c.slug, c.visibility, m.external_id, c.matrix_room_id FROM channels c JOIN microdaos m ON m.id = c.microdao_id").await;
    assert_eq!(
        rows,
        vec![vec![
            Some("general-chat".into()),
            Some("microdao".into()),
            Some("microdao:7".into()),
            Some(room.into())
        ]]
    );
    assert_eq!(app.count("messages").await, 1);
    // A second room asking for the same slug in the same microDAO gets a unique one.
    let other = "!garden2:localhost";
    let e = ev::in_room(
        ev::state(
            "city.daarion.channel",
            "d2",
            "@alice:localhost",
            "",
            json!({ "microdao": "microdao:7", "slug": "general-chat" }),
        ),
        other,
    );
    assert_eq!(app.put_txn("t2", vec![e]).await.0, 200);
    let mut slugs = app.col("SELECT slug FROM channels").await;
    slugs.sort();
    assert_eq!(slugs, vec!["general-chat", "general-chat-2"]);
    // Unknown microDAO: not mirrored.
    let e = ev::in_room(
        ev::state(
            "city.daarion.channel",
            "d3",
            "@alice:localhost",
            "",
            json!({ "microdao": "microdao:404" }),
        ),
        "!x:localhost",
    );
    assert_eq!(app.put_txn("t3", vec![e]).await.0, 200);
    assert_eq!(app.count("channels").await, 2);
}

async fn unmirrored_rooms_are_ignored(b: Backend) {
    let app = TestApp::spawn(b).await;
    let events = vec![
        ev::member("j", "@alice:localhost", "@alice:localhost", "join"),
        ev::text("m", "@alice:localhost", "nobody listens"),
    ];
    assert_eq!(app.put_txn("t", events).await.0, 200);
    for table in ["channels", "messages", "users", "channel_members"] {
        assert_eq!(app.count(table).await, 0, "{table}");
    }
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
        metrics.contains(r#"daarion_bridge_events_skipped_total{outcome="ignored_room"} 2"#),
        "{metrics}"
    );
}

async fn platform_user_rows_are_reused(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.exec("INSERT INTO users (id, external_id, matrix_id, handle) VALUES ('00000000-0000-4000-8000-000000000093', 'user:93', '@alice:localhost', 'alice93')").await;
    mirrored(&app).await;
    assert_eq!(
        app.put_txn("t", vec![ev::text("m", "@alice:localhost", "hi")])
            .await
            .0,
        200
    );
    assert_eq!(
        app.put_txn("t2", vec![ev::text("m2", "@newbie:localhost", "hey")])
            .await
            .0,
        200
    );
    let users = app
        .rows("SELECT external_id, matrix_id, handle FROM users ORDER BY external_id")
        .await;
    assert_eq!(
        users,
        vec![
            vec![
                Some("matrix:@newbie:localhost".into()),
                Some("@newbie:localhost".into()),
                Some("newbie".into())
            ],
            vec![
                Some("user:93".into()),
                Some("@alice:localhost".into()),
                Some("alice93".into())
            ],
        ]
    );
    let sender = app
        .col("SELECT CAST(sender_user_id AS TEXT) FROM messages WHERE matrix_event_id = '$m'")
        .await;
    assert_eq!(sender, vec!["00000000-0000-4000-8000-000000000093"]);
}

async fn membership_lifecycle_and_roles(b: Backend) {
    let app = TestApp::spawn(b).await;
    mirrored(&app).await;
    const ACTIVE: &str = "SELECT u.matrix_id, cm.role, CASE WHEN cm.left_at IS NULL THEN 'active' ELSE 'left' END FROM channel_members cm JOIN users u ON u.id = cm.member_user_id ORDER BY u.matrix_id";
    let bob = "@bob:localhost";
    assert_eq!(
        app.put_txn("1", vec![ev::member("b1", bob, bob, "join")])
            .await
            .0,
        200
    );
    assert_eq!(
        app.rows(ACTIVE).await[1],
        vec![
            Some(bob.into()),
            Some("member".into()),
            Some("active".into())
        ]
    );
    // Power levels change: bob becomes admin.
    let pl = ev::state(
        "m.room.power_levels",
        "pl",
        "@alice:localhost",
        "",
        json!({ "users": { "@alice:localhost": 100, bob: 50 } }),
    );
    assert_eq!(app.put_txn("2", vec![pl]).await.0, 200);
    let rows = app.rows(ACTIVE).await;
    assert_eq!(rows[0][1].as_deref(), Some("owner"));
    assert_eq!(rows[1][1].as_deref(), Some("admin"));
    // Leave, rejoin, ban.
    assert_eq!(
        app.put_txn(
            "3",
            vec![ev::at(
                ev::member("b2", bob, bob, "leave"),
                1_700_000_100_000
            )]
        )
        .await
        .0,
        200
    );
    assert_eq!(app.rows(ACTIVE).await[1][2].as_deref(), Some("left"));
    assert_eq!(
        app.put_txn(
            "4",
            vec![ev::at(
                ev::member("b3", bob, bob, "join"),
                1_700_000_200_000
            )]
        )
        .await
        .0,
        200
    );
    assert_eq!(app.rows(ACTIVE).await[1][2].as_deref(), Some("active"));
    let kick = ev::at(
        ev::member("b4", "@alice:localhost", bob, "ban"),
        1_700_000_300_000,
    );
    assert_eq!(app.put_txn("5", vec![kick]).await.0, 200);
    assert_eq!(app.rows(ACTIVE).await[1][2].as_deref(), Some("left"));
    // Join then leave inside one transaction: a row that is already left.
    let carol = "@carol:localhost";
    assert_eq!(
        app.put_txn(
            "6",
            vec![
                ev::member("c1", carol, carol, "join"),
                ev::member("c2", carol, carol, "leave")
            ]
        )
        .await
        .0,
        200
    );
    assert_eq!(
        app.rows(ACTIVE).await[2],
        vec![
            Some(carol.into()),
            Some("member".into()),
            Some("left".into())
        ]
    );
    assert_eq!(app.count("channel_members").await, 3);
}

async fn previews_by_message_kind(b: Backend) {
    let app = TestApp::spawn(b).await;
    mirrored(&app).await;
    let a = "@alice:localhost";
    let m = |id: &str, content: Value| ev::base("m.room.message", id, a, content);
    let events = vec![
        m("p1", json!({ "msgtype": "m.text", "body": "plain" })),
        m("p2", json!({ "msgtype": "m.emote", "body": "waves" })),
        m(
            "p3",
            json!({ "msgtype": "m.image", "body": "cat.png", "url": "mxc://localhost/abc" }),
        ),
        m(
            "p4",
            json!({ "msgtype": "m.file", "body": "report.pdf", "filename": "report-2026.pdf", "url": "mxc://localhost/def" }),
        ),
        m(
            "p5",
            json!({ "msgtype": "m.notice", "body": "<b>bold</b> move", "format": "org.matrix.custom.html", "formatted_body": "<b>bold</b> move" }),
        ),
        m(
            "p6",
            json!({ "msgtype": "m.text", "body": "x".repeat(100) }),
        ),
        m(
            "p7",
            json!({ "msgtype": "m.text", "body": "> <@bob:localhost> question\n\nthe answer", "m.relates_to": { "m.in_reply_to": { "event_id": "$p1" } } }),
        ),
        ev::base(
            "m.sticker",
            "p8",
            a,
            json!({ "body": "thumbs up", "url": "mxc://localhost/s", "info": {} }),
        ),
        ev::base(
            "m.room.encrypted",
            "p9",
            a,
            json!({ "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "abc", "sender_key": "k", "session_id": "s", "device_id": "D" }),
        ),
        m(
            "p10",
            json!({ "msgtype": "m.text", "body": "🇺🇦".repeat(50) }),
        ),
    ];
    assert_eq!(app.put_txn("t", events).await.0, 200);
    let got: Vec<(String, String)> = app
        .rows("SELECT matrix_event_id, content_preview FROM messages")
        .await
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
        .collect();
    let get = |id: &str| {
        got.iter()
            .find(|(e, _)| e == id)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| panic!("{id} missing"))
    };
    assert_eq!(get("$p1"), "plain");
    assert_eq!(get("$p2"), "* alice waves");
    assert_eq!(get("$p3"), "[image] cat.png");
    assert_eq!(get("$p4"), "[file] report-2026.pdf");
    assert_eq!(get("$p5"), "bold move");
    assert_eq!(get("$p6"), format!("{}…", "x".repeat(39)));
    assert_eq!(get("$p7"), "the answer");
    assert_eq!(get("$p8"), "[sticker] thumbs up");
    assert_eq!(get("$p9"), "[encrypted]");
    // Flags are two code points each; the cut never splits one.
    assert_eq!(get("$p10"), format!("{}…", "🇺🇦".repeat(39)));
    let types = app.col("SELECT DISTINCT sender_type FROM messages").await;
    assert_eq!(types, vec!["human"]);
    let created = app
        .col("SELECT CAST(created_at AS TEXT) FROM messages WHERE matrix_event_id = '$p1'")
        .await;
    assert!(
        created[0].starts_with("2023-11-14"),
        "created_at comes from origin_server_ts: {created:?}"
    );
}

async fn edits_and_redactions(b: Backend) {
    let app = TestApp::spawn(b).await;
    mirrored(&app).await;
    let a = "@alice:localhost";
    let edit = |id: &str, sender: &str, target: &str, body: &str, ts: u64| {
        ev::at(
            ev::base(
                "m.room.message",
                id,
                sender,
                json!({
                    "msgtype": "m.text", "body": format!("* {body}"),
                    "m.new_content": { "msgtype": "m.text", "body": body },
                    "m.relates_to": { "rel_type": "m.replace", "event_id": target },
                }),
            ),
            ts,
        )
    };
    assert_eq!(
        app.put_txn(
            "1",
            vec![ev::text("orig", a, "typo"), ev::text("other", a, "keep")]
        )
        .await
        .0,
        200
    );
    assert_eq!(
        app.put_txn(
            "2",
            vec![edit("e1", a, "$orig", "fixed", 1_700_000_010_000)]
        )
        .await
        .0,
        200
    );
    assert_eq!(app.count("messages").await, 2, "an edit adds no row");
    assert_eq!(
        app.col("SELECT content_preview FROM messages WHERE matrix_event_id = '$orig'")
            .await,
        vec!["fixed"]
    );
    // Someone else's "edit" and an older edit arriving late change nothing.
    let (s, _) = app
        .put_txn(
            "3",
            vec![
                edit(
                    "e2",
                    "@mallory:localhost",
                    "$orig",
                    "pwned",
                    1_700_000_020_000,
                ),
                edit("e0", a, "$orig", "older", 1_700_000_005_000),
            ],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        app.col("SELECT content_preview FROM messages WHERE matrix_event_id = '$orig'")
            .await,
        vec!["fixed"]
    );
    // Redaction (v11 content.redacts and legacy top-level redacts).
    let mut r1 = ev::base("m.room.redaction", "r1", a, json!({ "redacts": "$orig" }));
    r1["redacts"] = json!("$orig");
    let mut r2 = ev::base("m.room.redaction", "r2", a, json!({}));
    r2["redacts"] = json!("$other");
    assert_eq!(app.put_txn("4", vec![r1, r2]).await.0, 200);
    let rows = app.rows("SELECT content_preview, CASE WHEN redacted_at IS NULL THEN 'no' ELSE 'yes' END FROM messages ORDER BY matrix_event_id").await;
    assert_eq!(
        rows,
        vec![
            vec![Some("".into()), Some("yes".into())],
            vec![Some("".into()), Some("yes".into())]
        ]
    );
    // An edit after the redaction does not resurrect the text.
    assert_eq!(
        app.put_txn("5", vec![edit("e3", a, "$orig", "back", 1_700_000_030_000)])
            .await
            .0,
        200
    );
    assert_eq!(
        app.col("SELECT content_preview FROM messages WHERE matrix_event_id = '$orig'")
            .await,
        vec![""]
    );
}

async fn name_topic_and_visibility_follow_state(b: Backend) {
    let app = TestApp::spawn(b).await;
    mirrored(&app).await;
    let a = "@alice:localhost";
    let s = |k: &str, id: &str, c: Value| ev::state(k, id, a, "", c);
    assert_eq!(
        app.put_txn(
            "1",
            vec![
                s("m.room.name", "n1", json!({ "name": "Renamed" })),
                s("m.room.topic", "t1", json!({ "topic": "New topic" })),
                s("m.room.join_rules", "j1", json!({ "join_rule": "public" }))
            ]
        )
        .await
        .0,
        200
    );
    assert_eq!(
        app.rows("SELECT name, topic, visibility, slug FROM channels")
            .await[0],
        vec![
            Some("Renamed".into()),
            Some("New topic".into()),
            Some("public".into()),
            Some("town-square".into())
        ]
    );
    let restricted = json!({ "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": "!space:localhost" }] });
    assert_eq!(
        app.put_txn("2", vec![s("m.room.join_rules", "j2", restricted)])
            .await
            .0,
        200
    );
    assert_eq!(
        app.col("SELECT visibility FROM channels").await,
        vec!["microdao"]
    );
    // An alias does not override a real name; removing the name falls back to the alias.
    assert_eq!(
        app.put_txn(
            "3",
            vec![s(
                "m.room.canonical_alias",
                "a1",
                json!({ "alias": "#square:localhost" })
            )]
        )
        .await
        .0,
        200
    );
    assert_eq!(app.col("SELECT name FROM channels").await, vec!["Renamed"]);
    assert_eq!(
        app.put_txn("4", vec![s("m.room.name", "n2", json!({}))])
            .await
            .0,
        200
    );
    assert_eq!(
        app.col("SELECT name FROM channels").await,
        vec!["#square:localhost"]
    );
    // The state survives a restart (bridge_rooms): a new process keeps applying the same rules.
    let restarted = app.restart().await;
    assert_eq!(
        restarted
            .put_txn(
                "5",
                vec![s(
                    "m.room.join_rules",
                    "j3",
                    json!({ "join_rule": "invite" })
                )]
            )
            .await
            .0,
        200
    );
    assert_eq!(
        app.col("SELECT visibility FROM channels").await,
        vec!["private"]
    );
}

async fn agent_messages_and_membership(b: Backend) {
    let app = TestApp::spawn(b).await;
    mirrored(&app).await;
    let s = ev::SOFIA;
    assert_eq!(
        app.put_txn(
            "1",
            vec![
                ev::member("sj", s, s, "join"),
                ev::text("sm", s, "Hi, I am Sofia")
            ]
        )
        .await
        .0,
        200
    );
    let rows = app.rows("SELECT a.external_id, cm.role FROM channel_members cm JOIN agents a ON a.id = cm.member_agent_id").await;
    assert_eq!(
        rows,
        vec![vec![Some("agent:sofia".into()), Some("agent".into())]]
    );
    let rows = app.rows("SELECT m.sender_type, a.external_id, CAST(m.sender_user_id AS TEXT) FROM messages m JOIN agents a ON a.id = m.sender_agent_id").await;
    assert_eq!(
        rows,
        vec![vec![Some("agent".into()), Some("agent:sofia".into()), None]]
    );
    // Puppets never get users rows.
    assert!(
        app.col("SELECT matrix_id FROM users")
            .await
            .iter()
            .all(|m| !m.starts_with("@agent_"))
    );
    // An agent leaving is recorded like a person leaving.
    assert_eq!(
        app.put_txn("2", vec![ev::member("sl", s, s, "leave")])
            .await
            .0,
        200
    );
    assert_eq!(app.col("SELECT CASE WHEN left_at IS NULL THEN 'active' ELSE 'left' END FROM channel_members WHERE member_agent_id IS NOT NULL").await, vec!["left"]);
}

async fn agents_created_elsewhere_are_found(b: Backend) {
    let app = TestApp::spawn(b).await;
    // Another DAARION service creates an agent while the bridge runs.
    app.exec("INSERT INTO agents (id, external_id, name, kind, matrix_id) VALUES ('00000000-0000-4000-8000-0000000000a1', 'agent:late', 'Late', 'assistant', '@agent_late:localhost')").await;
    let room = "!late:localhost";
    let e = ev::in_room(
        ev::member("il", "@alice:localhost", "@agent_late:localhost", "invite"),
        room,
    );
    assert_eq!(app.put_txn("1", vec![e]).await.0, 200);
    app.hs
        .wait_for("the late agent's join", |c| {
            c.path == format!("/_matrix/client/v3/rooms/{room}/join")
        })
        .await;
    assert!(app.hs.calls_to("/leave").is_empty(), "not refused");
    assert_eq!(app.count("channels").await, 1);
}

async fn invites_refused_with_reason(b: Backend) {
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

async fn database_down_is_5xx_and_nothing_is_lost(b: Backend) {
    let app = TestApp::spawn(b).await;
    mirrored(&app).await;
    app.break_db().await;
    let (s, body) = app
        .put_txn(
            "down",
            vec![ev::text("d1", "@alice:localhost", "during outage")],
        )
        .await;
    assert!(s >= 500, "status {s}");
    assert_eq!(body["errcode"], "M_UNKNOWN");
    let r = app.http.get(app.url("/health/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    if matches!(b, Backend::Postgres) {
        // The homeserver retries the same txnId once the database is back: applied exactly once.
        app.heal_db().await;
        let mut status = 0;
        for _ in 0..50 {
            status = app
                .put_txn(
                    "down",
                    vec![ev::text("d1", "@alice:localhost", "during outage")],
                )
                .await
                .0;
            if status == 200 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(status, 200);
        assert_eq!(
            app.col("SELECT content_preview FROM messages").await,
            vec!["during outage"]
        );
        assert_eq!(
            app.http
                .get(app.url("/health/ready"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
}

async fn health_and_metrics(b: Backend) {
    let app = TestApp::spawn(b).await;
    let live = app.http.get(app.url("/health/live")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let ready = app.http.get(app.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<Value>().await.unwrap()["migrations"],
        "applied"
    );
    mirrored(&app).await;
    app.put_txn("m", vec![ev::text("x", "@alice:localhost", "count me")])
        .await;
    app.put_txn("m", vec![ev::text("x", "@alice:localhost", "count me")])
        .await;
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        r#"daarion_bridge_transactions_total{outcome="committed"} 2"#,
        r#"daarion_bridge_transactions_total{outcome="replay"} 1"#,
        r#"daarion_bridge_events_total{type="m.room.message",outcome="mirrored"} 1"#,
        "daarion_bridge_transaction_duration_seconds_count 3",
        "daarion_bridge_db_errors_total 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

async fn migrations_are_reversible(b: Backend) {
    let app = TestApp::spawn(b).await;
    mirrored(&app).await;
    app.store.migrate_down_all().await.unwrap();
    assert!(!app.store.ready().await.unwrap());
    app.store.migrate().await.unwrap();
    assert!(app.store.ready().await.unwrap());
    assert_eq!(app.count("channels").await, 0);
}
