//! Issue #26, the seeds to the letter: `microdao_members` follows channel membership (roles from
//! power levels and ownership, the platform's own rows untouched), owners through the admin
//! API, the ERD's NOT NULLs and their defaults, the append-only audit log with seed 001's
//! columns, and the events the database's triggers publish, on SQLite and PostgreSQL.

use daarion_bridge::model::Ts;
use reqwest::Method;
use rstest::rstest;
use serde_json::{Value, json};

use crate::{
    mirrored,
    support::{Backend, TestApp, ev},
};

const ALICE: &str = "@alice:localhost";
const BOB: &str = "@bob:localhost";

/// `(member's Matrix id, role)` of the demo microDAO's members, by Matrix id.
async fn members(app: &TestApp) -> Vec<(String, String)> {
    app.rows(
        "SELECT u.matrix_id, mm.role FROM microdao_members mm JOIN users u ON u.id = mm.user_id \
         JOIN microdaos m ON m.id = mm.microdao_id WHERE m.external_id = 'microdao:demo' ORDER BY u.matrix_id",
    )
    .await
    .into_iter()
    .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
    .collect()
}

/// `(topic, payload)` of the outbox rows whose topic starts with `prefix`, in commit order
/// per partition.
async fn events(app: &TestApp, prefix: &str) -> Vec<(String, Value)> {
    app.rows(&format!(
        "SELECT topic, CAST(payload AS TEXT) FROM outbox_events WHERE topic LIKE '{prefix}%' \
         ORDER BY partition_key, seq"
    ))
    .await
    .into_iter()
    .map(|r| {
        (
            r[0].clone().unwrap(),
            serde_json::from_str(r[1].as_deref().unwrap()).unwrap(),
        )
    })
    .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_in_channels_are_microdao_members(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    mirrored(&app).await;
    // Alice made the room (power level 100 by default); she is an admin of the microDAO.
    assert_eq!(members(&app).await, pairs(&[(ALICE, "member")]));
    let pl = ev::state(
        "m.room.power_levels",
        "pl",
        ALICE,
        "",
        json!({ "users": { ALICE: 100, BOB: 50 } }),
    );
    assert_eq!(
        app.put_txn("1", vec![pl, ev::member("b1", BOB, BOB, "join")])
            .await
            .0,
        200
    );
    assert_eq!(
        members(&app).await,
        pairs(&[(ALICE, "admin"), (BOB, "member")])
    );
    // A person the platform made a guest keeps the platform's row, whatever the rooms say.
    let carol = "@carol:localhost";
    app.exec(&format!(
        "INSERT INTO users (external_id, matrix_id) VALUES ('user:carol', '{carol}')"
    ))
    .await;
    app.exec(
        "INSERT INTO microdao_members (id, microdao_id, user_id, role) SELECT \
         '00000000-0000-4000-8000-00000000c0c0', m.id, u.id, 'guest' FROM microdaos m, users u \
         WHERE m.external_id = 'microdao:demo' AND u.external_id = 'user:carol'",
    )
    .await;
    assert_eq!(
        app.put_txn("2", vec![ev::member("c1", carol, carol, "join")])
            .await
            .0,
        200
    );
    // Bob leaves the microDAO's last channel: his row goes; Carol leaves: hers stays.
    assert_eq!(
        app.put_txn(
            "3",
            vec![
                ev::at(ev::member("b2", BOB, BOB, "leave"), 1_700_000_100_000),
                ev::at(ev::member("c2", carol, carol, "leave"), 1_700_000_100_000),
            ]
        )
        .await
        .0,
        200
    );
    assert_eq!(
        members(&app).await,
        pairs(&[(ALICE, "admin"), (carol, "guest")])
    );
    // Power levels take Alice's 100 away: she becomes a plain member, and the room says so.
    let pl = ev::state(
        "m.room.power_levels",
        "pl2",
        ALICE,
        "",
        json!({ "users": { BOB: 100 } }),
    );
    assert_eq!(app.put_txn("4", vec![pl]).await.0, 200);
    assert_eq!(
        members(&app).await,
        pairs(&[(ALICE, "member"), (carol, "guest")])
    );
    // A replayed transaction changes nothing and publishes nothing more.
    let before = app.count("outbox_events").await;
    assert_eq!(
        app.put_txn(
            "3",
            vec![
                ev::at(ev::member("b2", BOB, BOB, "leave"), 1_700_000_100_000),
                ev::at(ev::member("c2", carol, carol, "leave"), 1_700_000_100_000),
            ]
        )
        .await
        .0,
        200
    );
    assert_eq!(app.count("outbox_events").await, before);
    // The changes, in order, as events (the platform's row published nothing).
    let got: Vec<(String, String, Option<String>)> = events(&app, "microdao.member.")
        .await
        .into_iter()
        .map(|(t, p)| {
            (
                t,
                p["role"].as_str().unwrap_or("-").to_owned(),
                p["previous_role"].as_str().map(str::to_owned),
            )
        })
        .collect();
    // (Within one transaction the dialects may order Alice's change and Bob's join either way;
    // `seq` orders what a consumer sees.)
    let mut want: Vec<(String, String, Option<String>)> = [
        ("microdao.member.added", "member", None),
        ("microdao.member.role_changed", "admin", Some("member")),
        ("microdao.member.added", "member", None),
        ("microdao.member.removed", "-", Some("member")),
        ("microdao.member.role_changed", "member", Some("admin")),
    ]
    .iter()
    .map(|(t, r, p)| (t.to_string(), r.to_string(), p.map(str::to_owned)))
    .collect();
    let mut got = got;
    assert_eq!(got.last(), want.last(), "the last change is last");
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // The channel's role changes are events of their own: Alice's, made owner then member.
    let alice = app
        .col(&format!(
            "SELECT CAST(id AS TEXT) FROM users WHERE matrix_id = '{ALICE}'"
        ))
        .await
        .remove(0);
    let roles: Vec<String> = events(&app, "chat.member.role_changed")
        .await
        .into_iter()
        .filter(|(_, p)| p["user_id"].as_str() == Some(alice.as_str()))
        .map(|(_, p)| p["role"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(roles, ["owner", "member"].map(String::from));
    // Every person the bridge met has a users.created event.
    let created: Vec<String> = events(&app, "user.created")
        .await
        .into_iter()
        .map(|(_, p)| p["matrix_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(created, [ALICE, BOB].map(String::from));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_are_set_and_own(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let key = app.admin_key().await;
    // Declared without an owner: the bridge owns it, through its own users row.
    assert_eq!(
        app.col(
            "SELECT u.external_id FROM microdaos m JOIN users u ON u.id = m.owner_user_id \
             WHERE m.external_id = 'microdao:demo'"
        )
        .await,
        ["bridge:bot"]
    );
    assert_eq!(
        app.col("SELECT matrix_id FROM users WHERE external_id = 'bridge:bot'")
            .await,
        [ev::BOT]
    );
    let path = "/api/v1/admin/microdaos/microdao:demo";
    let (s, e) = app
        .call_as(
            Method::PUT,
            path,
            &key,
            Some(json!({"name": "Demo", "owner": "alice"})),
        )
        .await;
    assert_eq!(
        (s, e["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{e}"
    );
    assert!(e["error"].as_str().unwrap().contains("`owner`"), "{e}");
    let (s, body) = app
        .call_as(
            Method::PUT,
            path,
            &key,
            Some(json!({"name": "Demo", "owner": ALICE})),
        )
        .await;
    assert_eq!((s, body["owner"].as_str()), (200, Some(ALICE)), "{body}");
    // Renaming without naming an owner keeps the owner.
    let (s, body) = app
        .call_as(Method::PUT, path, &key, Some(json!({"name": "Demo 2"})))
        .await;
    assert_eq!((s, body["owner"].as_str()), (200, Some(ALICE)), "{body}");
    // The owner who joins a channel is the microDAO's owner.
    mirrored(&app).await;
    assert_eq!(members(&app).await, pairs(&[(ALICE, "owner")]));
    // The catalog changes were published: the microDAO updated, with its new owner.
    let updates = events(&app, "microdao.updated").await;
    assert!(
        updates.iter().any(|(_, p)| p["name"] == "Demo 2"),
        "{updates:?}"
    );
    let alice_row = app
        .col(&format!(
            "SELECT CAST(id AS TEXT) FROM users WHERE matrix_id = '{ALICE}'"
        ))
        .await;
    assert!(
        updates
            .iter()
            .any(|(_, p)| p["owner_user_id"].as_str() == Some(alice_row[0].as_str())),
        "{updates:?}"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_changes_are_events_and_blueprints_in_use_stay(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let key = app.admin_key().await;
    let a = "/api/v1/admin";
    let (s, _) = app
        .call_as(
            Method::PUT,
            &format!("{a}/blueprints/helper"),
            &key,
            Some(json!({"runtime": "echo"})),
        )
        .await;
    assert_eq!(s, 201);
    // A blueprint without a model stores the ERD's NOT NULL as '' and reads back as none.
    assert_eq!(
        app.col("SELECT model FROM agent_blueprints WHERE code = 'helper'")
            .await,
        [""]
    );
    let (_, bp) = app
        .call_as(Method::GET, &format!("{a}/blueprints/helper"), &key, None)
        .await;
    assert_eq!(bp["model"], Value::Null, "{bp}");
    // An agent named without a blueprint gets `echo`.
    let (s, _) = app
        .call_as(
            Method::PUT,
            &format!("{a}/agents/agent:nobp"),
            &key,
            Some(json!({"name": "No BP"})),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(
        app.col("SELECT b.code FROM agents a JOIN agent_blueprints b ON b.id = a.blueprint_id WHERE a.external_id = 'agent:nobp'")
            .await,
        ["echo"]
    );
    let (s, _) = app
        .call_as(
            Method::PUT,
            &format!("{a}/agents/agent:helped"),
            &key,
            Some(json!({"name": "Helped", "blueprint": "helper"})),
        )
        .await;
    assert_eq!(s, 201);
    // In use: refused, by the API and by the database.
    let (s, e) = app
        .call_as(
            Method::DELETE,
            &format!("{a}/blueprints/helper"),
            &key,
            None,
        )
        .await;
    assert_eq!(s, 409, "{e}");
    assert!(e["error"].as_str().unwrap().contains("1 agents"), "{e}");
    assert!(
        app.try_exec("DELETE FROM agent_blueprints WHERE code = 'helper'")
            .await
            .is_err()
    );
    let (s, _) = app
        .call_as(Method::DELETE, &format!("{a}/blueprints/echo"), &key, None)
        .await;
    assert_eq!(s, 409);
    // Settings only (instructions): the agent row is the same, its settings event says so.
    let (s, _) = app
        .call_as(
            Method::PUT,
            &format!("{a}/agents/agent:helped"),
            &key,
            Some(json!({"name": "Helped", "blueprint": "helper", "instructions": "be brief"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .call_as(
            Method::DELETE,
            &format!("{a}/agents/agent:helped"),
            &key,
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .call_as(
            Method::DELETE,
            &format!("{a}/blueprints/helper"),
            &key,
            None,
        )
        .await;
    assert_eq!(s, 200);
    let helped: Vec<String> = app
        .col("SELECT topic FROM outbox_events WHERE topic LIKE 'agent.%' \
              AND (CAST(payload AS TEXT) LIKE '%agent:helped%' OR topic = 'agent.settings.updated') ORDER BY seq")
        .await;
    // (updated: the registry filled in its Matrix id.)
    assert_eq!(
        helped,
        [
            "agent.created",
            "agent.updated",
            "agent.settings.updated",
            "agent.deleted"
        ]
    );
    let helper: Vec<String> = app
        .col("SELECT topic FROM outbox_events WHERE topic LIKE 'blueprint.%' AND CAST(payload AS TEXT) LIKE '%\"helper\"%' ORDER BY seq")
        .await;
    assert_eq!(helper, ["blueprint.created", "blueprint.deleted"]);
    // No event carries a secret or a setting: the settings events name the source only.
    let settings = events(&app, "agent.settings.updated").await;
    assert_eq!(settings[0].1["source"], "admin", "{settings:?}");
    assert!(settings[0].1.get("instructions").is_none());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_append_only_published_and_pruned(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    mirrored(&app).await;
    let key = app.admin_key().await;
    let (s, _) = app
        .call_as(
            Method::PUT,
            "/api/v1/admin/microdaos/microdao:new",
            &key,
            Some(json!({"name": "New"})),
        )
        .await;
    assert_eq!(s, 201);
    // Seed 001's columns.
    let row = app
        .rows(
            "SELECT resource_kind, CAST(data AS TEXT), user_id FROM audit_log WHERE action = 'microdao.put'",
        )
        .await;
    assert_eq!(row[0][0].as_deref(), Some("microdao"));
    let data: Value = serde_json::from_str(row[0][1].as_deref().unwrap()).unwrap();
    assert_eq!(data, json!({"owner": null}));
    // A person's own action names their users row.
    app.exec(&format!(
        "INSERT INTO audit_log (id, actor_type, actor_id, action, outcome, created_at, user_id) \
         VALUES ('00000000-0000-4000-8000-00000000a0d1', 'user', '{ALICE}', 'probe.done', 'allowed', \
         '2020-01-01T00:00:00.000Z', NULL)"
    ))
    .await;
    // Every audit row is published as seed 001's audit.event.
    let published = events(&app, "audit.event").await;
    assert!(
        published.iter().any(|(_, p)| p["action"] == "microdao.put"
            && p["resource_kind"] == "microdao"
            && p["data"] == json!({"owner": null})),
        "{published:?}"
    );
    // Never updated, never deleted by anyone but the pruner.
    assert!(
        app.try_exec("UPDATE audit_log SET outcome = 'denied'")
            .await
            .is_err()
    );
    assert!(app.try_exec("DELETE FROM audit_log").await.is_err());
    let before = app.count("audit_log").await;
    let cutoff = Ts(chrono::DateTime::parse_from_rfc3339("2021-01-01T00:00:00Z")
        .unwrap()
        .to_utc());
    assert_eq!(app.store.audit().prune(cutoff).await.unwrap(), 1);
    assert_eq!(app.count("audit_log").await, before - 1);
    // The pruner's cutoff does not outlive it.
    assert_eq!(
        app.count("bridge_settings WHERE key = 'audit_prune_before'")
            .await,
        0
    );
    assert!(app.try_exec("DELETE FROM audit_log").await.is_err());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_off_means_no_trigger_events_either(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, |c| c + "\n[events]\nenabled = false\n").await;
    mirrored(&app).await;
    let key = app.admin_key().await;
    let (s, _) = app
        .call_as(
            Method::PUT,
            "/api/v1/admin/microdaos/microdao:new",
            &key,
            Some(json!({"name": "New"})),
        )
        .await;
    assert_eq!(s, 201);
    // Rows were written (a member, an audit row), events were not.
    assert_eq!(members(&app).await, pairs(&[(ALICE, "member")]));
    assert!(app.count("audit_log").await > 0);
    assert_eq!(app.count("outbox_events").await, 0);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_erds_not_nulls_and_values_hold(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    mirrored(&app).await;
    assert_eq!(
        app.put_txn("m", vec![ev::text("m1", ALICE, "hi")]).await.0,
        200
    );
    for refused in [
        "INSERT INTO microdaos (external_id, name) VALUES ('microdao:nobody', 'Nobody')",
        "INSERT INTO agent_blueprints (code) VALUES ('nomodel')",
        "INSERT INTO agents (external_id, name, kind) VALUES ('agent:nobp', 'X', 'assistant')",
        "INSERT INTO channels (slug, name, microdao_id, visibility) SELECT 'x', 'X', id, 'private' FROM microdaos LIMIT 1",
        "UPDATE messages SET sender_type = 'system'",
        "UPDATE agents SET kind = 'bot'",
    ] {
        assert!(app.try_exec(refused).await.is_err(), "accepted: {refused}");
    }
    // Outbox and audit rows get their time from the database when a writer leaves it out.
    app.exec(
        "INSERT INTO outbox_events (id, topic, payload, partition_key, seq) \
         VALUES ('00000000-0000-4000-8000-0000000000e1', 'x.y', '{}', 'test', 1)",
    )
    .await;
    assert_eq!(
        app.count("outbox_events WHERE id = '00000000-0000-4000-8000-0000000000e1' AND created_at IS NOT NULL")
            .await,
        1
    );
}

/// Every topic the bridge or its triggers publish is in the catalogue (`docs/events.md`).
#[test]
fn every_topic_is_in_the_catalogue() {
    let doc = include_str!("../../docs/events.md");
    let drafted = daarion_bridge::model::topics::Topic::ALL.map(|t| t.as_str());
    let missing: Vec<&str> = drafted
        .iter()
        .chain(daarion_bridge::model::topics::DATABASE_TOPICS.iter())
        .copied()
        .filter(|t| !doc.contains(&format!("| `{t}`")) && !doc.contains(&format!(", `{t}`")))
        .collect();
    assert!(missing.is_empty(), "not in docs/events.md: {missing:?}");
}

/// The message path fires none of migration 12's triggers: a transaction of messages from people
/// the bridge knows (the steady state the benchmark measures) writes only its channel's events.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_fire_no_triggers(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    mirrored(&app).await;
    let triggers: Vec<String> = daarion_bridge::model::topics::DATABASE_TOPICS
        .iter()
        .map(|t| format!("'{t}'"))
        .collect();
    let by_triggers = format!("outbox_events WHERE topic IN ({})", triggers.join(", "));
    let before = app.count(&by_triggers).await;
    let messages: Vec<Value> = (0..50)
        .map(|i| ev::text(&format!("m{i}"), ALICE, &format!("message {i}")))
        .collect();
    assert_eq!(app.put_txn("msgs", messages).await.0, 200);
    assert_eq!(app.count("messages").await, 50);
    assert_eq!(app.count(&by_triggers).await, before);
    assert_eq!(
        app.count("outbox_events WHERE topic = 'chat.message.created'")
            .await,
        50
    );
}
