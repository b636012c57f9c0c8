//! Events against a real NATS JetStream (a server per test): they arrive in order per channel
//! with exactly the stored payloads; a bridge killed between publish and mark does not double
//! them (JetStream drops the re-publish by `Nats-Msg-Id`); NATS going away and coming back loses
//! none and doubles none. On SQLite and PostgreSQL.

use std::{collections::BTreeMap, time::Duration};

use async_nats::jetstream::message::PublishMessage;
use rstest::rstest;
use serde_json::json;

use crate::{
    events::{Stored, assert_gapless, stored_all},
    nats::Nats,
    support::{Backend, TestApp, ev},
};

fn with_nats(nats: &Nats) -> impl FnOnce(String) -> String {
    let url = nats.url();
    move |c| format!("{c}\n[events]\nnats_url = \"{url}\"\npoll_interval = \"50ms\"\n")
}

/// Waits until nothing is pending.
async fn drained(app: &TestApp) {
    for _ in 0..600 {
        let pending = app
            .col("SELECT CAST(COUNT(*) AS TEXT) FROM outbox_events WHERE NOT processed")
            .await;
        if pending == ["0"] {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "events still pending: {:?}",
        app.rows("SELECT topic, attempts, last_error FROM outbox_events WHERE NOT processed")
            .await
    );
}

/// Two rooms and a few transactions of traffic.
async fn traffic(app: &TestApp, from: usize, to: usize) {
    for i in from..to {
        let room = if i % 2 == 0 {
            ev::ROOM
        } else {
            "!other:localhost"
        };
        let (s, _) = app
            .put_txn(
                &format!("t{i}"),
                vec![
                    ev::in_room(
                        ev::text(
                            &format!("a{i}"),
                            "@alice:localhost",
                            &format!("message {i}"),
                        ),
                        room,
                    ),
                    ev::in_room(
                        ev::text(&format!("b{i}"), "@bob:localhost", "another"),
                        room,
                    ),
                ],
            )
            .await;
        assert_eq!(s, 200);
    }
}

async fn two_rooms(app: &TestApp) {
    crate::mirrored(app).await;
    let (s, _) = app
        .put_txn(
            "room2",
            vec![
                ev::in_room(
                    ev::invite_bot("inv2", "@alice:localhost", "Other"),
                    "!other:localhost",
                ),
                ev::in_room(
                    ev::member("aj2", "@alice:localhost", "@alice:localhost", "join"),
                    "!other:localhost",
                ),
            ],
        )
        .await;
    assert_eq!(s, 200);
}

/// Every stored event is in the stream exactly once, each channel's in sequence order, with
/// the stored payload, on `daarion.<topic>`.
fn assert_stream_matches(rows: &[Stored], msgs: &[(String, String, serde_json::Value)]) {
    let ids: std::collections::BTreeSet<&str> = msgs.iter().map(|m| m.1.as_str()).collect();
    assert_eq!(ids.len(), msgs.len(), "no event twice in the stream");
    assert_eq!(msgs.len(), rows.len(), "every event in the stream");
    let by_id: BTreeMap<&str, &Stored> = rows.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut stream_order: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (subject, id, payload) in msgs {
        let row = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("unknown event {id}"));
        assert_eq!(subject, &format!("daarion.{}", row.topic));
        assert_eq!(payload, &row.payload);
        stream_order
            .entry(&row.partition)
            .or_default()
            .push(row.seq);
    }
    for (partition, seqs) in stream_order {
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, sorted, "channel {partition} in commit order");
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_jetstream_in_order(#[case] b: Backend) {
    let nats = Nats::start().await;
    let app = TestApp::spawn_with(b, with_nats(&nats)).await;
    two_rooms(&app).await;
    traffic(&app, 0, 12).await;
    drained(&app).await;
    let rows = stored_all(&app).await;
    assert_gapless(&rows);
    assert!(rows.len() >= 28, "{}", rows.len());
    let msgs = nats.read_all("DAARION", rows.len()).await;
    assert_stream_matches(&rows, &msgs);
    let ready: serde_json::Value = app
        .http
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["events"]["publisher"], "connected", "{ready}");
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
        metrics.contains(&format!(
            "daarion_bridge_events_published_total {}",
            rows.len()
        )),
        "{metrics}"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_mark_is_deduplicated_by_jetstream(#[case] b: Backend) {
    let nats = Nats::start().await;
    let app = TestApp::prepare(b, |c| c).await;
    let mut bridge = app.spawn_process(with_nats(&nats)).await;
    two_rooms(&bridge).await;
    traffic(&bridge, 0, 10).await;
    drained(&bridge).await;
    // SIGKILL while more is published, then every mark is lost (the worst case of a crash
    // between JetStream's ack and the bridge's mark).
    traffic(&bridge, 10, 20).await;
    bridge.kill9();
    app.exec("UPDATE outbox_events SET processed = false, processed_at = NULL")
        .await;
    let restarted = app.spawn_process(with_nats(&nats)).await;
    drained(&restarted).await;
    let rows = stored_all(&restarted).await;
    assert_gapless(&rows);
    assert_eq!(
        nats.stored("DAARION").await,
        rows.len() as u64,
        "JetStream dropped every re-publish"
    );
    let msgs = nats.read_all("DAARION", rows.len()).await;
    assert_stream_matches(&rows, &msgs);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_loses_and_doubles_nothing(#[case] b: Backend) {
    let mut nats = Nats::start().await;
    let app = TestApp::spawn_with(b, with_nats(&nats)).await;
    two_rooms(&app).await;
    traffic(&app, 0, 4).await;
    drained(&app).await;
    nats.stop();
    // The bridge keeps mirroring while the bus is away.
    traffic(&app, 4, 14).await;
    let mut ready = json!(null);
    for _ in 0..400 {
        ready = app
            .http
            .get(app.url("/health/ready"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ready["events"]["publisher"] == "disconnected"
            && ready["events"]["pending"].as_i64() > Some(0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ready["status"], "ok",
        "events waiting do not make the bridge unready: {ready}"
    );
    assert_eq!(ready["events"]["publisher"], "disconnected", "{ready}");
    assert!(ready["events"]["pending"].as_i64() > Some(0), "{ready}");
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
        !metrics.contains("daarion_bridge_events_pending 0\n"),
        "{metrics}"
    );
    nats.resume().await;
    traffic(&app, 14, 16).await;
    drained(&app).await;
    let rows = stored_all(&app).await;
    assert_gapless(&rows);
    let msgs = nats.read_all("DAARION", rows.len()).await;
    assert_stream_matches(&rows, &msgs);
}

/// A stand-in for an event's payload, of a typical size (~300 bytes).
const FILL_PAYLOAD: &str = r#"{"v":1,"fill":true,"message_id":"00000000-0000-0000-0000-000000000000","channel_id":"00000000-0000-0000-0000-000000000000","sender":{"type":"user","id":"00000000-0000-0000-0000-000000000000"},"kind":"text","preview":"a message of an ordinary length, as people write them","created_at":"2026-12-06T00:00:00.000Z"}"#;

/// Fills `stream` with as many small messages as fit `budget` (at most `max`), published by
/// the test's own client in acknowledged batches (so every one is stored); returns the count.
async fn fill_stream(nats: &Nats, budget: Duration, max: u64) -> u64 {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let start = std::time::Instant::now();
    let mut sent = 0;
    while sent < max && start.elapsed() < budget {
        let mut acks = Vec::with_capacity(5_000);
        for _ in 0..5_000 {
            // Like the bridge's own messages: a Nats-Msg-Id each (JetStream's duplicate
            // window has to index them again after a restart) and an event-sized payload.
            let msg = PublishMessage::build()
                .message_id(uuid::Uuid::new_v4().hyphenated().to_string())
                .payload(FILL_PAYLOAD.into());
            acks.push(js.send_publish("daarion.test.fill", msg).await.unwrap());
        }
        for ack in acks {
            ack.await.unwrap();
        }
        sent += 5_000;
    }
    sent
}

/// JetStream's own readiness, as a client sees it: the stream's info answers (probed every
/// 50 ms) with every message recovered.
async fn jetstream_ready(nats: &Nats, stream: &str, messages: u64) -> std::time::Instant {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(Duration::from_millis(500));
    let start = std::time::Instant::now();
    loop {
        if let Ok(mut s) = js.get_stream(stream).await
            && s.info().await.is_ok_and(|i| i.state.messages >= messages)
        {
            return std::time::Instant::now();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "JetStream ready again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// NATS killed and restarted with a large stream: the events committed while it was away and
/// right after are in the stream within 2 s of JetStream answering a stream info again, each
/// once.
///
/// The stream holds 300,000 messages like the bridge's (a `Nats-Msg-Id` each, ~300 bytes):
/// after a restart JetStream rebuilds its duplicate index lazily, on the first publish that
/// carries a `Nats-Msg-Id`, reading every message inside the duplicate window (about 2 µs a
/// message on a 2-core machine: ~0.7 s for these, 1.1–1.3 s for 500,000, 2.7 s for 1.5 M).
/// No publisher that deduplicates is acknowledged before that, so the stream is sized for the
/// 2 s to measure the publisher's own delay (≤ 100 ms of probing) with room to spare.
///
/// PostgreSQL only: filling the stream takes most of the test's time, and the publisher's
/// recovery does not depend on the database (SQLite runs the outage test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_resumes_within_2s_of_a_restart_with_a_large_stream() {
    let b = Backend::Postgres;
    let mut nats = Nats::start().await;
    let app = TestApp::spawn_with(b, with_nats(&nats)).await;
    two_rooms(&app).await;
    drained(&app).await;
    let t = std::time::Instant::now();
    let filled = fill_stream(&nats, Duration::from_secs(25), 300_000).await;
    let before = nats.stored("DAARION").await;
    eprintln!("stream filled with {filled} messages in {:?}", t.elapsed());
    assert!(filled >= 100_000, "a large stream: {filled}");
    let rows_before = app.count("outbox_events").await as u64;

    // kill -9 while events flow; NATS stays away for 8.5 s (a broker restarting with a large
    // stream takes that long) while the bridge keeps committing; then it is back on the same
    // store, and one more event is committed once JetStream answers. (A publisher backing off
    // exponentially while NATS is down, as this one once did, waited out a 5 s ack timeout and
    // then retried at +0.1, 0.3, 0.7, 1.5, 3.1, 6.3 s: back only ~2.7 s after this restart.)
    traffic(&app, 0, 1).await;
    nats.stop();
    let down = std::time::Instant::now();
    let mut txns = 1;
    while down.elapsed() < Duration::from_millis(8_500) {
        traffic(&app, txns, txns + 1).await;
        txns += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let restarted = std::time::Instant::now();
    nats.resume().await;
    let ready = jetstream_ready(&nats, "DAARION", before).await;
    eprintln!(
        "JetStream ready {:?} after the restart ({before} messages)",
        ready - restarted
    );
    traffic(&app, txns, txns + 1).await;
    let rows = app.count("outbox_events").await as u64 - rows_before;
    assert!(rows >= 4, "{rows}");

    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("DAARION").await.unwrap();
    let arrived = loop {
        let stored = stream.info().await.unwrap().state.messages;
        if stored >= before + rows {
            break std::time::Instant::now();
        }
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "events published after the restart: {} of {rows}",
            stored - before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "events published {:?} after JetStream was ready",
        arrived - ready
    );
    drained(&app).await;
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        before + rows,
        "every event once, none doubled"
    );
    assert!(
        arrived - ready < Duration::from_secs(2),
        "publishing resumed {:?} after JetStream was ready",
        arrived - ready
    );
}
