//! Access keys as seed 001 has them: a subject (`user`, `agent`, `integration`, `embassy`) and a
//! status; a person's key reads the channels they are in and nothing else, an integration's key
//! holding `bridge.admin` uses the admin API, on SQLite and PostgreSQL.

use daarion_bridge::{db::audit::Actor, keys, model::Ts};
use reqwest::Method;
use rstest::rstest;
use serde_json::{Value, json};

use crate::{
    mirrored,
    support::{Backend, TestApp, ev},
};

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persons_key_reads_their_channels_only(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    mirrored(&app).await;
    assert_eq!(
        app.put_txn("m", vec![ev::text("m1", "@alice:localhost", "hello")])
            .await
            .0,
        200
    );
    // A second room Alice is not in.
    let other = "!other:localhost";
    let (s, _) = app
        .put_txn(
            "o",
            vec![
                ev::in_room(ev::invite_bot("oi", "@bob:localhost", "Elsewhere"), other),
                ev::in_room(
                    ev::member("oj", "@bob:localhost", "@bob:localhost", "join"),
                    other,
                ),
            ],
        )
        .await;
    assert_eq!(s, 200);
    let admin = app.admin_key().await;
    let (s, body) = app.call_as(
        Method::POST,
        "/api/v1/admin/keys",
        &admin,
        Some(json!({"subject_kind": "user", "subject": "@alice:localhost", "name": "alice-reader", "bundles": ["role.guest"]})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let key = body["key"].as_str().unwrap().to_owned();
    // Stored as seed 001 has it.
    let row = app
        .rows(
            "SELECT k.subject_kind, k.status, CASE WHEN k.subject_id = u.id THEN 'alice' ELSE 'other' END, \
             CASE WHEN k.agent_id IS NULL THEN 'none' ELSE 'agent' END \
             FROM access_keys k, users u WHERE k.name = 'alice-reader' AND u.matrix_id = '@alice:localhost'",
        )
        .await;
    assert_eq!(
        row[0],
        ["user", "active", "alice", "none"].map(|s| Some(s.to_owned()))
    );
    let (s, channels) = app
        .call_as(Method::GET, "/api/v1/channels", &key, None)
        .await;
    assert_eq!(s, 200, "{channels}");
    let list = channels["channels"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{channels}");
    assert_eq!(list[0]["matrix_room_id"], ev::ROOM);
    let mine = list[0]["id"].as_str().unwrap();
    let (s, page) = app
        .call_as(
            Method::GET,
            &format!("/api/v1/channels/{mine}/messages"),
            &key,
            None,
        )
        .await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["messages"][0]["content_preview"], "hello");
    let theirs = app
        .col(&format!(
            "SELECT CAST(id AS TEXT) FROM channels WHERE matrix_room_id = '{other}'"
        ))
        .await
        .remove(0);
    let (s, e) = app
        .call_as(
            Method::GET,
            &format!("/api/v1/channels/{theirs}/messages"),
            &key,
            None,
        )
        .await;
    assert_eq!(
        (s, e["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{e}"
    );
    // It acts as nobody: the agent API's other endpoints refuse it, and so does the admin API.
    let (s, e) = app
        .call_as(
            Method::POST,
            &format!("/api/v1/channels/{mine}/messages"),
            &key,
            Some(json!({"body": "hi"})),
        )
        .await;
    assert_eq!(s, 403, "{e}");
    assert!(e["error"].as_str().unwrap().contains("user key"), "{e}");
    let (s, _) = app
        .call_as(Method::GET, "/api/v1/admin/status", &key, None)
        .await;
    assert_eq!(s, 403);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_keys_may_administer_and_statuses_follow(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.admin_key().await;
    let (s, body) = app.call_as(
        Method::POST,
        "/api/v1/admin/keys",
        &admin,
        Some(json!({"subject_kind": "integration", "name": "console", "bundles": ["integration.admin"]})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let console = body["key"].as_str().unwrap().to_owned();
    let (s, _) = app
        .call_as(Method::GET, "/api/v1/admin/status", &console, None)
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .call_as(
            Method::PUT,
            "/api/v1/admin/microdaos/microdao:console",
            &console,
            Some(json!({"name": "By the console"})),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(
        app.col("SELECT actor_id FROM audit_log WHERE action = 'microdao.put'")
            .await[0]
            .split(':')
            .next()
            .unwrap(),
        "integration-key"
    );
    // An integration without bridge.admin is not an admin; nobody but an integration may hold it.
    let (_, plain) = keys::create_for(
        &app.store,
        daarion_bridge::db::keys::Subject::Integration,
        "metrics",
        &["chat.message.read".to_owned()],
        &[],
        None,
        &Actor::cli(),
    )
    .await
    .unwrap();
    let (s, _) = app
        .call_as(Method::GET, "/api/v1/admin/status", &plain, None)
        .await;
    assert_eq!(s, 403);
    for body in [
        json!({"subject_kind": "user", "subject": "@alice:localhost", "name": "x", "capabilities": ["bridge.admin"]}),
        json!({"subject_kind": "user", "name": "x", "bundles": ["role.member"]}),
        json!({"subject_kind": "agent", "name": "x", "bundles": ["agent.runtime"]}),
        json!({"subject_kind": "robot", "name": "x", "bundles": ["role.member"]}),
        json!({"subject_kind": "integration", "name": "x", "bundles": ["plan.gold"]}),
    ] {
        let (s, e) = app
            .call_as(
                Method::POST,
                "/api/v1/admin/keys",
                &admin,
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            (s, e["errcode"].as_str()),
            (400, Some("M_INVALID_PARAM")),
            "{body}: {e}"
        );
    }
    assert!(
        keys::create(
            &app.store,
            "agent:sofia",
            "sneaky",
            &["bridge.admin".to_owned()],
            &[],
            None,
            &Actor::cli(),
        )
        .await
        .is_err()
    );
    // Agent keys are seed 001's agent keys.
    let (agent_key, _) = keys::create(
        &app.store,
        "agent:sofia",
        "runtime",
        &[],
        &["agent.runtime".to_owned()],
        None,
        &Actor::cli(),
    )
    .await
    .unwrap();
    assert_eq!(
        app.col(&format!(
            "SELECT k.subject_kind FROM access_keys k WHERE CAST(k.id AS TEXT) = '{agent_key}' \
             AND k.subject_id = k.agent_id"
        ))
        .await,
        ["agent"]
    );
    // Statuses follow: revoked by revoking, expired when an expired key is presented.
    let past = Ts(chrono::Utc::now() - chrono::Duration::hours(1));
    let (old_id, old) = keys::create_for(
        &app.store,
        daarion_bridge::db::keys::Subject::Integration,
        "old",
        &[],
        &["integration.admin".to_owned()],
        Some(past),
        &Actor::cli(),
    )
    .await
    .unwrap();
    let (s, _) = app
        .call_as(Method::GET, "/api/v1/admin/status", &old, None)
        .await;
    assert_eq!(s, 401);
    app.store
        .keys()
        .revoke(&agent_key.to_string(), &Actor::cli())
        .await
        .unwrap();
    let statuses = app
        .rows(&format!(
            "SELECT CAST(id AS TEXT), status FROM access_keys WHERE CAST(id AS TEXT) IN ('{old_id}', '{agent_key}')"
        ))
        .await;
    for r in statuses {
        let want = if r[0].as_deref() == Some(old_id.to_string().as_str()) {
            "expired"
        } else {
            "revoked"
        };
        assert_eq!(r[1].as_deref(), Some(want));
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microdao_channels_are_for_its_members(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    mirrored(&app).await;
    let alice = "@alice:localhost";
    let bob = "@bob:localhost";
    // Alice is a member from the private room; the room becomes the microDAO's own.
    let members = "SELECT u.matrix_id FROM microdao_members mm JOIN users u ON u.id = mm.user_id ORDER BY u.matrix_id";
    assert_eq!(app.col(members).await, [alice]);
    let vis = ev::state(
        "city.daarion.channel",
        "vis",
        alice,
        "",
        json!({ "microdao": "microdao:demo", "visibility": "microdao" }),
    );
    assert_eq!(
        app.put_txn(
            "1",
            vec![
                vis,
                ev::member("bj", bob, bob, "join"),
                ev::text("m1", alice, "members only"),
            ]
        )
        .await
        .0,
        200
    );
    assert_eq!(
        app.col("SELECT visibility FROM channels").await,
        ["microdao"]
    );
    // Joining a microdao channel grants no membership; the bridge's own row for Alice goes.
    assert!(app.col(members).await.is_empty());
    // The platform makes Alice a member; Bob is in the room but not in the microDAO.
    app.exec(&format!(
        "INSERT INTO microdao_members (id, microdao_id, user_id, role) SELECT \
         '00000000-0000-4000-8000-00000000a11c', m.id, u.id, 'member' FROM microdaos m, users u \
         WHERE m.external_id = 'microdao:demo' AND u.matrix_id = '{alice}'"
    ))
    .await;
    let admin = app.admin_key().await;
    let mut keys = Vec::new();
    for who in [alice, bob] {
        let (s, body) = app.call_as(
            Method::POST,
            "/api/v1/admin/keys",
            &admin,
            Some(json!({"subject_kind": "user", "subject": who, "name": who, "bundles": ["role.member"]})),
        )
        .await;
        assert_eq!(s, 201, "{body}");
        keys.push(body["key"].as_str().unwrap().to_owned());
    }
    let channel = app
        .col("SELECT CAST(id AS TEXT) FROM channels")
        .await
        .remove(0);
    let path = format!("/api/v1/channels/{channel}/messages");
    let (s, page) = app.call_as(Method::GET, &path, &keys[0], None).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["messages"][0]["content_preview"], "members only");
    let (s, _) = app.call_as(Method::GET, &path, &keys[1], None).await;
    assert_eq!(s, 403);
    let (_, listed) = app
        .call_as(Method::GET, "/api/v1/channels", &keys[1], None)
        .await;
    assert_eq!(listed["channels"], json!([]), "{listed}");
    // Of agents, only the microDAO's own join: agent:free (no microDAO) is refused.
    let invite = |id: &str, agent: &str| ev::member(id, alice, agent, "invite");
    assert_eq!(
        app.put_txn(
            "2",
            vec![
                invite("if", "@agent_free:localhost"),
                invite("is", ev::SOFIA)
            ]
        )
        .await
        .0,
        200
    );
    let jobs = app
        .rows("SELECT user_id, kind FROM bridge_jobs WHERE kind IN ('join', 'reject') AND user_id LIKE '@agent_%' ORDER BY user_id")
        .await;
    assert_eq!(
        jobs,
        vec![
            vec![Some("@agent_free:localhost".into()), Some("reject".into())],
            vec![Some(ev::SOFIA.into()), Some("join".into())],
        ]
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_makes_microdao_channels_for_members_only(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let admin = app.admin_key().await;
    let carol = "@carol:localhost";
    let body = |agents: Value| {
        json!({
            "microdao": "microdao:demo", "slug": "core", "name": "Core", "visibility": "microdao",
            "members": [carol], "agents": agents,
        })
    };
    let (s, e) = app
        .call_as(
            Method::POST,
            "/api/v1/admin/channels",
            &admin,
            Some(body(json!(["agent:sofia"]))),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    assert!(
        e["error"].as_str().unwrap().starts_with("`members[0]`"),
        "{e}"
    );
    app.exec(&format!(
        "INSERT INTO users (external_id, matrix_id) VALUES ('user:carol', '{carol}')"
    ))
    .await;
    app.exec(
        "INSERT INTO microdao_members (id, microdao_id, user_id, role) SELECT \
         '00000000-0000-4000-8000-0000000ca201', m.id, u.id, 'member' FROM microdaos m, users u \
         WHERE m.external_id = 'microdao:demo' AND u.external_id = 'user:carol'",
    )
    .await;
    // agent:free belongs to no microDAO: not this one's own.
    let (s, e) = app
        .call_as(
            Method::POST,
            "/api/v1/admin/channels",
            &admin,
            Some(body(json!(["agent:free"]))),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    assert!(e["error"].as_str().unwrap().starts_with("`agents`"), "{e}");
    assert!(app.hs.calls_to("/createRoom").is_empty());
    let (s, made) = app
        .call_as(
            Method::POST,
            "/api/v1/admin/channels",
            &admin,
            Some(body(json!(["agent:sofia"]))),
        )
        .await;
    assert_eq!(s, 201, "{made}");
    assert_eq!(made["visibility"], "microdao");
    assert_eq!(app.hs.calls_to("/createRoom").len(), 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persons_keys_share_a_rate_limit(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.replace(
            "[bridge]\n",
            "[api]\nrate_limit_per_minute = 3\n\n[bridge]\n",
        )
    })
    .await;
    mirrored(&app).await;
    let admin = app.admin_key().await;
    let mut keys = Vec::new();
    for name in ["phone", "laptop"] {
        let (s, body) = app
            .call_as(
                Method::POST,
                "/api/v1/admin/keys",
                &admin,
                Some(json!({"subject_kind": "user", "subject": "@alice:localhost", "name": name, "bundles": ["role.guest"]})),
            )
            .await;
        assert_eq!(s, 201, "{body}");
        keys.push(body["key"].as_str().unwrap().to_owned());
    }
    let mut statuses = Vec::new();
    for i in 0..4 {
        let (s, _) = app
            .call_as(Method::GET, "/api/v1/channels", &keys[i % 2], None)
            .await;
        statuses.push(s);
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
}
