//! A row holding an invalid Matrix id costs only itself: the outbox, the follow-up queue, the
//! trigger candidates and the encrypted events waiting for their key are read row by row, so a
//! valid row next to a bad one is still processed, and the bad one is settled (failed,
//! cancelled, mirrored as it is) instead of blocking its queue.
//! On SQLite and PostgreSQL.

use std::time::Duration;

use rstest::rstest;
use serde_json::json;

use crate::{
    agents::{api, setup},
    crypto::{Unshared, encrypted_bridge},
    runs::{mention, runtime_config, wait_runs},
    support::{Backend, TestApp, ev},
};

/// The id of the rows these tests write by hand (a valid uuid in both dialects).
const BAD_ROW: &str = "00000000-0000-7000-8000-00000000bad1";

/// The status of the hand-written row.
async fn bad_status(app: &TestApp, table: &str) -> Vec<String> {
    app.col(&format!(
        "SELECT status FROM {table} WHERE CAST(id AS TEXT) = '{BAD_ROW}'"
    ))
    .await
}

/// Sends `text` through the agent API into `channel`; the status.
async fn send(app: &TestApp, channel: &str, key: &str, text: &str) -> u16 {
    let path = format!("/api/v1/channels/{channel}/messages");
    let body = Some(json!({ "text": text }));
    let (status, answer, _) = api(app, reqwest::Method::POST, &path, key, body).await;
    assert!(status == 200 || status == 202, "{answer}");
    status
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_bad_room_id_fails_alone(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let (channel, key) = setup(&app).await;
    assert_eq!(send(&app, &channel, &key, "first").await, 200);
    // A pending send into a room whose id is no room id, queued before the next valid one.
    app.exec(&format!(
        "INSERT INTO agent_outbox (id, agent_id, room_id, kind, event_type, content, txn_id, status, request_hash) \
         SELECT '{BAD_ROW}', agent_id, 'not a room id', kind, event_type, content, 'bad-txn', 'pending', request_hash \
         FROM agent_outbox"
    ))
    .await;
    assert_eq!(
        send(&app, &channel, &key, "second").await,
        200,
        "the valid send is delivered"
    );
    app.eventually("the bad send failed", Duration::from_secs(10), || async {
        bad_status(&app, "agent_outbox").await == ["failed"]
    })
    .await;
    let error = app
        .col(&format!(
            "SELECT error FROM agent_outbox WHERE CAST(id AS TEXT) = '{BAD_ROW}'"
        ))
        .await;
    assert!(error[0].contains("invalid"), "{error:?}");
    assert_eq!(
        app.hs.calls_to("/send/").len(),
        2,
        "the bad one is never sent"
    );
    assert!(
        app.metrics()
            .await
            .contains(r#"daarion_bridge_outbox_deliveries_total{outcome="failed"} 1"#)
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_bad_room_id_fails_alone(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    // A join into a room whose id is no room id, due now.
    app.exec(&format!(
        "INSERT INTO bridge_jobs (id, kind, room_id, user_id, status) \
         VALUES ('{BAD_ROW}', 'join', 'not a room id', '{}', 'pending')",
        ev::BOT
    ))
    .await;
    // The bot's invite into the test room: a valid join.
    setup(&app).await;
    app.eventually("the valid join done", Duration::from_secs(10), || async {
        app.col(&format!(
            "SELECT status FROM bridge_jobs WHERE CAST(id AS TEXT) <> '{BAD_ROW}'"
        ))
        .await
            == ["done"]
    })
    .await;
    app.eventually("the bad join failed", Duration::from_secs(10), || async {
        bad_status(&app, "bridge_jobs").await == ["failed"]
    })
    .await;
    assert_eq!(
        app.hs.calls_to("/join").len(),
        1,
        "only the valid room is joined"
    );
    assert!(
        app.metrics()
            .await
            .contains("daarion_bridge_follow_ups_failed_total 1")
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_bad_room_id_is_cancelled_alone(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, runtime_config("echo", "")).await;
    setup(&app).await;
    let (s, _) = app
        .put_txn("1", vec![mention("m1", "Sofia, one?", &[ev::SOFIA])])
        .await;
    assert_eq!(s, 200);
    wait_runs(&app, 1, "completed").await;
    // A candidate from a room whose id is no room id, older than the next valid one.
    app.exec(&format!(
        "INSERT INTO bridge_triggers (id, channel_id, room_id, event_id, status, payload, at, created_at) \
         SELECT '{BAD_ROW}', channel_id, 'not a room id', '$bad', 'candidate', payload, at, created_at \
         FROM bridge_triggers WHERE event_id = '$m1' AND agent_id IS NULL"
    ))
    .await;
    let (s, _) = app
        .put_txn("2", vec![mention("m2", "Sofia, two?", &[ev::SOFIA])])
        .await;
    assert_eq!(s, 200);
    let runs = wait_runs(&app, 2, "completed").await;
    assert_eq!(
        runs[1][1].as_deref(),
        Some("$m2"),
        "the valid one is answered"
    );
    assert_eq!(bad_status(&app, "bridge_triggers").await, ["cancelled"]);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_decryption_bad_room_id_expires_alone(#[case] b: Backend) {
    let app = encrypted_bridge(b, "pending_max_age = \"1s\"").await;
    let mut unshared = Unshared::new();
    let body = json!({ "events": [
        ev::member("sj", ev::SOFIA, ev::SOFIA, "join"),
        unshared.event("$waiting", 0),
    ] });
    let (status, answer) = app
        .put_raw("enc-1", serde_json::to_vec(&body).unwrap())
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(app.store.crypto().pending_count().await.unwrap(), 1);
    // The same event again, waiting under a room id that is no room id.
    app.exec(
        "INSERT INTO bridge_crypto_pending (event_id, room_id, session_id, event, received_at) \
         SELECT '$bad', 'not a room id', session_id, event, received_at FROM bridge_crypto_pending",
    )
    .await;
    app.eventually("both given up on", Duration::from_secs(10), || async {
        app.store.crypto().pending_count().await.unwrap() == 0
            && app
                .col("SELECT content_preview FROM messages WHERE matrix_event_id = '$waiting'")
                .await
                == ["[encrypted]"]
    })
    .await;
    assert!(
        app.metrics()
            .await
            .contains(r#"daarion_bridge_crypto_events_total{outcome="expired"} 2"#)
    );
}
