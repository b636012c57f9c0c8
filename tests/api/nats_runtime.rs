//! The `nats` runtime against a real JetStream (a `nats-server -js` per test, so it can be
//! stopped and restarted), with the worker of `examples/nats_worker.rs` as a real process:
//! deltas and a final answered once; a worker killed mid-run replaced by another after the
//! ack wait, its late replies ignored; NATS down while a run is requested and back; a bridge
//! killed while its run waits; no worker at all (the run times out); replies to unknown and
//! finished runs (and chunks it cannot use, counted); a stopped run whose request is withdrawn.
//! On SQLite and PostgreSQL.

use std::{
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use async_nats::jetstream;
use rstest::rstest;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{
    agents::setup,
    nats::Nats,
    runs::{mention, runtime_config, wait_runs},
    support::{Backend, TestApp, ev},
};

const REQUESTS: &str = "DAARION_AGENT_RUNS";
const REPLIES: &str = "DAARION_AGENT_REPLIES";

/// A `nats` blueprint for Sofia, on `nats`'s server, runs bounded by `timeout`.
fn with_nats(nats: &Nats, timeout: &str) -> impl FnOnce(String) -> String {
    let url = nats.url();
    let table = format!("[blueprints.nats]\ntimeout = \"{timeout}\"\n");
    move |c| {
        let c = runtime_config("nats", &table)(c);
        format!("{c}\n[events]\nnats_url = \"{url}\"\npoll_interval = \"50ms\"\n")
    }
}

/// The example worker: `DAARION_NATS_WORKER` (scripts/test.sh builds it with the tests), else
/// the target's own when it is newer than its source, else built here once (`cargo test --test
/// api` does not build examples; built from a test, cargo may compile its dependencies again).
fn worker_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Ok(bin) = std::env::var("DAARION_NATS_WORKER") {
                return bin.into();
            }
            let exe = std::env::current_exe().unwrap();
            // target/<profile>/deps/api-… → target/<profile>
            let profile = exe.parent().unwrap().parent().unwrap().to_path_buf();
            let bin = profile.join("examples").join("nats_worker");
            let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples")
                .join("nats_worker.rs");
            let modified = |p: &std::path::Path| p.metadata().and_then(|m| m.modified()).ok();
            if modified(&bin).is_some() && modified(&bin) >= modified(&source) {
                return bin;
            }
            let status = std::process::Command::new(
                std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
            )
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--test", "api", "--example", "nats_worker"])
            .arg("--target-dir")
            .arg(profile.parent().unwrap())
            .status()
            .expect("cargo builds the example worker");
            assert!(status.success(), "examples/nats_worker.rs builds");
            bin
        })
        .clone()
}

/// The example worker as a process, its output lines collected.
struct Worker {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    async fn start(nats: &Nats, name: &str, ack_wait_s: u64, pause_ms: u64) -> Self {
        let mut child = tokio::process::Command::new(worker_binary())
            .env("NATS_URL", nats.url())
            .env("NATS_WORKER_NAME", name)
            .env("NATS_WORKER_ACK_WAIT", ack_wait_s.to_string())
            .env("NATS_WORKER_PAUSE_MS", pause_ms.to_string())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the example worker starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = BufReader::new(child.stdout.take().unwrap());
        let l = lines.clone();
        tokio::spawn(async move {
            let mut out = out.lines();
            while let Ok(Some(line)) = out.next_line().await {
                l.lock().unwrap().push(line);
            }
        });
        let worker = Worker { child, lines };
        worker.wait_for("ready").await;
        worker
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for an output line containing `needle`.
    async fn wait_for(&self, needle: &str) -> String {
        for _ in 0..600 {
            if let Some(line) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the worker never said {needle:?}: {:?}", self.lines());
    }

    /// SIGKILL: the worker dies mid-run, without acknowledging.
    async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Waits until the bridge has created the runtime's streams.
async fn streams_ready(nats: &Nats) {
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    for _ in 0..200 {
        if js.get_stream(REQUESTS).await.is_ok() && js.get_stream(REPLIES).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the bridge did not create {REQUESTS} and {REPLIES}");
}

/// The messages Sofia posted that are not edits, and the text her answer ends with (its last
/// edit, else the message itself).
fn answers(app: &TestApp) -> (Vec<Value>, Option<String>) {
    let sent: Vec<Value> = app
        .hs
        .sent_messages()
        .into_iter()
        .filter(|(user, _)| user == ev::SOFIA)
        .map(|(_, c)| c.body)
        .collect();
    let posts: Vec<Value> = sent
        .iter()
        .filter(|b| b["m.relates_to"]["rel_type"] != "m.replace")
        .cloned()
        .collect();
    let last = sent.last().map(|b| {
        b["m.new_content"]["body"]
            .as_str()
            .or(b["body"].as_str())
            .unwrap_or_default()
            .to_owned()
    });
    (posts, last)
}

async fn publish_reply(nats: &Nats, run_id: &str, chunk: Value) {
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.publish(
        format!("daarion.agent.run.reply.{run_id}"),
        chunk.to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

async fn run_id(app: &TestApp) -> String {
    app.col("SELECT CAST(id AS TEXT) FROM agent_runs")
        .await
        .remove(0)
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_streams_deltas_and_a_final_answer(#[case] b: Backend) {
    worker_binary();
    let nats = Nats::start().await;
    let app = TestApp::spawn_with(b, with_nats(&nats, "30s")).await;
    setup(&app).await;
    streams_ready(&nats).await;
    let worker = Worker::start(&nats, "w1", 30, 400).await;
    assert_eq!(
        app.put_txn("1", vec![mention("q", "Sofia, hello?", &[ev::SOFIA])])
            .await
            .0,
        200
    );
    let runs = wait_runs(&app, 1, "completed").await;
    assert_eq!(runs[0][3].as_deref(), Some("nats"));
    let (posts, last) = answers(&app);
    assert_eq!(posts.len(), 1, "one message: {posts:?}");
    assert_eq!(last.as_deref(), Some("Sofia heard: SOFIA, HELLO?"));
    // The first delta was posted on its own, and edited as the answer grew.
    let first = posts[0]["body"].as_str().unwrap();
    assert!(first.len() < "Sofia heard: SOFIA, HELLO?".len(), "{first}");
    let output = app
        .col("SELECT CAST(output AS TEXT) FROM agent_runs")
        .await
        .remove(0);
    assert!(output.contains("Sofia heard: SOFIA, HELLO?"), "{output}");
    assert_eq!(
        worker
            .lines()
            .iter()
            .filter(|l| l.contains("attempt"))
            .count(),
        1
    );
    // The worker acknowledged: the work queue is empty; its three chunks are kept.
    assert_eq!(nats.stored(REQUESTS).await, 0);
    assert_eq!(nats.stored(REPLIES).await, 3);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_is_replaced_and_the_run_answered_once(#[case] b: Backend) {
    worker_binary();
    let nats = Nats::start().await;
    let app = TestApp::spawn_with(b, with_nats(&nats, "30s")).await;
    setup(&app).await;
    streams_ready(&nats).await;
    // The first worker takes the run, streams half of its answer, and dies.
    let mut first = Worker::start(&nats, "first", 2, 1000).await;
    app.put_txn("1", vec![mention("q", "Sofia, hello?", &[ev::SOFIA])])
        .await;
    first.wait_for("attempt 1").await;
    let second = Worker::start(&nats, "second", 2, 100).await;
    first.wait_for("sent \"delta\"").await;
    first.kill().await;
    // After the ack wait, the second gets the run again and answers it.
    second.wait_for("attempt 2").await;
    wait_runs(&app, 1, "completed").await;
    let (posts, last) = answers(&app);
    assert_eq!(posts.len(), 1, "one message: {posts:?}");
    assert_eq!(
        last.as_deref(),
        Some("Sofia heard: SOFIA, HELLO?"),
        "the second attempt's answer, without the dead worker's half"
    );
    // The dead worker's late replies change nothing.
    let id = run_id(&app).await;
    let sent = app.hs.sent_messages().len();
    publish_reply(
        &nats,
        &id,
        json!({"type": "delta", "text": "zombie", "attempt": 1}),
    )
    .await;
    publish_reply(
        &nats,
        &id,
        json!({"type": "final", "text": "zombie answer", "attempt": 1}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(app.hs.sent_messages().len(), sent);
    let output = app
        .col("SELECT CAST(output AS TEXT) FROM agent_runs")
        .await
        .remove(0);
    assert!(!output.contains("zombie"), "{output}");
    assert_eq!(nats.stored(REQUESTS).await, 0);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_while_a_run_is_requested(#[case] b: Backend) {
    worker_binary();
    let mut nats = Nats::start().await;
    let app = TestApp::spawn_with(b, with_nats(&nats, "40s")).await;
    setup(&app).await;
    streams_ready(&nats).await;
    nats.stop();
    app.put_txn(
        "1",
        vec![mention("q", "Sofia, are you there?", &[ev::SOFIA])],
    )
    .await;
    wait_runs(&app, 1, "running").await;
    // The publish fails and is retried while NATS is away.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(wait_runs(&app, 1, "running").await.len(), 1);
    nats.resume().await;
    let worker = Worker::start(&nats, "w1", 30, 50).await;
    wait_runs(&app, 1, "completed").await;
    let (posts, last) = answers(&app);
    assert_eq!(posts.len(), 1, "one message: {posts:?}");
    assert_eq!(last.as_deref(), Some("Sofia heard: SOFIA, ARE YOU THERE?"));
    let attempts: Vec<String> = worker
        .lines()
        .into_iter()
        .filter(|l| l.contains("attempt"))
        .collect();
    assert_eq!(attempts.len(), 1, "published once: {attempts:?}");
    assert_eq!(nats.stored(REQUESTS).await, 0);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_killed_while_its_run_waits_awaits_it_again(#[case] b: Backend) {
    worker_binary();
    let nats = Nats::start().await;
    let app = TestApp::prepare(b, with_nats(&nats, "30s")).await;
    let mut bridge = app.spawn_process(|c| c).await;
    setup(&bridge).await;
    streams_ready(&nats).await;
    bridge
        .put_txn("1", vec![mention("q", "Sofia, still there?", &[ev::SOFIA])])
        .await;
    // Published, not taken: then the bridge dies.
    for _ in 0..200 {
        if nats.stored(REQUESTS).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(nats.stored(REQUESTS).await, 1);
    bridge.kill9();
    let restarted = app.spawn_process(|c| c).await;
    // The resumed run publishes again: JetStream drops the duplicate.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(nats.stored(REQUESTS).await, 1);
    let worker = Worker::start(&nats, "w1", 30, 50).await;
    for _ in 0..200 {
        if restarted.col("SELECT status FROM agent_runs").await == ["completed"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        restarted.col("SELECT status FROM agent_runs").await,
        ["completed"],
        "worker: {:?}\nbridge: {}",
        worker.lines(),
        restarted.process_log()
    );
    let (posts, last) = answers(&app);
    assert_eq!(posts.len(), 1, "one message: {posts:?}");
    assert_eq!(last.as_deref(), Some("Sofia heard: SOFIA, STILL THERE?"));
    assert_eq!(
        worker
            .lines()
            .iter()
            .filter(|l| l.contains("attempt"))
            .count(),
        1
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_without_a_worker_times_out(#[case] b: Backend) {
    let nats = Nats::start().await;
    let app = TestApp::spawn_with(b, with_nats(&nats, "2s")).await;
    setup(&app).await;
    streams_ready(&nats).await;
    app.put_txn("1", vec![mention("q", "Sofia?", &[ev::SOFIA])])
        .await;
    let runs = wait_runs(&app, 1, "failed").await;
    assert!(
        runs[0][5].as_deref().unwrap().contains("timed out"),
        "{runs:?}"
    );
    // The blueprint's failure notice (on by default), once; the request is withdrawn, so no
    // worker starts it late.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = app.hs.sent_messages();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        sent[0].1.body["body"]
            .as_str()
            .unwrap()
            .contains("could not answer")
    );
    assert_eq!(nats.stored(REQUESTS).await, 0);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_to_unknown_or_finished_runs_are_ignored(#[case] b: Backend) {
    let nats = Nats::start().await;
    let app = TestApp::spawn_with(b, with_nats(&nats, "30s")).await;
    setup(&app).await;
    streams_ready(&nats).await;
    // Replies to a run that does not exist.
    publish_reply(
        &nats,
        &uuid::Uuid::new_v4().to_string(),
        json!({"type": "final", "text": "to nobody", "attempt": 1}),
    )
    .await;
    // A worker of our own, speaking the documented protocol: it reads the request, answers
    // with an error, and terminates the message.
    app.put_txn("1", vec![mention("q", "Sofia, fail please", &[ev::SOFIA])])
        .await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let consumer = js
        .get_stream(REQUESTS)
        .await
        .unwrap()
        .get_or_create_consumer(
            "test-worker",
            jetstream::consumer::pull::Config {
                durable_name: Some("test-worker".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let request = {
        use futures_util::StreamExt;
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(10))
            .messages()
            .await
            .unwrap();
        batch.next().await.unwrap().unwrap()
    };
    assert_eq!(
        request
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string()),
        Some(run_id(&app).await),
        "deduplicated on the run id"
    );
    assert_eq!(
        request.subject.as_str(),
        "daarion.agent.run.requested.agent:sofia"
    );
    let body: Value = serde_json::from_slice(&request.payload).unwrap();
    let id = body["run_id"].as_str().unwrap().to_owned();
    assert_eq!(body["reply_to"], format!("daarion.agent.run.reply.{id}"));
    assert_eq!(body["agent"]["matrix_id"], ev::SOFIA);
    assert_eq!(body["trigger_texts"], json!(["Sofia, fail please"]));
    assert!(body["deadline_ms"].as_i64().unwrap() > chrono::Utc::now().timestamp_millis());
    // Chunks the protocol does not have are read, counted and skipped: the run goes on.
    js.publish(format!("daarion.agent.run.reply.{id}"), "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    publish_reply(&nats, &id, json!({"type": "shout", "attempt": 1})).await;
    publish_reply(
        &nats,
        &id,
        json!({"type": "error", "error": "no model today", "attempt": 1}),
    )
    .await;
    request.ack_with(jetstream::AckKind::Term).await.unwrap();
    let runs = wait_runs(&app, 1, "failed").await;
    assert!(
        runs[0][5].as_deref().unwrap().contains("no model today"),
        "{runs:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let notices = app.hs.sent_messages().len();
    assert_eq!(notices, 1, "the failure notice only");
    let metrics = app.metrics().await;
    for outcome in ["malformed", "unknown_type"] {
        let line = format!("daarion_bridge_nats_replies_ignored_total{{outcome=\"{outcome}\"}} 1");
        assert!(metrics.contains(&line), "no {line} in\n{metrics}");
    }
    // Replies to the failed run: ignored.
    publish_reply(
        &nats,
        &id,
        json!({"type": "final", "text": "too late", "attempt": 2}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(app.hs.sent_messages().len(), notices);
    assert_eq!(
        app.col("SELECT status FROM agent_runs").await,
        vec!["failed"]
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_run_withdraws_its_request(#[case] b: Backend) {
    worker_binary();
    let nats = Nats::start().await;
    let app = TestApp::spawn_with(b, with_nats(&nats, "30s")).await;
    setup(&app).await;
    streams_ready(&nats).await;
    // No worker yet: the request waits in the queue.
    app.put_txn("1", vec![mention("q", "Sofia, think hard", &[ev::SOFIA])])
        .await;
    for _ in 0..100 {
        if nats.stored(REQUESTS).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(nats.stored(REQUESTS).await, 1, "the run was requested");
    let stop = ev::now(ev::text("s", "@alice:localhost", "stop"));
    assert_eq!(app.put_txn("stop", vec![stop]).await.0, 200);
    wait_runs(&app, 1, "cancelled").await;
    // The request is withdrawn: a worker that comes now finds nothing to answer.
    for _ in 0..100 {
        if nats.stored(REQUESTS).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        nats.stored(REQUESTS).await,
        0,
        "the stopped run's request is gone"
    );
    let worker = Worker::start(&nats, "w1", 30, 0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !worker.lines().iter().any(|l| l.contains("attempt")),
        "{:?}",
        worker.lines()
    );
    let (posts, _) = answers(&app);
    assert!(posts.is_empty(), "{posts:?}");
    assert_eq!(
        app.col("SELECT status FROM agent_runs").await,
        vec!["cancelled"]
    );
}

/// An upgrade from a bridge before the `nats` runtime: its events stream took `daarion.>`,
/// which the runtime's streams would overlap. The bridge narrows it (keeping its events) and
/// creates the runtime's streams, and runs are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_events_stream_is_narrowed_and_keeps_its_events() {
    worker_binary();
    let nats = Nats::start().await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.create_stream(jetstream::stream::Config {
        name: "DAARION".into(),
        subjects: vec!["daarion.>".into()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("daarion.channel.created", "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let app = TestApp::spawn_with(Backend::Sqlite, with_nats(&nats, "30s")).await;
    setup(&app).await;
    streams_ready(&nats).await;
    let mut events = js.get_stream("DAARION").await.unwrap();
    let subjects = events.info().await.unwrap().config.subjects.clone();
    assert_eq!(
        subjects,
        vec!["daarion.*", "daarion.*.*", "daarion.*.*.*"],
        "narrowed"
    );
    assert!(
        events.info().await.unwrap().state.messages >= 1,
        "the older events stay"
    );
    let _worker = Worker::start(&nats, "w1", 30, 0).await;
    app.put_txn("1", vec![mention("q", "Sofia, still there?", &[ev::SOFIA])])
        .await;
    wait_runs(&app, 1, "completed").await;
    let (posts, last) = answers(&app);
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(last.as_deref(), Some("Sofia heard: SOFIA, STILL THERE?"));
}
