//! Failed work through the admin API: a send the homeserver refused, a run whose runtime failed
//! and a follow-up job are listed together (keyset pages, `kind` filter); a retry re-queues
//! each and its worker really does it (the send is delivered, the job done, a new run answers);
//! a run that queued an answer is never retried; failed jobs go after `bridge.failed_retention`.
//! On SQLite and PostgreSQL.

use std::time::Duration;

use daarion_bridge::{db::audit::Actor, keys, model::Ts};
use reqwest::Method;
use rstest::rstest;
use serde_json::{Value, json};

use crate::{
    agents::{api, setup},
    runs::{mention, runtime_config, wait_runs},
    runtimes::FakeWebhook,
    support::{Backend, TestApp, ev},
};

async fn admin(app: &TestApp, method: Method, path: &str, key: &str) -> (u16, Value) {
    let (s, body, _) = api(app, method, &format!("/api/v1/admin{path}"), key, None).await;
    (s, body)
}

fn now_sql(b: Backend, days_ago: u32) -> String {
    match b {
        Backend::Postgres => format!("now() - interval '{days_ago} days'"),
        Backend::Sqlite => format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-{days_ago} days')"),
    }
}

/// A join of Sofia's that failed `days_ago` days ago.
async fn failed_job(app: &TestApp, b: Backend, days_ago: u32) -> String {
    let id = uuid::Uuid::now_v7().hyphenated().to_string();
    let at = now_sql(b, days_ago);
    app.exec(&format!(
        "INSERT INTO bridge_jobs (id, kind, room_id, user_id, status, attempts, not_before, last_error, created_at, finished_at) \
         VALUES ('{id}', 'join', '{}', '{}', 'failed', 5, {at}, 'the homeserver refused: 403', {at}, {at})",
        ev::ROOM,
        ev::SOFIA,
    ))
    .await;
    id
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_work_is_listed_and_retried(#[case] b: Backend) {
    let (_hook, url) = FakeWebhook::spawn("fail").await;
    let app = TestApp::spawn_with(
        b,
        runtime_config(
            "webhook",
            &format!("[blueprints.webhook]\nurl = \"{url}\"\nsecret = \"webhook-test-secret\"\n"),
        ),
    )
    .await;
    let (channel, agent_key) = setup(&app).await;
    let key = keys::create_admin(&app.store, "ops", None, &Actor::cli())
        .await
        .unwrap()
        .1;

    // A send the homeserver refuses for good.
    app.hs.fail_sends.lock().unwrap().push_back(403);
    let (s, body, _) = api(
        &app,
        Method::POST,
        &format!("/api/v1/channels/{channel}/messages"),
        &agent_key,
        Some(json!({ "text": "refused once" })),
    )
    .await;
    assert_eq!(s, 502, "{body}");
    let send = app
        .col("SELECT CAST(id AS TEXT) FROM agent_outbox")
        .await
        .remove(0);
    // A run whose runtime fails.
    assert_eq!(
        app.put_txn("q", vec![mention("q", "Sofia?", &[ev::SOFIA])])
            .await
            .0,
        200
    );
    wait_runs(&app, 1, "failed").await;
    let run = app
        .col("SELECT CAST(id AS TEXT) FROM agent_runs")
        .await
        .remove(0);
    // A join that failed.
    let job = failed_job(&app, b, 0).await;

    // Listed together, in id order, with their errors, ids and attempts.
    let (s, page) = admin(&app, Method::GET, "/failed", &key).await;
    assert_eq!(s, 200, "{page}");
    let items = page["items"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = items
        .iter()
        .map(|i| (i["kind"].as_str().unwrap(), i["id"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("send", send.as_str()),
            ("run", run.as_str()),
            ("job", job.as_str())
        ]
    );
    let by = |k: &str| items.iter().find(|i| i["kind"] == k).unwrap().clone();
    assert!(by("send")["last_error"].as_str().unwrap().contains("403"));
    assert_eq!(by("send")["agent"], json!("agent:sofia"));
    assert_eq!(by("send")["channel_id"], json!(channel));
    assert_eq!(by("send")["attempts"], json!(1));
    assert!(by("send")["failed_at"].is_string());
    assert!(by("run")["last_error"].as_str().unwrap().contains("502"));
    assert_eq!(by("run")["room_id"], json!(ev::ROOM));
    assert_eq!(by("job")["what"], json!("join"));
    assert_eq!(by("job")["user_id"], json!(ev::SOFIA));
    assert_eq!(by("job")["attempts"], json!(5));
    // Keyset pages and the kind filter.
    let (_, p1) = admin(&app, Method::GET, "/failed?limit=2", &key).await;
    assert_eq!(p1["items"].as_array().unwrap().len(), 2);
    let next = p1["next"].as_str().unwrap().to_owned();
    let (_, p2) = admin(
        &app,
        Method::GET,
        &format!("/failed?limit=2&after={next}"),
        &key,
    )
    .await;
    assert_eq!(p2["items"][0]["id"], json!(job));
    assert_eq!(p2["next"], Value::Null);
    let (_, only) = admin(&app, Method::GET, "/failed?kind=run", &key).await;
    assert_eq!(only["items"].as_array().unwrap().len(), 1);
    assert_eq!(only["items"][0]["id"], json!(run));
    let (s, e) = admin(&app, Method::GET, "/failed?kind=nope", &key).await;
    assert_eq!((s, e["errcode"].clone()), (400, json!("M_INVALID_PARAM")));

    // A run that queued an answer is never retried (it would answer twice).
    let created = now_sql(b, 0);
    app.exec(&format!(
        "INSERT INTO agent_outbox (id, agent_id, room_id, kind, event_type, content, txn_id, idempotency_key, status, created_at) \
         SELECT '{}', agent_id, '{}', 'message', 'm.room.message', '{{}}', 'txn-answer', 'run:' || CAST(id AS TEXT), 'sent', {created} \
         FROM agent_runs",
        uuid::Uuid::now_v7(),
        ev::ROOM
    ))
    .await;
    let (s, e) = admin(
        &app,
        Method::POST,
        &format!("/failed/run/{run}/retry"),
        &key,
    )
    .await;
    assert_eq!(s, 409, "{e}");
    assert!(e["error"].as_str().unwrap().contains("answer twice"), "{e}");
    app.exec("DELETE FROM agent_outbox WHERE txn_id = 'txn-answer'")
        .await;

    // The send: delivered now.
    let (s, r) = admin(
        &app,
        Method::POST,
        &format!("/failed/send/{send}/retry"),
        &key,
    )
    .await;
    assert_eq!((s, r["status"].clone()), (200, json!("pending")), "{r}");
    app.eventually("the send is delivered", Duration::from_secs(10), || async {
        app.col(&format!(
            "SELECT status FROM agent_outbox WHERE CAST(id AS TEXT) = '{send}'"
        ))
        .await
            == ["sent"]
    })
    .await;
    assert!(
        app.hs
            .sent_messages()
            .iter()
            .any(|(_, c)| c.body.to_string().contains("refused once"))
    );
    // The job: done.
    let (s, _) = admin(
        &app,
        Method::POST,
        &format!("/failed/job/{job}/retry"),
        &key,
    )
    .await;
    assert_eq!(s, 200);
    app.eventually("the job is done", Duration::from_secs(10), || async {
        app.col(&format!(
            "SELECT status FROM bridge_jobs WHERE CAST(id AS TEXT) = '{job}'"
        ))
        .await
            == ["done"]
    })
    .await;
    // The run: its runtime is fixed (echo), and a new run answers the same trigger.
    app.exec("UPDATE bridge_blueprints SET runtime = 'echo'")
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await; // the registry re-reads it
    let (s, r) = admin(
        &app,
        Method::POST,
        &format!("/failed/run/{run}/retry"),
        &key,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    app.eventually("a new run answers", Duration::from_secs(10), || async {
        app.col("SELECT status FROM agent_runs ORDER BY queued_at")
            .await
            == ["failed", "completed"]
    })
    .await;
    let new = app
        .rows("SELECT trigger_event_id, reply_event_id FROM agent_runs WHERE status = 'completed'")
        .await;
    assert_eq!(new[0][0].as_deref(), Some("$q"), "the same trigger");
    assert!(new[0][1].is_some(), "answered");
    // Retried rows leave the listing; a second retry finds nothing.
    let (_, page) = admin(&app, Method::GET, "/failed", &key).await;
    assert_eq!(page["items"], json!([]));
    for (kind, id) in [("run", &run), ("send", &send), ("job", &job)] {
        let (s, _) = admin(
            &app,
            Method::POST,
            &format!("/failed/{kind}/{id}/retry"),
            &key,
        )
        .await;
        assert_eq!(s, 404, "{kind}");
    }
    let (s, _) = admin(
        &app,
        Method::POST,
        &format!("/failed/nope/{run}/retry"),
        &key,
    )
    .await;
    assert_eq!(s, 400);
    // Audited, each with its kind.
    let audited = app
        .rows("SELECT target, CAST(details AS TEXT) FROM audit_log WHERE action = 'failed.retried' ORDER BY id")
        .await;
    assert_eq!(audited.len(), 3, "{audited:?}");
    assert_eq!(audited[0][0].as_deref(), Some(send.as_str()));
    assert!(audited[2][1].as_deref().unwrap().contains("run"));
    // Only an admin key may.
    let (s, _) = admin(&app, Method::GET, "/failed", &agent_key).await;
    assert_eq!(s, 403);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_jobs_are_kept_for_their_own_retention(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.replace("[bridge]\n", "[bridge]\nfailed_retention = \"30d\"\n")
    })
    .await;
    crate::mirrored(&app).await;
    let recent = failed_job(&app, b, 10).await;
    let old = failed_job(&app, b, 40).await;
    let upkeep = daarion_bridge::bridge::upkeep::Upkeep::new(
        app.store.clone(),
        app.registry.clone().unwrap(),
        std::sync::Arc::new(daarion_bridge::metrics::Metrics::new()),
        app.config.bridge.session_idle_after,
        daarion_bridge::bridge::upkeep::Retention::from_config(&app.config),
    );
    upkeep.prune(Ts::now()).await.unwrap();
    // Older than bridge.retention (7 d), but failed 10 days ago: kept.
    assert_eq!(
        app.col("SELECT CAST(id AS TEXT) FROM bridge_jobs WHERE status = 'failed'")
            .await,
        [recent]
    );
    assert!(!old.is_empty());
}
