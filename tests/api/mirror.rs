//! Mirroring rooms into the DAARION schema: placement by state, platform users, membership and
//! roles, previews per message kind, edits and redactions, names and visibility, agents' own
//! messages, and refused invites.

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
async fn daarion_channel_state_places_room(#[case] b: Backend) {
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

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmirrored_rooms_are_ignored(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let events = vec![
        ev::member("j", "@alice:localhost", "@alice:localhost", "join"),
        ev::text("m", "@alice:localhost", "nobody listens"),
    ];
    assert_eq!(app.put_txn("t", events).await.0, 200);
    for table in [
        "channels",
        "messages",
        "users WHERE external_id <> 'bridge:bot'",
        "channel_members",
    ] {
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

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_user_rows_are_reused(#[case] b: Backend) {
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
        .rows("SELECT external_id, matrix_id, handle FROM users WHERE external_id <> 'bridge:bot' ORDER BY external_id")
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

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_lifecycle_and_roles(#[case] b: Backend) {
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

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_by_message_kind(#[case] b: Backend) {
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

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_redactions(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    mirrored(&app).await;
    let a = "@alice:localhost";
    let edit = |id: &str, sender: &str, target: &str, body: &str, ts: u64| {
        ev::at(ev::edit(id, sender, target, body), ts)
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

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_topic_and_visibility_follow_state(#[case] b: Backend) {
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

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_messages_and_membership(#[case] b: Backend) {
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
        app.col("SELECT matrix_id FROM users WHERE external_id <> 'bridge:bot'")
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

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_created_elsewhere_are_found(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    // Another DAARION service creates an agent while the bridge runs.
    app.exec("INSERT INTO agents (id, external_id, name, kind, matrix_id, blueprint_id) VALUES ('00000000-0000-4000-8000-0000000000a1', 'agent:late', 'Late', 'assistant', '@agent_late:localhost', (SELECT id FROM agent_blueprints WHERE code = 'echo'))").await;
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
