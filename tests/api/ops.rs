//! Operating the bridge: the database going away, health and metrics, reversible migrations.

use daarion_bridge::db::Store;
use rstest::rstest;
use serde_json::Value;

use crate::{
    mirrored,
    support::{Backend, TestApp, ev},
};

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_is_5xx_and_nothing_is_lost(#[case] b: Backend) {
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

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics(#[case] b: Backend) {
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

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_reversible(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    mirrored(&app).await;
    // Migrations run with the bridge stopped (docs/deployment.md): a running leader's pool
    // checks its lease on every new connection, and migrating down drops the lease table
    // under it. A store of its own, as `daarion-bridge migrate` has, does the down and up.
    app.stop_bridge().await;
    let store = Store::connect(&app.db_url, 2).await.unwrap();
    store.migrate_down_all().await.unwrap();
    assert!(!store.ready().await.unwrap());
    store.migrate().await.unwrap();
    assert!(store.ready().await.unwrap());
    assert_eq!(app.count("channels").await, 0);
}
