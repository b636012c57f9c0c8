//! Events out: every change the bridge makes appends its event in the same database transaction
//! (a write that fails leaves neither), numbered per channel in commit order; replays and
//! duplicates add none; published rows and old audit rows are pruned. On SQLite and PostgreSQL.

use std::collections::BTreeMap;

use daarion_bridge::{
    db::{Pool, audit::Actor, events::AppendEvents, runs::RunEnd},
    keys,
    model::{
        Ts,
        ids::{ChannelId, RunId},
        topics::{Draft, Topic, channel_partition},
    },
};
use rstest::rstest;
use serde_json::{Value, json};

use crate::support::{Backend, TestApp, ev};

/// One stored event.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: String,
    pub topic: String,
    pub partition: String,
    pub seq: i64,
    pub payload: Value,
}

/// Every stored event the bridge drafts, by partition and sequence (the database triggers'
/// topics aside: `seeds.rs` tests those).
pub async fn stored(app: &TestApp) -> Vec<Stored> {
    let triggers: Vec<String> = daarion_bridge::model::topics::DATABASE_TOPICS
        .iter()
        .map(|t| format!("'{t}'"))
        .collect();
    read(
        app,
        &format!("WHERE topic NOT IN ({})", triggers.join(", ")),
    )
    .await
}

/// Every stored event, the triggers' too (an agent's partition holds its key events and its
/// catalog events: gapless together).
pub async fn stored_all(app: &TestApp) -> Vec<Stored> {
    read(app, "").await
}

async fn read(app: &TestApp, filter: &str) -> Vec<Stored> {
    app.rows(&format!(
        "SELECT CAST(id AS TEXT), topic, partition_key, CAST(seq AS TEXT), CAST(payload AS TEXT) \
         FROM outbox_events o {filter} ORDER BY o.partition_key, o.seq"
    ))
    .await
    .into_iter()
    .map(|r| Stored {
        id: r[0].clone().unwrap(),
        topic: r[1].clone().unwrap(),
        partition: r[2].clone().unwrap(),
        seq: r[3].as_deref().unwrap().parse().unwrap(),
        payload: serde_json::from_str(r[4].as_deref().unwrap()).unwrap(),
    })
    .collect()
}

fn topics(events: &[Stored]) -> Vec<&str> {
    events.iter().map(|e| e.topic.as_str()).collect()
}

/// Sequences are 1..=n in every partition.
pub fn assert_gapless(events: &[Stored]) {
    let mut by: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for e in events {
        by.entry(&e.partition).or_default().push(e.seq);
    }
    for (p, seqs) in by {
        let want: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, want, "partition {p}");
    }
}

fn edit(id: &str, target: &str, body: &str) -> Value {
    ev::base(
        "m.room.message",
        id,
        "@alice:localhost",
        json!({
            "msgtype": "m.text", "body": format!("* {body}"),
            "m.new_content": { "msgtype": "m.text", "body": body },
            "m.relates_to": { "rel_type": "m.replace", "event_id": target },
        }),
    )
}

fn redaction(id: &str, target: &str) -> Value {
    let mut r = ev::base(
        "m.room.redaction",
        id,
        "@alice:localhost",
        json!({ "redacts": target }),
    );
    r["redacts"] = json!(target);
    r
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_publishes_its_event(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    let channel = app
        .col("SELECT CAST(id AS TEXT) FROM channels")
        .await
        .remove(0);
    let first = stored(&app).await;
    assert_eq!(
        topics(&first),
        ["chat.channel.created", "chat.member.joined"]
    );
    assert_eq!(first[0].payload["matrix_room_id"], ev::ROOM);
    assert_eq!(first[0].payload["name"], "Town Square");
    assert_eq!(first[0].payload["v"], 1);
    assert_eq!(first[1].payload["member_type"], "user");

    let (s, _) = app
        .put_txn(
            "t2",
            vec![
                ev::text("m1", "@alice:localhost", "hello there"),
                ev::text("m2", "@bob:localhost", "to be redacted"),
                ev::state(
                    "m.room.name",
                    "n1",
                    "@alice:localhost",
                    "",
                    json!({ "name": "Renamed" }),
                ),
                ev::now(ev::member("sj", ev::SOFIA, ev::SOFIA, "join")),
            ],
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .put_txn(
            "t3",
            vec![
                edit("e1", "$m1", "hello again"),
                redaction("r1", "$m2"),
                ev::member("al", "@alice:localhost", "@alice:localhost", "leave"),
                ev::now(ev::member("sl", ev::SOFIA, ev::SOFIA, "leave")),
            ],
        )
        .await;
    assert_eq!(s, 200);
    let all = stored(&app).await;
    assert!(all.iter().all(|e| e.partition == channel), "{all:?}");
    assert_gapless(&all);
    assert_eq!(
        topics(&all),
        [
            "chat.channel.created",
            "chat.member.joined",
            "chat.channel.updated",
            "chat.member.joined",
            "chat.message.created",
            "chat.message.created",
            "agent.session.changed",
            "chat.member.left",
            "chat.member.left",
            "chat.message.edited",
            "chat.message.redacted",
            "agent.session.changed",
        ]
    );
    let m1 = app
        .col("SELECT CAST(id AS TEXT) FROM messages WHERE matrix_event_id = '$m1'")
        .await
        .remove(0);
    let created = &all[4].payload;
    assert_eq!(created["message_id"], m1.as_str());
    assert_eq!(created["matrix_event_id"], "$m1");
    assert_eq!(created["sender_type"], "human");
    assert_eq!(created["content_preview"], "hello there");
    assert_eq!(created["channel_id"], channel.as_str());
    assert!(created["sender_user_id"].is_string() && created["sender_agent_id"].is_null());
    // Exactly the documented fields (nulls included) and timestamp format, on both dialects.
    let mut keys: Vec<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "channel_id",
            "content_preview",
            "created_at",
            "edited_at",
            "matrix_event_id",
            "message_id",
            "parts",
            "redacted_at",
            "sender_agent_id",
            "sender_type",
            "sender_user_id",
            "thread_root_event_id",
            "v"
        ]
    );
    // A plain text message has no parts (media: tests/api/parts.rs).
    assert_eq!(created["parts"], json!([]));
    let at = created["created_at"].as_str().unwrap();
    assert!(
        at.len() == 24 && at.ends_with('Z') && at.as_bytes()[19] == b'.',
        "RFC 3339 UTC with milliseconds: {at}"
    );
    assert!(created["edited_at"].is_null() && created["thread_root_event_id"].is_null());
    assert_eq!(created["v"], 1);
    assert_eq!(all[2].payload["name"], "Renamed");
    assert_eq!(all[3].payload["member_type"], "agent");
    let active = &all[6].payload;
    assert_eq!(active["status"], "active");
    assert!(active["session_id"].is_string() && active["closed_at"].is_null());
    let edited = &all[9].payload;
    assert_eq!(edited["message_id"], m1.as_str());
    assert_eq!(edited["channel_id"], channel.as_str());
    assert_eq!(edited["content_preview"], "hello again");
    assert_eq!(all[10].payload["matrix_event_id"], "$m2");
    assert!(all[10].payload["message_id"].is_string());
    assert_eq!(all[11].payload["status"], "closed");
    assert!(all[11].payload["closed_at"].is_string());

    // A replay, the same event in another transaction, an edit of an unknown message, a join of
    // a member already joined: nothing new.
    let n = all.len();
    assert_eq!(app.put_txn("t3", vec![]).await.0, 200);
    assert_eq!(
        app.put_txn(
            "t4",
            vec![
                ev::text("m1", "@alice:localhost", "hello there"),
                edit("e2", "$nope", "x"),
                ev::member("bj", "@bob:localhost", "@bob:localhost", "join"),
                ev::member("bj2", "@bob:localhost", "@bob:localhost", "join"),
            ],
        )
        .await
        .0,
        200
    );
    let after = stored(&app).await;
    assert_eq!(
        topics(&after[n..]),
        ["chat.member.joined"],
        "{:?}",
        &after[n..]
    );
    assert_gapless(&after);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_keys_and_sweeps_publish(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.replace("[bridge]\n", "[bridge]\ndebounce = \"0ms\"\n")
    })
    .await;
    crate::mirrored(&app).await;
    assert_eq!(
        app.put_txn(
            "sj",
            vec![ev::now(ev::member("sj", ev::SOFIA, ev::SOFIA, "join"))]
        )
        .await
        .0,
        200
    );
    assert_eq!(
        app.put_txn(
            "q",
            vec![crate::runs::mention("q1", "Sofia, hi", &[ev::SOFIA])]
        )
        .await
        .0,
        200
    );
    let mut runs = Vec::new();
    for _ in 0..200 {
        runs = stored(&app)
            .await
            .into_iter()
            .filter(|e| e.topic.starts_with("agent.run."))
            .collect();
        if runs.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    assert_eq!(
        topics(&runs),
        ["agent.run.started", "agent.run.completed"],
        "{runs:?}"
    );
    assert_eq!(runs[0].payload["status"], "running");
    assert_eq!(runs[1].payload["status"], "completed");
    assert_eq!(runs[1].payload["trigger_event_id"], "$q1");
    assert!(runs[1].payload["reply_event_id"].is_string());
    assert_eq!(runs[0].payload["run_id"], runs[1].payload["run_id"]);

    // A failed run; a resumed run is not announced twice.
    let run: RunId = RunId(app.insert_running_run(ev::SOFIA, 1).await.parse().unwrap());
    assert!(
        app.store
            .runs()
            .finish(run, &RunEnd::failed("boom"))
            .await
            .unwrap()
    );
    assert!(
        !app.store
            .runs()
            .finish(run, &RunEnd::failed("again"))
            .await
            .unwrap()
    );
    let failed: Vec<Stored> = stored(&app)
        .await
        .into_iter()
        .filter(|e| e.topic == "agent.run.failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].payload["error"], "boom");

    // The idle sweep turns the session idle: one event.
    let metrics = std::sync::Arc::new(daarion_bridge::metrics::Metrics::new());
    let later = Ts::now().plus(std::time::Duration::from_secs(24 * 3600));
    assert_eq!(app.sweep(&metrics, later).await, 1);
    let idle: Vec<Stored> = stored(&app)
        .await
        .into_iter()
        .filter(|e| e.topic == "agent.session.changed" && e.payload["status"] == "idle")
        .collect();
    assert_eq!(idle.len(), 1);

    // Keys: created and revoked, in the agent's partition.
    let (key_id, key) = keys::create(
        &app.store,
        "agent:sofia",
        "k",
        &[],
        &["agent.runtime".into()],
        None,
        &Actor::cli(),
    )
    .await
    .unwrap();
    assert_eq!(
        app.store
            .keys()
            .revoke(&key[..12], &Actor::cli())
            .await
            .unwrap(),
        1
    );
    let k: Vec<Stored> = stored(&app)
        .await
        .into_iter()
        .filter(|e| e.topic.starts_with("access_key."))
        .collect();
    assert_eq!(topics(&k), ["access_key.created", "access_key.revoked"]);
    assert!(k[0].partition.starts_with("agent:"));
    assert_eq!(k[0].payload["key_id"], key_id.to_string());
    assert_eq!(k[0].payload["prefix"], &key[..12]);
    assert!(k[0].payload["capabilities"].as_array().unwrap().len() >= 4);
    assert!(
        !k[0].payload.to_string().contains(&key),
        "the key itself never leaves"
    );
    assert_gapless(&stored_all(&app).await);
}

/// No event without its change: an event appended in a transaction that rolls back is gone with
/// it; an event the database refuses (its change is isolated and skipped) leaves no event either.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_roll_back_with_their_change(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    let channel: ChannelId = ChannelId(
        app.col("SELECT CAST(id AS TEXT) FROM channels")
            .await
            .remove(0)
            .parse()
            .unwrap(),
    );
    let before = stored(&app).await.len();
    let draft = Draft::new(
        Topic::ChannelUpdated,
        channel_partition(channel),
        &json!({ "v": 1 }),
    );
    match app.store.pool() {
        Pool::Pg(pool) => {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("UPDATE channels SET name = 'x'")
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.append_events(std::slice::from_ref(&draft))
                .await
                .unwrap();
            tx.rollback().await.unwrap();
        }
        Pool::Sqlite(pool) => {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("UPDATE channels SET name = 'x'")
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.append_events(std::slice::from_ref(&draft))
                .await
                .unwrap();
            tx.rollback().await.unwrap();
        }
    }
    assert_eq!(stored(&app).await.len(), before);
    assert_eq!(app.col("SELECT name FROM channels").await, ["Town Square"]);
    // The counter rolled back too: the next event is seq n+1, no gap.
    app.store.events().append(&[draft]).await.unwrap();
    assert_gapless(&stored_all(&app).await);

    // A message the database refuses: the rest of the transaction commits with its events, the
    // refused one has neither row nor event.
    let trigger = match b {
        Backend::Postgres => {
            app.exec(
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN \
                 IF NEW.content_preview LIKE '%REFUSE%' THEN RAISE EXCEPTION 'refused' USING ERRCODE = '23514'; END IF; \
                 RETURN NEW; END $$ LANGUAGE plpgsql",
            )
            .await;
            "CREATE TRIGGER refuse BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION refuse()"
        }
        Backend::Sqlite => {
            "CREATE TRIGGER refuse BEFORE INSERT ON messages WHEN NEW.content_preview LIKE '%REFUSE%' \
             BEGIN SELECT RAISE(ABORT, 'refused'); END"
        }
    };
    app.exec(trigger).await;
    let before = stored(&app).await.len();
    assert_eq!(
        app.put_txn(
            "r",
            vec![
                ev::text("ok1", "@alice:localhost", "fine"),
                ev::text("bad", "@alice:localhost", "REFUSE me"),
                ev::text("ok2", "@alice:localhost", "fine too"),
            ],
        )
        .await
        .0,
        200
    );
    let all = stored(&app).await;
    let new: Vec<&str> = all[before..]
        .iter()
        .map(|e| e.payload["matrix_event_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(new, ["$ok1", "$ok2"]);
    assert_gapless(&all);
}

/// Concurrent writers of one partition get gapless, unique sequence numbers, each writer's own
/// events in its order.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_are_gapless_under_concurrency(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    let channel: ChannelId = ChannelId(
        app.col("SELECT CAST(id AS TEXT) FROM channels")
            .await
            .remove(0)
            .parse()
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = app.store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let drafts: Vec<Draft> = (0..3)
                    .map(|k| {
                        Draft::new(
                            Topic::ChannelUpdated,
                            channel_partition(channel),
                            &json!({ "writer": w, "n": i * 3 + k }),
                        )
                    })
                    .collect();
                // SQLite serialises writers itself; busy errors are retried like any caller would.
                for _ in 0..50 {
                    if store.events().append(&drafts).await.is_ok() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all: Vec<Stored> = stored(&app)
        .await
        .into_iter()
        .filter(|e| e.payload.get("writer").is_some())
        .collect();
    assert_eq!(all.len(), 8 * 20 * 3);
    assert_gapless(&stored_all(&app).await);
    for w in 0..8 {
        let ns: Vec<i64> = all
            .iter()
            .filter(|e| e.payload["writer"] == w)
            .map(|e| e.payload["n"].as_i64().unwrap())
            .collect();
        assert_eq!(ns, (0..60).collect::<Vec<_>>(), "writer {w} in order");
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_audit_are_pruned(#[case] b: Backend) {
    // The bridge's own upkeep keeps events for ten years here, so only the prunes below act.
    let app = TestApp::spawn_with(b, |c| format!("{c}\n[events]\nretention = \"3650d\"\n")).await;
    crate::mirrored(&app).await;
    let chat = "outbox_events WHERE topic LIKE 'chat.%'";
    assert_eq!(app.count(chat).await, 2);
    assert!(app.count("audit_log").await >= 1);
    let old = match b {
        Backend::Postgres => "now() - interval '30 days'",
        Backend::Sqlite => "'2020-01-01T00:00:00.000Z'",
    };
    // The audit log is append-only: an old row is written old (its audit.event too).
    app.exec(&format!(
        "INSERT INTO audit_log (id, actor_type, action, outcome, created_at) \
         VALUES ('00000000-0000-4000-8000-0000000a0d17', 'bridge', 'probe.old', 'allowed', {old})"
    ))
    .await;
    let audit = app.count("audit_log").await;
    app.exec(&format!("UPDATE outbox_events SET created_at = {old}"))
        .await;
    // With a broker (unpublished rows kept until published), only published rows go.
    let published_only = daarion_bridge::bridge::upkeep::Retention {
        events: std::time::Duration::from_secs(7 * 86400),
        events_unpublished: None,
        audit: None,
        ..daarion_bridge::bridge::upkeep::Retention::from_config(&app.config)
    };
    let upkeep = |r| {
        daarion_bridge::bridge::upkeep::Upkeep::new(
            app.store.clone(),
            app.registry.clone().unwrap(),
            std::sync::Arc::new(daarion_bridge::metrics::Metrics::new()),
            app.config.bridge.session_idle_after,
            r,
        )
    };
    upkeep(published_only).prune(Ts::now()).await.unwrap();
    assert_eq!(app.count(chat).await, 2, "unpublished rows wait");
    app.exec("UPDATE outbox_events SET processed = true WHERE topic = 'chat.channel.created'")
        .await;
    upkeep(published_only).prune(Ts::now()).await.unwrap();
    assert_eq!(
        app.col("SELECT topic FROM outbox_events WHERE topic LIKE 'chat.%'")
            .await,
        ["chat.member.joined"]
    );
    assert_eq!(
        app.count("audit_log").await,
        audit,
        "audit kept forever by default"
    );
    // Without a broker (unpublished_retention's default: retention) everything old goes;
    // audit with its retention.
    let all = daarion_bridge::bridge::upkeep::Retention {
        events_unpublished: Some(std::time::Duration::from_secs(7 * 86400)),
        audit: Some(std::time::Duration::from_secs(7 * 86400)),
        ..published_only
    };
    upkeep(all).prune(Ts::now()).await.unwrap();
    assert_eq!(app.count("outbox_events").await, 0);
    assert_eq!(app.count("audit_log").await, audit - 1, "only the old row");
}

/// With `events.enabled = false` the bridge writes no event rows.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_can_be_turned_off(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, |c| format!("{c}\n[events]\nenabled = false\n")).await;
    crate::mirrored(&app).await;
    assert_eq!(
        app.put_txn("m", vec![ev::text("m1", "@alice:localhost", "hi")])
            .await
            .0,
        200
    );
    assert_eq!(app.count("messages").await, 1);
    assert_eq!(app.count("outbox_events").await, 0);
}
