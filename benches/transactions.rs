//! Transaction benchmark: realistic transactions of 1, 50 and 100 `m.room.message` events PUT to
//! a running bridge process (the release binary) on PostgreSQL and on SQLite, one at a time (as
//! homeservers send them) and 16 at a time. Prints latency percentiles, events/s, the bridge's
//! CPU per 1,000 events and peak RSS, and the floor: the same rows inserted straight into the
//! same database with one batched `INSERT … ON CONFLICT DO NOTHING` per transaction.
//!
//! Run: `cargo bench --bench transactions` (PostgreSQL from `DAARION_TEST_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; `scripts/ensure-postgres.sh` starts one).

use std::{
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

const HS_TOKEN: &str = "bench_hs_token_0123456789abcdefghijklmnopqrstuvwxyz";
const AS_TOKEN: &str = "bench_as_token_0123456789abcdefghijklmnopqrstuvwxyz";
const ROOM: &str = "!bench:localhost";
const SENDERS: usize = 20;

struct Bridge {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bridge {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// utime + stime of the bridge process, in seconds.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        ticks / 100.0
    }

    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<f64>()
            .unwrap()
            / 1024.0
    }

    async fn put(&self, txn: &str, events: &[Value]) -> Duration {
        put(&self.http, &self.base, txn, events).await
    }
}

async fn put(http: &reqwest::Client, base: &str, txn: &str, events: &[Value]) -> Duration {
    {
        let body = serde_json::to_vec(&json!({ "events": events })).unwrap();
        let started = Instant::now();
        let r = http
            .put(format!("{base}/_matrix/app/v1/transactions/{txn}"))
            .bearer_auth(HS_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        started.elapsed()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_bridge(db_url: &str, dir: &std::path::Path) -> Bridge {
    start_bridge_with(db_url, dir, "http://127.0.0.1:9", "").await
}

async fn start_bridge_with(
    db_url: &str,
    dir: &std::path::Path,
    hs_url: &str,
    extra: &str,
) -> Bridge {
    let port = free_port();
    let config = format!(
        r#"
[homeserver]
url = "{hs_url}"
server_name = "localhost"
[appservice]
id = "bench"
listen = "127.0.0.1:{port}"
url = "http://127.0.0.1:{port}"
as_token = "{AS_TOKEN}"
hs_token = "{HS_TOKEN}"
[database]
url = "{db_url}"
max_connections = 16
[bridge]
default_microdao = "microdao:bench"
debounce = "0ms"
runs_per_minute = 1000000
max_message_age = "1h"
[logging]
level = "error"
[[microdaos]]
external_id = "microdao:bench"
name = "Bench"
{extra}
"#
    );
    let path = dir.join("bench.toml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_daarion-bridge"))
        .args(["-c", path.to_str().unwrap(), "run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the bridge binary");
    let bridge = Bridge {
        child,
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::new(),
    };
    for _ in 0..200 {
        if let Ok(r) = bridge
            .http
            .get(format!("{}/health/ready", bridge.base))
            .send()
            .await
            && r.status() == 200
        {
            return bridge;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("bridge did not become ready");
}

fn sender(i: usize) -> String {
    format!("@user{}:localhost", i % SENDERS)
}

/// A realistic message: a sentence or three, some with HTML formatting, some replies.
fn message(seq: u64) -> Value {
    let body = format!(
        "Message {seq}: the quarterly numbers for the garden microDAO look good; let's review the treasury proposal tomorrow at 10:00 and decide on the next grant round."
    );
    let mut content = json!({ "msgtype": "m.text", "body": body });
    if seq.is_multiple_of(3) {
        content["format"] = json!("org.matrix.custom.html");
        content["formatted_body"] = json!(format!(
            "<p>Message <b>{seq}</b>: the quarterly numbers look <i>good</i></p>"
        ));
    }
    if seq.is_multiple_of(5) {
        content["m.relates_to"] =
            json!({ "m.in_reply_to": { "event_id": format!("$ev{}", seq.saturating_sub(1)) } });
    }
    json!({
        "type": "m.room.message",
        "event_id": format!("$ev{seq}"),
        "sender": sender(seq as usize),
        "room_id": ROOM,
        "origin_server_ts": 1_700_000_000_000u64 + seq,
        "content": content,
        "unsigned": { "age": 12 },
    })
}

struct Stats {
    p50: f64,
    p99: f64,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0;
    Stats {
        p50: at(0.50),
        p99: at(0.99),
    }
}

enum Floor {
    Pg(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

impl Floor {
    /// The floor any bridge pays: the same rows, one batched upsert, one commit.
    async fn insert(&self, channel: &str, seqs: std::ops::Range<u64>) -> Duration {
        let ids: Vec<uuid::Uuid> = seqs.clone().map(|_| uuid::Uuid::now_v7()).collect();
        let events: Vec<String> = seqs.clone().map(|s| format!("$floor{s}")).collect();
        let previews: Vec<String> = seqs
            .clone()
            .map(|s| {
                format!("Message {s}: the quarterly numbers for the garden microDAO look good")
            })
            .collect();
        let started = Instant::now();
        match self {
            Floor::Pg(pool) => {
                let channel: uuid::Uuid = channel.parse().unwrap();
                let ts: Vec<chrono::DateTime<chrono::Utc>> =
                    seqs.clone().map(|_| chrono::Utc::now()).collect();
                sqlx::query(
                    "INSERT INTO messages (id, channel_id, matrix_event_id, sender_type, content_preview, created_at) \
                     SELECT id, $1, e, 'human', p, t FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::timestamptz[]) AS x(id, e, p, t) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(channel)
                .bind(ids)
                .bind(events)
                .bind(previews)
                .bind(ts)
                .execute(pool)
                .await
                .unwrap();
            }
            Floor::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
                for ((id, e), p) in ids.iter().zip(&events).zip(&previews) {
                    sqlx::query(
                        "INSERT INTO messages (id, channel_id, matrix_event_id, sender_type, content_preview, created_at) \
                         VALUES ($1, $2, $3, 'human', $4, $5) ON CONFLICT DO NOTHING",
                    )
                    .bind(id.hyphenated().to_string())
                    .bind(channel)
                    .bind(e)
                    .bind(p)
                    .bind("2026-01-01T00:00:00.000Z")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                }
                tx.commit().await.unwrap();
            }
        }
        started.elapsed()
    }
}

async fn run(name: &str, db_url: &str, dir: &std::path::Path) {
    let bridge = start_bridge(db_url, dir).await;
    // Set up: the bot is invited (room mirrored), the senders join.
    let mut setup = vec![json!({
        "type": "m.room.member", "state_key": "@daarion:localhost", "sender": "@user0:localhost",
        "room_id": ROOM, "event_id": "$invite", "origin_server_ts": 1_700_000_000_000u64,
        "content": { "membership": "invite" },
    })];
    for i in 0..SENDERS {
        let u = sender(i);
        setup.push(json!({
            "type": "m.room.member", "state_key": u, "sender": u, "room_id": ROOM,
            "event_id": format!("$join{i}"), "origin_server_ts": 1_700_000_000_000u64,
            "content": { "membership": "join" },
        }));
    }
    bridge.put("setup", &setup).await;

    let floor = if db_url.starts_with("postgres") {
        Floor::Pg(sqlx::PgPool::connect(db_url).await.unwrap())
    } else {
        Floor::Sqlite(sqlx::SqlitePool::connect(db_url).await.unwrap())
    };
    let channel: String = match &floor {
        Floor::Pg(p) => sqlx::query_scalar("SELECT CAST(id AS TEXT) FROM channels")
            .fetch_one(p)
            .await
            .unwrap(),
        Floor::Sqlite(p) => sqlx::query_scalar("SELECT id FROM channels")
            .fetch_one(p)
            .await
            .unwrap(),
    };

    println!("\n## {name}\n");
    println!(
        "| events/txn | concurrency | txns | p50 ms | p99 ms | events/s | floor p50 ms | bridge/floor | bridge CPU µs/event |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut seq: u64 = 0;
    let mut txn = 0u64;
    for (size, count) in [(1usize, 400usize), (50, 200), (100, 150)] {
        // Warm-up.
        for _ in 0..20 {
            let events: Vec<Value> = (0..size)
                .map(|_| {
                    seq += 1;
                    message(seq)
                })
                .collect();
            txn += 1;
            bridge.put(&format!("w{txn}"), &events).await;
        }
        let cpu0 = bridge.cpu_seconds();
        let started = Instant::now();
        let mut lat = Vec::with_capacity(count);
        for _ in 0..count {
            let events: Vec<Value> = (0..size)
                .map(|_| {
                    seq += 1;
                    message(seq)
                })
                .collect();
            txn += 1;
            lat.push(bridge.put(&format!("t{txn}"), &events).await);
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu = bridge.cpu_seconds() - cpu0;
        let mut floor_lat = Vec::with_capacity(count);
        for i in 0..count as u64 {
            let base = 10_000_000 + seq * 2 + i * size as u64;
            floor_lat.push(floor.insert(&channel, base..base + size as u64).await);
        }
        seq += count as u64 * size as u64 * 2;
        let s = stats(lat);
        let f = stats(floor_lat);
        let events = (count * size) as f64;
        println!(
            "| {size} | 1 | {count} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.1} |",
            s.p50,
            s.p99,
            events / wall,
            f.p50,
            s.p50 / f.p50,
            cpu / events * 1e6
        );
    }
    // Concurrency 16, 50-event transactions.
    let size = 50;
    let per_task = 25;
    let cpu0 = bridge.cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..16u64 {
        let start_seq = seq + task * (per_task * size) as u64;
        let (http, base) = (bridge.http.clone(), bridge.base.clone());
        tasks.push(async move {
            let mut lat = Vec::new();
            for i in 0..per_task as u64 {
                let events: Vec<Value> = (0..size as u64)
                    .map(|k| message(start_seq + i * size as u64 + k + 1))
                    .collect();
                lat.push(put(&http, &base, &format!("c{task}-{i}-{start_seq}"), &events).await);
            }
            lat
        });
    }
    let lat: Vec<Duration> = futures_join_all(tasks)
        .await
        .into_iter()
        .flatten()
        .collect();
    let wall = started.elapsed().as_secs_f64();
    let cpu = bridge.cpu_seconds() - cpu0;
    let events = (16 * per_task * size) as f64;
    let s = stats(lat);
    println!(
        "| {size} | 16 | {} | {:.2} | {:.2} | {:.0} | – | – | {:.1} |",
        16 * per_task,
        s.p50,
        s.p99,
        events / wall,
        cpu / events * 1e6
    );
    println!("\nbridge peak RSS: {:.1} MiB", bridge.peak_rss_mib());
}

/// Joins futures without pulling in the `futures` crate.
async fn futures_join_all<F, T>(fs: Vec<F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir =
            std::env::temp_dir().join(format!("daarion-bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let admin = std::env::var("DAARION_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("daarion_bench_{}", uuid::Uuid::new_v4().simple());
        let pool = sqlx::PgPool::connect(&admin)
            .await
            .expect("PostgreSQL reachable (scripts/ensure-postgres.sh)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&pool)
            .await
            .unwrap();
        let pg_url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        println!(
            "# daarion-bridge transaction benchmark ({} cores)",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        );
        run("PostgreSQL", &pg_url, &dir).await;
        run(
            "SQLite",
            &format!("sqlite://{}/bench.db", dir.display()),
            &dir,
        )
        .await;
        let runs_db = format!("{name}_runs");
        sqlx::query(&format!("CREATE DATABASE {runs_db}"))
            .execute(&pool)
            .await
            .unwrap();
        run_overhead(
            &format!("{}/{runs_db}", admin.rsplit_once('/').unwrap().0),
            &dir,
        )
        .await;
        sqlx::query(&format!("DROP DATABASE {runs_db} WITH (FORCE)"))
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&pool)
            .await
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// Shared clock of the run-overhead benchmark: the fake model and the fake homeserver stamp
/// what they see, the driver stamps what it sends; all in this process.
#[derive(Clone, Default)]
struct Stamps {
    model_called: Arc<Mutex<Vec<Instant>>>,
    model_answered: Arc<Mutex<Vec<Instant>>>,
    hs_sent: Arc<Mutex<Vec<Instant>>>,
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

/// The bridge's own overhead around a runtime: from the transaction arriving to the runtime
/// being called, and from the runtime's final chunk to the homeserver receiving the answer.
async fn run_overhead(db_url: &str, dir: &std::path::Path) {
    let stamps = Stamps::default();
    let st = stamps.clone();
    let model = axum::Router::new().fallback(move || {
        let st = st.clone();
        async move {
            st.model_called.lock().unwrap().push(Instant::now());
            let body = json!({ "choices": [{ "message": { "role": "assistant", "content": "Forty-two." } }] });
            // The final (only) chunk leaves now.
            st.model_answered.lock().unwrap().push(Instant::now());
            axum::Json(body)
        }
    });
    let model_url = serve(model).await;
    let st = stamps.clone();
    let hs = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let st = st.clone();
        async move {
            let path = req.uri().path().to_owned();
            if path.contains("/send/m.room.message/") {
                let mut sent = st.hs_sent.lock().unwrap();
                sent.push(Instant::now());
                return axum::Json(json!({ "event_id": format!("$bench{}", sent.len()) }));
            }
            if path.ends_with("/messages") {
                return axum::Json(json!({ "chunk": [], "start": "s" }));
            }
            if path.ends_with("/joined_members") {
                return axum::Json(json!({ "joined": {} }));
            }
            axum::Json(json!({ "user_id": "@x:localhost", "room_id": ROOM, "duration_ms": 1 }))
        }
    });
    let hs_url = serve(hs).await;
    let extra = format!(
        r#"
[[blueprints]]
code = "bench"
runtime = "openai"
[blueprints.openai]
base_url = "{model_url}/v1"
stream = false

[[agents]]
external_id = "agent:bench"
name = "Bench"
blueprint = "bench"
microdao = "microdao:bench"
"#
    );
    let bridge = start_bridge_with(db_url, dir, &hs_url, &extra).await;
    let agent = "@agent_bench:localhost";
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let member = |id: &str, user: &str, membership: &str| {
        json!({ "type": "m.room.member", "state_key": user, "sender": user, "room_id": ROOM,
                "event_id": id, "origin_server_ts": now_ms(), "content": { "membership": membership } })
    };
    let setup = vec![
        member("$oi", "@daarion:localhost", "invite"),
        member("$oj0", "@user0:localhost", "join"),
        member("$oj1", "@user1:localhost", "join"),
        member("$oa", agent, "join"),
    ];
    bridge.put("overhead-setup", &setup).await;
    let n = 120;
    let mut sent_at = Vec::new();
    for i in 0..n {
        let event = json!({
            "type": "m.room.message", "event_id": format!("$q{i}"), "sender": "@user0:localhost", "room_id": ROOM,
            "origin_server_ts": now_ms(),
            "content": { "msgtype": "m.text", "body": "Bench, what is six times seven?", "m.mentions": { "user_ids": [agent] } },
        });
        let before = stamps.hs_sent.lock().unwrap().len();
        sent_at.push(Instant::now());
        bridge.put(&format!("q{i}"), &[event]).await;
        // One run at a time: wait for its answer before the next question.
        for _ in 0..20_000 {
            if stamps.hs_sent.lock().unwrap().len() > before {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let called = stamps.model_called.lock().unwrap().clone();
    let answered = stamps.model_answered.lock().unwrap().clone();
    let delivered = stamps.hs_sent.lock().unwrap().clone();
    assert_eq!(called.len(), n, "every question reached the runtime");
    assert_eq!(delivered.len(), n, "every answer reached the homeserver");
    let to_runtime: Vec<Duration> = called
        .iter()
        .zip(&sent_at)
        .map(|(c, s)| *c - *s)
        .skip(20)
        .collect();
    let to_homeserver: Vec<Duration> = delivered
        .iter()
        .zip(&answered)
        .map(|(d, a)| *d - *a)
        .skip(20)
        .collect();
    let a = stats(to_runtime);
    let b = stats(to_homeserver);
    println!("\n## Run overhead (PostgreSQL, openai runtime, debounce 0)\n");
    println!("| path | runs | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|");
    println!(
        "| transaction PUT sent → runtime called | {} | {:.2} | {:.2} |",
        n - 20,
        a.p50,
        a.p99
    );
    println!(
        "| runtime's final chunk → homeserver send | {} | {:.2} | {:.2} |",
        n - 20,
        b.p50,
        b.p99
    );
}
