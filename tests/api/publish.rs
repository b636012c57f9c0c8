//! Events against a real NATS JetStream (a server per test): they arrive in order per channel
//! with exactly the stored payloads; a bridge killed between publish and mark does not double
//! them (JetStream drops the re-publish by `Nats-Msg-Id`); NATS going away and coming back loses
//! none and doubles none. On SQLite and PostgreSQL.

use std::{collections::BTreeMap, time::Duration};

use rstest::rstest;
use serde_json::json;

use crate::{
    events::{Stored, assert_gapless, stored},
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
    let rows = stored(&app).await;
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
    let rows = stored(&restarted).await;
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
    let rows = stored(&app).await;
    assert_gapless(&rows);
    let msgs = nats.read_all("DAARION", rows.len()).await;
    assert_stream_matches(&rows, &msgs);
}
