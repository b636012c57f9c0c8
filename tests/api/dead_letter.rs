//! Events that can never publish, against a real NATS JetStream with a small `max_payload`: the
//! oversized event becomes a dead letter after `events.dead_letter_after` refusals, its channel's
//! later events still arrive in order, the backlog does not count it, the admin API lists it and
//! a retry publishes it once the limit is raised. And without a broker, rows wait for an SQL
//! consumer's mark or go with `events.unpublished_retention`. On SQLite and PostgreSQL.

use std::time::Duration;

use daarion_bridge::{db::audit::Actor, keys, model::Ts};
use reqwest::Method;
use rstest::rstest;
use serde_json::{Value, json};

use crate::{
    nats::Nats,
    support::{Backend, TestApp, ev},
};

/// The server's limit: every ordinary event fits, a message with a long preview does not.
const MAX_PAYLOAD: usize = 4096;

async fn call(app: &TestApp, method: Method, path: &str, key: &str) -> (u16, Value) {
    let r = app
        .http
        .request(method, app.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn admin_key(app: &TestApp) -> String {
    keys::create_admin(&app.store, "ops", None, &Actor::cli())
        .await
        .unwrap()
        .1
}

async fn count(app: &TestApp, filter: &str) -> usize {
    app.col(&format!(
        "SELECT CAST(COUNT(*) AS TEXT) FROM outbox_events WHERE {filter}"
    ))
    .await[0]
        .parse()
        .unwrap()
}

/// The `/metrics` value of `name` (0 when absent).
async fn metric(app: &TestApp, name: &str) -> f64 {
    app.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

async fn ready_events(app: &TestApp) -> Value {
    let ready: Value = app
        .http
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    ready["events"].clone()
}

async fn say(app: &TestApp, id: &str, body: &str) {
    let (s, _) = app
        .put_txn(id, vec![ev::text(id, "@alice:localhost", body)])
        .await;
    assert_eq!(s, 200);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_large_is_dead_lettered_and_its_channel_goes_on(#[case] b: Backend) {
    let mut nats = Nats::start_with(Some(MAX_PAYLOAD)).await;
    let url = nats.url();
    let app = TestApp::spawn_with(b, move |c| {
        // The test config previews 40 characters: the oversized event needs its whole text.
        let c = c.replace("preview_chars = 40", "preview_chars = 20000");
        format!(
            "{c}\n[events]\nnats_url = \"{url}\"\npoll_interval = \"50ms\"\ndead_letter_after = 2\n"
        )
    })
    .await;
    let key = admin_key(&app).await;
    crate::mirrored(&app).await;
    say(&app, "m1", "before").await;
    say(&app, "m2", &"x".repeat(3 * MAX_PAYLOAD)).await;
    say(&app, "m3", "after one").await;
    say(&app, "m4", "after two").await;
    let big: String = app
        .col("SELECT CAST(id AS TEXT) FROM outbox_events WHERE CAST(payload AS TEXT) LIKE '%xxxxxxxxxx%'")
        .await
        .remove(0);

    // The channel goes on: everything but the oversized event is published, and it is dead.
    app.eventually(
        "the partition drains past the dead event",
        Duration::from_secs(30),
        || async { count(&app, "NOT processed AND dead_at IS NULL").await == 0 },
    )
    .await;
    assert_eq!(
        app.col("SELECT CAST(id AS TEXT) FROM outbox_events WHERE dead_at IS NOT NULL")
            .await,
        std::slice::from_ref(&big)
    );
    let published = count(&app, "processed").await;
    assert_eq!(published, count(&app, "1 = 1").await - 1);
    let msgs = nats.read_all("DAARION", published).await;
    assert_eq!(msgs.len(), published, "every other event is in the stream");
    assert!(msgs.iter().all(|m| m.1 != big), "not the dead one");
    let previews: Vec<&str> = msgs
        .iter()
        .filter_map(|m| m.2["content_preview"].as_str())
        .collect();
    assert_eq!(previews, ["before", "after one", "after two"], "in order");

    // Counted: the counter at once, the gauge and /health/ready at the next backlog refresh
    // (every 5 s); the backlog figure (partition heads on PostgreSQL) does not count it.
    assert_eq!(metric(&app, "daarion_bridge_events_dead_total").await, 1.0);
    app.eventually(
        "the dead gauge and the backlog",
        Duration::from_secs(15),
        || async {
            let e = ready_events(&app).await;
            e["dead"] == json!(1)
                && e["pending"] == json!(0)
                && metric(&app, "daarion_bridge_events_dead_letters").await == 1.0
        },
    )
    .await;

    // Listed, with JetStream's (well, the client's, from the server's announced limit) reason.
    let (s, page) = call(&app, Method::GET, "/api/v1/admin/events/dead", &key).await;
    assert_eq!(s, 200, "{page}");
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    let dead = &items[0];
    assert_eq!(dead["id"], json!(big));
    assert_eq!(dead["topic"], json!("chat.message.created"));
    assert_eq!(dead["attempts"], json!(2), "dead_letter_after = 2");
    assert!(
        dead["last_error"].as_str().unwrap().contains("exceeded"),
        "{dead}"
    );
    assert!(dead["created_at"].is_string() && dead["partition"].is_string());
    let old_seq = dead["seq"].as_i64().unwrap();
    assert_eq!(page["next"], Value::Null);
    let (s, _) = call(
        &app,
        Method::GET,
        "/api/v1/admin/events/dead?after=nope",
        &key,
    )
    .await;
    assert_eq!(s, 400);

    // The limit is raised; the retry puts it at the end of its partition and it is published.
    nats.stop();
    nats.set_max_payload(Some(1024 * 1024));
    nats.resume().await;
    let (s, r) = call(
        &app,
        Method::POST,
        &format!("/api/v1/admin/events/dead/{big}/retry"),
        &key,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["status"], json!("pending"));
    let last: i64 = app
        .col("SELECT CAST(last_seq AS TEXT) FROM outbox_partitions p JOIN outbox_events e ON e.partition_key = p.partition_key WHERE e.dead_at IS NULL AND CAST(e.payload AS TEXT) LIKE '%xxxxxxxxxx%'")
        .await[0]
        .parse()
        .unwrap();
    assert_eq!(
        r["seq"],
        json!(last),
        "a new seq at the end of its partition"
    );
    assert!(last > old_seq);
    app.eventually(
        "the retried event is published",
        Duration::from_secs(30),
        || async { count(&app, "NOT processed").await == 0 },
    )
    .await;
    // The retry is audited, and every audit row is published too (`audit.event`).
    let late: Vec<_> = nats
        .read_all("DAARION", 2)
        .await
        .into_iter()
        .filter(|m| m.1 == big)
        .collect();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].1, big, "the same id (Nats-Msg-Id)");
    assert_eq!(
        late[0].2["content_preview"].as_str().unwrap().len(),
        3 * MAX_PAYLOAD,
        "the same payload"
    );
    assert_eq!(nats.stored("DAARION").await as usize, published + 2);
    let (_, page) = call(&app, Method::GET, "/api/v1/admin/events/dead", &key).await;
    assert_eq!(page["items"], json!([]));
    let (s, _) = call(
        &app,
        Method::POST,
        &format!("/api/v1/admin/events/dead/{big}/retry"),
        &key,
    )
    .await;
    assert_eq!(s, 404, "no longer dead");
    assert_eq!(
        app.col("SELECT target FROM audit_log WHERE action = 'event.retried'")
            .await,
        [big]
    );
    app.eventually("the backlog is empty", Duration::from_secs(15), || async {
        let e = ready_events(&app).await;
        e["dead"] == json!(0) && e["pending"] == json!(0)
    })
    .await;
}

/// Without a broker, `processed` is the SQL consumer's mark: with
/// `unpublished_retention = "never"` unmarked rows stay however old, marked ones go with
/// `retention`; by default (no broker) every old row goes.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_broker_rows_wait_for_the_consumer_or_their_retention(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        format!("{c}\n[events]\nretention = \"7d\"\nunpublished_retention = \"never\"\n")
    })
    .await;
    crate::mirrored(&app).await;
    say(&app, "m1", "hello").await;
    let total = count(&app, "1 = 1").await;
    assert!(total >= 3, "{total}");
    let old = match b {
        Backend::Postgres => "now() - interval '30 days'",
        Backend::Sqlite => "'2020-01-01T00:00:00.000Z'",
    };
    app.exec(&format!("UPDATE outbox_events SET created_at = {old}"))
        .await;
    // The consumer reads the channel.created event and marks it, as docs/events.md shows.
    let mark = match b {
        Backend::Postgres => {
            "UPDATE outbox_events SET processed = true, processed_at = now() WHERE topic = 'chat.channel.created'"
        }
        Backend::Sqlite => {
            "UPDATE outbox_events SET processed = 1, processed_at = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE topic = 'chat.channel.created'"
        }
    };
    app.exec(mark).await;
    let upkeep = |config: &daarion_bridge::config::Config| {
        daarion_bridge::bridge::upkeep::Upkeep::new(
            app.store.clone(),
            app.registry.clone().unwrap(),
            std::sync::Arc::new(daarion_bridge::metrics::Metrics::new()),
            config.bridge.session_idle_after,
            daarion_bridge::bridge::upkeep::Retention::from_config(config),
        )
    };
    upkeep(&app.config).prune(Ts::now()).await.unwrap();
    assert_eq!(
        count(&app, "1 = 1").await,
        total - 1,
        "only the marked row went"
    );
    assert_eq!(count(&app, "topic = 'chat.channel.created'").await, 0);
    // The default without a broker: unpublished rows go with `retention`.
    let mut default = app.config.clone();
    default.events.unpublished_retention = None;
    upkeep(&default).prune(Ts::now()).await.unwrap();
    assert_eq!(count(&app, "1 = 1").await, 0);
}
