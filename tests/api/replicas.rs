//! Issue #27, replicas: two bridges on one PostgreSQL, one leads (transactions, readiness,
//! metrics) and the other stands by and takes over when the leader stops; a leader whose lease
//! moved commits nothing (the fence inside its transaction statement and its crypto writes,
//! its connections terminated at take-over) and steps down; SQLite stays single-process; a
//! newer release does not migrate under a leader of the older one.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Backend, TestApp, ev};

/// `/health/ready`: status and body.
async fn ready(app: &TestApp) -> (u16, Value) {
    let r = app.http.get(app.url("/health/ready")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Waits until `app` is ready (leads); how long it took.
async fn until_leads(app: &TestApp, within: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < within {
        if ready(app).await.0 == 200 {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{} did not lead within {within:?}: {:?}",
        app.addr,
        ready(app).await
    );
}

/// Waits until `app` is no longer ready.
async fn until_stands_by(app: &TestApp, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = ready(app).await;
        if status == 503 {
            return body;
        }
        assert!(
            started.elapsed() < within,
            "{} still leads: {body}",
            app.addr
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn gauge(metrics: &str, name: &str) -> i64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from the metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_the_other_takes_over() {
    let a = TestApp::spawn_with(Backend::Postgres, |c| {
        c.replace(
            "renew_interval = \"1s\"",
            "renew_interval = \"1s\"\nreplica = \"a\"",
        )
    })
    .await;
    until_leads(&a, Duration::from_secs(5)).await;
    let b = a.replica("b").await;
    // B stands by: not ready, alive, refuses transactions with a retryable Matrix error.
    let (status, body) = ready(&b).await;
    assert_eq!(
        (status, body["role"].as_str()),
        (503, Some("standby")),
        "{body}"
    );
    let live = b.http.get(b.url("/health/live")).send().await.unwrap();
    assert_eq!(live.status().as_u16(), 200);
    let (status, body) = b
        .put_txn("t1", vec![ev::text("m1", "@alice:localhost", "to b")])
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN");
    assert!(
        body["error"].as_str().unwrap().contains("standby"),
        "{body}"
    );
    assert_eq!(a.count("messages").await, 0, "a standby stores nothing");
    // A leads: the same transaction, retried there, is stored once.
    crate::mirrored(&a).await;
    let (status, _) = a
        .put_txn("t1", vec![ev::text("m1", "@alice:localhost", "to a")])
        .await;
    assert_eq!(status, 200);
    assert_eq!(a.count("messages").await, 1);
    let (m_a, m_b) = (a.metrics().await, b.metrics().await);
    assert_eq!(gauge(&m_a, "daarion_bridge_leader"), 1);
    assert_eq!(gauge(&m_b, "daarion_bridge_leader"), 0);
    let epoch = gauge(&m_a, "daarion_bridge_leader_epoch");
    assert!(epoch >= 1);
    // The admin API works on the standby and says who leads.
    let key = b.admin_key().await;
    let (status, body) = b
        .call_as(Method::GET, "/api/v1/admin/status", &key, None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["leader"]["replica"], "a");
    assert_eq!(body["leader"]["this_replica"], "b");
    assert_eq!(body["leader"]["is_leader"], false);
    assert_eq!(body["leader"]["epoch"], epoch);
    // The agent API works on the standby; its send is queued in the database and the leader
    // sends it, woken through PostgreSQL (sooner than its 5 s poll).
    let (channel, key) = crate::agents::setup(&a).await;
    let sent_before = a.hs.sent_messages().len();
    let started = Instant::now();
    let (status, body) = b
        .call_as(
            Method::POST,
            &format!("/api/v1/channels/{channel}/messages"),
            &key,
            Some(serde_json::json!({ "text": "via the standby" })),
        )
        .await;
    assert!(matches!(status, 200 | 202), "{status} {body}");
    while a.hs.sent_messages().len() == sent_before {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the leader did not send the standby's message promptly"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, call) = a.hs.sent_messages().pop().unwrap();
    assert!(format!("{call:?}").contains("via the standby"), "{call:?}");
    // A stops cleanly (it gives the lease up): B leads within its renew interval.
    a.stop_bridge().await;
    let took = until_leads(&b, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(3), "took over in {took:?}");
    let m_b = b.metrics().await;
    assert_eq!(gauge(&m_b, "daarion_bridge_leader"), 1);
    assert_eq!(gauge(&m_b, "daarion_bridge_leader_epoch"), epoch + 1);
    let (status, _) = b
        .put_txn("t2", vec![ev::text("m2", "@alice:localhost", "now b")])
        .await;
    assert_eq!(status, 200);
    // The replay of t1 changes nothing on the new leader.
    let (status, _) = b
        .put_txn("t1", vec![ev::text("m1", "@alice:localhost", "to a")])
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        b.count("messages").await,
        3,
        "m1, the standby's send, m2: each once"
    );
}

/// Moves the lease to another holder behind the leader's back, as a take-over by a replica that
/// could not terminate its connections would (the worst case for the fence).
async fn steal_lease(app: &TestApp) -> i64 {
    app.col(
        "UPDATE bridge_leader_lease SET epoch = epoch + 1, holder = 'thief', replica = 'thief', \
         expires_at = now() + interval '1 hour' RETURNING CAST(epoch AS TEXT)",
    )
    .await[0]
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_moved_commits_nothing_and_steps_down() {
    let a = TestApp::spawn(Backend::Postgres).await;
    until_leads(&a, Duration::from_secs(5)).await;
    crate::mirrored(&a).await;
    let before = a.count("messages").await;
    let crypto_rows = a.count("bridge_crypto_items").await;
    let epoch = steal_lease(&a).await;
    // Whatever reaches it before it notices: refused, nothing stored (the statement's fence).
    let (status, body) = a
        .put_txn(
            "late",
            vec![ev::text("late1", "@alice:localhost", "after the move")],
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(a.count("messages").await, before);
    // Its crypto store refuses writes under the old epoch too.
    let refused = a
        .store
        .crypto()
        .write(
            "@agent_sofia:localhost",
            &[daarion_bridge::db::crypto::CryptoItem {
                kind: "test".into(),
                key: "k".into(),
                value: "v".into(),
            }],
            &[],
        )
        .await;
    assert!(
        matches!(refused, Err(daarion_bridge::db::StoreError::Fenced)),
        "{refused:?}"
    );
    assert_eq!(a.count("bridge_crypto_items").await, crypto_rows);
    // It steps down at its next renewal.
    let body = until_stands_by(&a, Duration::from_secs(5)).await;
    assert!(
        matches!(body["role"].as_str(), Some("standby" | "stepping_down")),
        "{body}"
    );
    // Its work is drained within about a renew interval (1 s here), not the 10 s shutdown
    // grace: nothing it does can commit any more.
    let lost = Instant::now();
    loop {
        let (_, body) = ready(&a).await;
        if body["role"] == "standby" {
            break;
        }
        assert!(
            lost.elapsed() < Duration::from_secs(4),
            "still stepping down after {:?}: {body}",
            lost.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = a.metrics().await;
    assert_eq!(gauge(&metrics, "daarion_bridge_leader"), 0);
    assert!(metrics.contains(r#"daarion_bridge_leader_changes_total{outcome="lost"} 1"#));
    // And it stays a standby: the lease is someone else's.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ready(&a).await.0, 503);
    assert_eq!(
        a.col("SELECT CAST(epoch AS TEXT) FROM bridge_leader_lease")
            .await,
        vec![epoch.to_string()]
    );
    assert_eq!(a.count("messages").await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_over_terminates_the_old_leaders_connections() {
    let a = TestApp::spawn(Backend::Postgres).await;
    until_leads(&a, Duration::from_secs(5)).await;
    crate::mirrored(&a).await;
    let old = a
        .col("SELECT holder FROM bridge_leader_lease")
        .await
        .remove(0);
    let connections = format!(
        "SELECT CAST(count(*) AS TEXT) FROM pg_stat_activity \
         WHERE application_name = 'daarion-bridge/{old}'"
    );
    assert_ne!(
        a.col(&connections).await,
        vec!["0"],
        "the leader's connections are named"
    );
    // Another process finds the lease expired (as after a pause past the TTL) and takes it.
    let other = daarion_bridge::db::Store::connect(&a.db_url, 2)
        .await
        .unwrap();
    let mut taken = None;
    for _ in 0..50 {
        if let daarion_bridge::db::Pool::Pg(pool) = other.pool() {
            sqlx::query("UPDATE bridge_leader_lease SET expires_at = now() - interval '1 second'")
                .execute(pool)
                .await
                .unwrap();
        }
        // The leader may renew in between: then try again.
        taken = other
            .lease()
            .acquire("other", Duration::from_secs(30), false)
            .await
            .unwrap();
        if taken.is_some() {
            break;
        }
    }
    let taken = taken.expect("the expired lease is taken");
    assert_eq!(taken.previous, Some(a.config.leader.replica_name()));
    // None of the old leader's connections is left that was open at the take-over: the old
    // leader may open new ones (each is refused by its check and closes, so poll for none).
    let daarion_bridge::db::Pool::Pg(pool) = other.pool() else {
        unreachable!()
    };
    let survivors = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
             AND backend_start < (SELECT acquired_at FROM bridge_leader_lease)",
        )
        .bind(format!("daarion-bridge/{old}"))
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(
        survivors(pool.clone()).await,
        0,
        "the old leader's connections are terminated"
    );
    let (status, _) = a
        .put_txn("late", vec![ev::text("late1", "@alice:localhost", "after")])
        .await;
    assert_eq!(status, 503);
    until_stands_by(&a, Duration::from_secs(5)).await;
    // As a standby its store works again (the agent and admin APIs use it).
    assert_eq!(a.count("messages").await, 0);
    let messages: i64 = match other.pool() {
        daarion_bridge::db::Pool::Pg(pool) => {
            sqlx::query_scalar("SELECT count(*) FROM messages WHERE matrix_event_id = '$late1'")
                .fetch_one(pool)
                .await
                .unwrap()
        }
        _ => unreachable!(),
    };
    assert_eq!(messages, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_bridge_on_one_sqlite_file_refuses_to_start() {
    let a = TestApp::spawn(Backend::Sqlite).await;
    until_leads(&a, Duration::from_secs(5)).await;
    let bridge = daarion_bridge::Bridge::build(a.config.clone())
        .await
        .expect("builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        bridge.run(listener, std::future::pending()),
    )
    .await
    .expect("refuses at once");
    let error = refused.expect_err("a second bridge on the same SQLite file");
    assert!(
        error.to_string().contains("SQLite is single-process"),
        "{error}"
    );
    // The first one goes on.
    assert_eq!(ready(&a).await.0, 200);
    // Once it stopped, the file is free (a restart).
    let restarted = a.restart().await;
    until_leads(&restarted, Duration::from_secs(5)).await;
    let lease = restarted
        .col("SELECT CAST(epoch AS TEXT) FROM bridge_leader_lease")
        .await;
    assert_eq!(
        lease,
        vec!["2"],
        "each start takes the lease with a new epoch"
    );
}

/// An upgrade done wrong: a replica of a newer release (a migration pending) starts while a
/// replica of the older release leads. It does not migrate under that leader's feet: it waits
/// until the leader is gone (here a clean stop releases the lease), then migrates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_release_migrates_only_once_the_older_leader_is_gone() {
    let a = TestApp::spawn(Backend::Postgres).await;
    until_leads(&a, Duration::from_secs(5)).await;
    let newest = || async {
        a.col("SELECT CAST(MAX(version) AS TEXT) FROM _sqlx_migrations WHERE success")
            .await
            .remove(0)
            .parse::<i64>()
            .unwrap()
    };
    let latest = newest().await;
    // The database as the older release left it: its newest migration not applied.
    let newer = daarion_bridge::db::Store::connect(&a.db_url, 2)
        .await
        .unwrap();
    newer.migrate_down_to(latest - 1).await.unwrap();
    assert_eq!(newest().await, latest - 1);
    let migrating = tokio::spawn(async move { newer.migrate().await });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !migrating.is_finished(),
        "it waits while the older leader leads"
    );
    assert_eq!(newest().await, latest - 1, "and changes nothing meanwhile");
    a.stop_bridge().await;
    tokio::time::timeout(Duration::from_secs(5), migrating)
        .await
        .expect("it migrates once the lease is released")
        .unwrap()
        .unwrap();
    assert_eq!(newest().await, latest);
}

/// A standby that takes over loads its agents' crypto machines afresh from the database before
/// it takes a transaction: until then it answers readiness with `taking_over` (or `standby`),
/// and at its first 200 Sofia's machine is a new one, loaded after the take-over (a
/// transaction taken earlier would find no machine for its encrypted events and room keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_loads_its_agents_machines_before_it_takes_a_transaction() {
    let sofia = "@agent_sofia:localhost";
    let a = crate::crypto::encrypted_bridge(Backend::Postgres, "").await;
    until_leads(&a, Duration::from_secs(5)).await;
    let b = a.replica("b").await;
    assert_eq!(ready(&b).await.0, 503);
    let crypto = b.crypto.clone().unwrap();
    let machine_of = |user: &str| {
        crypto
            .opened()
            .into_iter()
            .find(|m| m.user.as_str() == user)
    };
    let standby_machine = machine_of(sofia).expect("the standby loaded Sofia's machine at start");
    a.stop_bridge().await;
    let started = Instant::now();
    loop {
        let (status, body) = ready(&b).await;
        if status == 200 {
            break;
        }
        assert!(
            matches!(body["role"].as_str(), Some("standby" | "taking_over")),
            "{body}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{body}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let leader_machine = machine_of(sofia).expect("Sofia's machine is loaded before the first 200");
    assert!(
        !std::sync::Arc::ptr_eq(&standby_machine, &leader_machine),
        "loaded afresh after the take-over"
    );
    assert_eq!(
        leader_machine.device.as_str(),
        standby_machine.device.as_str(),
        "the same device"
    );
}

/// The to-device probe (sent after the start-up ping or a take-over) is sent again every 5 s
/// while it does not come back: Synapse drops the to-device events of the transactions it makes
/// while it still counts the bridge as down (element-hq/synapse#14710), which a probe sent
/// during a fail-over may fall into. One that comes back ends the probe, `delivered`. (Driven
/// on Sofia's machine directly: the fake homeserver does not set devices up.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_is_sent_again_until_it_comes_back() {
    use daarion_bridge::crypto::Delivery;
    let app = crate::crypto::encrypted_bridge(Backend::Sqlite, "").await;
    let crypto = app.crypto.clone().unwrap();
    let sofia = crypto
        .opened()
        .into_iter()
        .find(|m| m.user.as_str() == "@agent_sofia:localhost")
        .expect("Sofia's machine, loaded from the database");
    let probes = || app.hs.calls_to("io.daarion.bridge.probe");
    // Nothing comes back within 7 s: sent at 0 and 5 s, then `missing`.
    let found = crypto.probe(&sofia, Duration::from_secs(7)).await;
    assert_eq!(found, Delivery::Missing);
    assert_eq!(probes().len(), 2, "sent again after 5 s");
    // The next one comes back in a transaction: `delivered`, and no more are sent.
    let probing = tokio::spawn({
        let (crypto, sofia) = (crypto.clone(), sofia.clone());
        async move { crypto.probe(&sofia, Duration::from_secs(20)).await }
    });
    while probes().len() < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = probes().pop().unwrap();
    let (user, devices) = sent.body["messages"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    let (device, content) = devices.as_object().unwrap().iter().next().unwrap();
    let probe = json!({ "type": "io.daarion.bridge.probe", "sender": user,
        "to_user_id": user, "to_device_id": device, "content": content });
    let body = json!({ "events": [], "de.sorunome.msc2409.to_device": [probe] });
    let (status, _) = app
        .put_raw("probe-back", serde_json::to_vec(&body).unwrap())
        .await;
    assert_eq!(status, 200);
    let found = tokio::time::timeout(Duration::from_secs(2), probing)
        .await
        .expect("the probe ends when it comes back")
        .unwrap();
    assert_eq!(found, Delivery::Delivered);
    assert_eq!(ready(&app).await.1["encryption"], "delivered");
    assert_eq!(probes().len(), 3);
}
