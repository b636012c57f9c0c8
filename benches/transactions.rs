//! Transaction benchmark under realistic traffic: 100 mirrored rooms, 300 senders, ~600-byte
//! events of which about 12 % are edits, 2 % redactions, 10 % notices, 4 % emotes, and many
//! replies and HTML bodies; a history of 1,000,000 messages prefilled before measuring. The
//! bridge (the release binary, a separate process) and the **floor** (a minimal axum + sqlx
//! server — this same executable re-run as a child — that only parses the transaction into typed
//! structs and inserts its events with one batched `INSERT … ON CONFLICT DO NOTHING`) receive the
//! same traffic over HTTP, one transaction at a time (as a homeserver sends), over the same
//! database, interleaved per size. On PostgreSQL a second floor, the **same-rows floor**, writes
//! each message into its room's channel with its sender (the rows the bridge writes), so the
//! schema's own cost of that data is told apart from the bridge's. Prints p50/p90/p99/p99.9,
//! events/s, CPU per event of each process (`/proc`, 10 ms ticks) and the bridge's peak RSS, on
//! PostgreSQL and SQLite; then 16 transactions at a time, events on versus off, the events
//! publisher against NATS JetStream, the bridge's own overhead around an agent runtime, and a
//! question's way to the runtime in an encrypted room with a history.
//!
//! Run: `cargo bench --bench transactions` (PostgreSQL from `DAARION_TEST_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; `scripts/ensure-postgres.sh` starts one).
//! `DAARION_BENCH_HISTORY` overrides the history size (default 1000000); `DAARION_BENCH_ONLY`
//! picks sections (comma-separated: `pg`, `events`, `sqlite`, `overhead`, `crypto`, `e2ee-run`;
//! default all). `crypto` compares encrypted with plaintext 50-event transactions (decryption's
//! cost); `e2ee-run` times a question to the runtime being called in an encrypted room whose 20
//! messages of history the agent decrypts, against a plaintext room, interleaved.
//! `DAARION_BENCH_FILLFACTOR` (PostgreSQL) sets `messages`' fillfactor before the history is
//! written, to compare migration 8's page reserve (90) with none (100) in one build;
//! `DAARION_BENCH_EVENTS=off` runs the realistic-traffic section's bridge without events.
//! `DAARION_BENCH_LOG=warn` (a tracing filter) prints what the in-process bridges log.

use std::{
    collections::VecDeque,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

const HS_TOKEN: &str = "bench_hs_token_0123456789abcdefghijklmnopqrstuvwxyz";
const AS_TOKEN: &str = "bench_as_token_0123456789abcdefghijklmnopqrstuvwxyz";
const ROOM: &str = "!bench:localhost";
const ROOMS: usize = 100;
const SENDERS: usize = 300;
/// Bridge configuration that turns the events outbox off.
const EVENTS_OFF: &str = "[events]\nenabled = false\n";
/// Environment of the floor server child: `DATABASE_URL PORT CHANNEL_ID`.
const FLOOR_ENV: &str = "DAARION_BENCH_FLOOR";

/// A server process under test (the bridge, or the floor).
struct Server {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// utime + stime of the process, in seconds.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        ticks / 100.0
    }

    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<f64>()
            .unwrap()
            / 1024.0
    }

    async fn put(&self, txn: &str, body: Vec<u8>) -> Duration {
        put(&self.http, &self.base, txn, body).await
    }

    async fn ready(self) -> Self {
        for _ in 0..400 {
            if let Ok(r) = self
                .http
                .get(format!("{}/health/ready", self.base))
                .send()
                .await
                && r.status() == 200
            {
                return self;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{} did not become ready", self.base);
    }
}

async fn put(http: &reqwest::Client, base: &str, txn: &str, body: Vec<u8>) -> Duration {
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The bridge's config for the benchmark: listening on `port`, `extra` appended.
fn bridge_toml(port: u16, db_url: &str, hs_url: &str, extra: &str) -> String {
    format!(
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
    )
}

async fn start_bridge(db_url: &str, dir: &std::path::Path, hs_url: &str, extra: &str) -> Server {
    let port = free_port();
    let config = bridge_toml(port, db_url, hs_url, extra);
    let path = dir.join(format!("bench-{port}.toml"));
    std::fs::write(&path, config).unwrap();
    // `DAARION_BENCH_BRIDGE=PATH` runs another build of the bridge (an A/B of two commits with
    // one harness and one floor).
    let bridge = std::env::var("DAARION_BENCH_BRIDGE")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_daarion-bridge").to_owned());
    let child = Command::new(bridge)
        .args(["-c", path.to_str().unwrap(), "run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the bridge binary");
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::new(),
    }
    .ready()
    .await
}

async fn start_floor(db_url: &str, channel: &str) -> Server {
    let port = free_port();
    let child = Command::new(std::env::current_exe().unwrap())
        .env(FLOOR_ENV, format!("{db_url} {port} {channel}"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the floor server");
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::new(),
    }
    .ready()
    .await
}

fn room(i: usize) -> String {
    format!("!bench{}:localhost", i % ROOMS)
}

fn sender(i: usize) -> String {
    format!("@user{}:localhost", i % SENDERS)
}

/// Realistic traffic: per 50 events 6 edits, 1 redaction, 5 notices, 2 emotes; a fifth of the
/// messages are replies and a third carry HTML. Edits and redactions target recent messages of
/// the same sender in the same room.
struct Traffic {
    seq: u64,
    prefix: &'static str,
    recent: VecDeque<(u64, usize)>,
}

const SENTENCE: &str = "the quarterly numbers for the garden microDAO look good; let's review the \
    treasury proposal tomorrow at 10:00, decide on the next grant round, and ask the agents to \
    summarise the open questions from last week's call before we vote on the budget";

impl Traffic {
    fn new(prefix: &'static str) -> Self {
        Self {
            seq: 0,
            prefix,
            recent: VecDeque::new(),
        }
    }

    fn event(&mut self) -> Value {
        self.seq += 1;
        let seq = self.seq;
        let slot = seq % 50;
        let id = format!("${}{seq}", self.prefix);
        let target = self.recent.iter().rev().nth((seq % 7) as usize).copied();
        let (kind, content, who) = match (slot, target) {
            (3 | 11 | 19 | 27 | 35 | 43, Some((t, who))) => (
                "m.room.message",
                json!({
                    "msgtype": "m.text", "body": format!("* Edited {t}: {SENTENCE}"),
                    "m.new_content": { "msgtype": "m.text", "body": format!("Edited {t}: {SENTENCE}") },
                    "m.relates_to": { "rel_type": "m.replace", "event_id": format!("${}{t}", self.prefix) },
                }),
                who,
            ),
            (47, Some((t, who))) => (
                "m.room.redaction",
                json!({ "redacts": format!("${}{t}", self.prefix), "reason": "oops" }),
                who,
            ),
            (5 | 15 | 25 | 30 | 45, _) => (
                "m.room.message",
                json!({ "msgtype": "m.notice", "body": format!("Notice {seq}: {SENTENCE}") }),
                seq as usize,
            ),
            (7 | 33, _) => (
                "m.room.message",
                json!({ "msgtype": "m.emote", "body": format!("agrees with {seq}: {SENTENCE}") }),
                seq as usize,
            ),
            _ => {
                let mut c =
                    json!({ "msgtype": "m.text", "body": format!("Message {seq}: {SENTENCE}") });
                if seq.is_multiple_of(3) {
                    c["format"] = json!("org.matrix.custom.html");
                    c["formatted_body"] = json!(format!(
                        "<p>Message <b>{seq}</b>: the quarterly numbers look <i>good</i>; let's review the <a href=\"https://example.org\">treasury proposal</a></p>"
                    ));
                }
                if seq.is_multiple_of(5)
                    && let Some((t, _)) = target
                {
                    c["m.relates_to"] =
                        json!({ "m.in_reply_to": { "event_id": format!("${}{t}", self.prefix) } });
                }
                ("m.room.message", c, seq as usize)
            }
        };
        if content.get("m.new_content").is_none() && kind == "m.room.message" {
            self.recent.push_back((seq, who));
            if self.recent.len() > 64 {
                self.recent.pop_front();
            }
        }
        let mut e = json!({
            "type": kind, "event_id": id, "sender": sender(who), "room_id": room(who),
            "origin_server_ts": 1_700_000_000_000u64 + seq, "content": content,
            "unsigned": { "age": 12 },
        });
        if kind == "m.room.redaction" {
            e["redacts"] = e["content"]["redacts"].clone();
        }
        e
    }

    fn body(&mut self, n: usize) -> Vec<u8> {
        let events: Vec<Value> = (0..n).map(|_| self.event()).collect();
        serde_json::to_vec(&json!({ "events": events })).unwrap()
    }
}

struct Stats {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0;
    Stats {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
    }
}

enum Db {
    Pg(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

impl Db {
    async fn exec(&self, sql: &str) {
        match self {
            Db::Pg(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
            Db::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn scalar(&self, sql: &str) -> String {
        match self {
            Db::Pg(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
            Db::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        }
    }
}

/// `history` messages spread over the mirrored channels and senders, as other traffic left
/// them, then fresh statistics (as autovacuum would have them).
async fn prefill(db: &Db, history: u64) {
    let started = Instant::now();
    match db {
        Db::Pg(_) => {
            db.exec(&format!(
                "INSERT INTO messages (id, channel_id, matrix_event_id, sender_user_id, sender_type, content_preview, created_at) \
                 SELECT gen_random_uuid(), c.ids[1 + g % array_length(c.ids, 1)], '$hist' || g, u.ids[1 + g % array_length(u.ids, 1)], \
                 'human', 'history message ' || g || ': ' || repeat('x', 80), now() - make_interval(secs => g) \
                 FROM generate_series(1, {history}) g, \
                 (SELECT array_agg(id) AS ids FROM channels) c, (SELECT array_agg(id) AS ids FROM users) u"
            ))
            .await;
            db.exec("VACUUM ANALYZE messages").await;
        }
        Db::Sqlite(_) => {
            db.exec(&format!(
                "INSERT INTO messages (id, channel_id, matrix_event_id, sender_user_id, sender_type, content_preview, created_at) \
                 WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {history}) \
                 SELECT lower(hex(randomblob(16))), c.id, '$hist' || n, NULL, 'human', 'history message ' || n, \
                 strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || n || ' seconds') FROM g \
                 JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS k FROM channels) c \
                 ON c.k = g.n % (SELECT COUNT(*) FROM channels)"
            ))
            .await;
            db.exec("ANALYZE").await;
        }
    }
    println!(
        "(history of {history} messages prefilled in {:.0} s)",
        started.elapsed().as_secs_f64()
    );
}

async fn run(name: &str, db_url: &str, dir: &std::path::Path, history: u64) {
    let hs = overhead::quiet_homeserver().await;
    // `DAARION_BENCH_EVENTS=off` runs this section's bridge without the events outbox, to set
    // every size against the floor without the outbox's rows.
    let events_off = std::env::var("DAARION_BENCH_EVENTS").is_ok_and(|v| v == "off");
    let extra = if events_off { EVENTS_OFF } else { "" };
    let bridge = start_bridge(db_url, dir, &hs, extra).await;
    // Set up: the bot is invited to every room (mirrored), the senders join theirs.
    let mut setup = Vec::new();
    for r in 0..ROOMS {
        setup.push(json!({
            "type": "m.room.member", "state_key": "@daarion:localhost", "sender": sender(r),
            "room_id": room(r), "event_id": format!("$invite{r}"), "origin_server_ts": 1_700_000_000_000u64,
            "content": { "membership": "invite" },
        }));
    }
    for i in 0..SENDERS {
        setup.push(json!({
            "type": "m.room.member", "state_key": sender(i), "sender": sender(i), "room_id": room(i),
            "event_id": format!("$join{i}"), "origin_server_ts": 1_700_000_000_000u64,
            "content": { "membership": "join" },
        }));
    }
    bridge
        .put(
            "setup",
            serde_json::to_vec(&json!({ "events": setup })).unwrap(),
        )
        .await;
    let db = if db_url.starts_with("postgres") {
        Db::Pg(sqlx::PgPool::connect(db_url).await.unwrap())
    } else {
        Db::Sqlite(sqlx::SqlitePool::connect(db_url).await.unwrap())
    };
    // A/B of migration 8 in one binary: `DAARION_BENCH_FILLFACTOR=100` undoes its page
    // reserve before the history is written.
    if let (Db::Pg(_), Ok(ff)) = (&db, std::env::var("DAARION_BENCH_FILLFACTOR")) {
        let ff: u8 = ff.parse().expect("DAARION_BENCH_FILLFACTOR is 10..=100");
        db.exec(&format!("ALTER TABLE messages SET (fillfactor = {ff})"))
            .await;
        println!("(messages fillfactor set to {ff} for this run)");
    }
    prefill(&db, history).await;
    // The floor writes into a channel of its own, in the same table.
    db.exec(
        "INSERT INTO channels (id, slug, name, microdao_id, matrix_room_id, visibility) \
         SELECT '00000000-0000-4000-8000-00000000f100', 'floor', 'Floor', microdao_id, '!floor:localhost', 'private' \
         FROM channels LIMIT 1",
    )
    .await;
    let floor = start_floor(db_url, "00000000-0000-4000-8000-00000000f100").await;
    // The same-rows floor (PostgreSQL): each message in its room's channel with its sender, as
    // the bridge writes them; it loads the bridge's channels and users once, now.
    let rows_floor = match &db {
        Db::Pg(_) => Some(start_floor(db_url, "00000000-0000-4000-8000-00000000f100 rows").await),
        Db::Sqlite(_) => None,
    };

    println!(
        "\n## {name}, realistic traffic, {history} messages of history{}\n",
        if events_off { ", events off" } else { "" }
    );
    println!(
        "| events/txn | txns | bridge p50 | p90 | p99 | p99.9 ms | floor p50 | p90 | p99 | p99.9 ms | p50 ×floor | p99 ×floor | bridge µs CPU/event | floor µs CPU/event | bridge events/s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut same_rows = Vec::new();
    let mut traffic = Traffic::new("ev");
    let mut floor_traffic = Traffic::new("fl");
    let mut rows_traffic = Traffic::new("sr");
    let mut txn = 0u64;
    for (size, count) in [(1usize, 1000usize), (50, 400), (100, 200)] {
        for _ in 0..20 {
            txn += 1;
            bridge.put(&format!("w{txn}"), traffic.body(size)).await;
            floor
                .put(&format!("w{txn}"), floor_traffic.body(size))
                .await;
            if let Some(rows) = &rows_floor {
                rows.put(&format!("w{txn}"), rows_traffic.body(size)).await;
            }
        }
        let mut lat = Vec::with_capacity(count);
        let mut floor_lat = Vec::with_capacity(count);
        let mut rows_lat = Vec::with_capacity(count);
        let (mut bridge_cpu, mut floor_cpu, mut rows_cpu, mut bridge_wall) = (0.0, 0.0, 0.0, 0.0);
        // Interleaved in blocks, so both see the same table size and machine state.
        for block in 0..10 {
            let n = count / 10;
            let bodies: Vec<Vec<u8>> = (0..n).map(|_| traffic.body(size)).collect();
            let cpu0 = bridge.cpu_seconds();
            let started = Instant::now();
            for (i, body) in bodies.into_iter().enumerate() {
                lat.push(bridge.put(&format!("t{txn}-{block}-{i}"), body).await);
            }
            bridge_wall += started.elapsed().as_secs_f64();
            bridge_cpu += bridge.cpu_seconds() - cpu0;
            let bodies: Vec<Vec<u8>> = (0..n).map(|_| floor_traffic.body(size)).collect();
            let cpu0 = floor.cpu_seconds();
            for (i, body) in bodies.into_iter().enumerate() {
                floor_lat.push(floor.put(&format!("f{txn}-{block}-{i}"), body).await);
            }
            floor_cpu += floor.cpu_seconds() - cpu0;
            if let Some(rows) = &rows_floor {
                let bodies: Vec<Vec<u8>> = (0..n).map(|_| rows_traffic.body(size)).collect();
                let cpu0 = rows.cpu_seconds();
                for (i, body) in bodies.into_iter().enumerate() {
                    rows_lat.push(rows.put(&format!("r{txn}-{block}-{i}"), body).await);
                }
                rows_cpu += rows.cpu_seconds() - cpu0;
            }
        }
        txn += 1;
        let events = (count * size) as f64;
        let (s, f) = (stats(lat), stats(floor_lat));
        println!(
            "| {size} | {count} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.0} |",
            s.p50,
            s.p90,
            s.p99,
            s.p999,
            f.p50,
            f.p90,
            f.p99,
            f.p999,
            s.p50 / f.p50,
            s.p99 / f.p99,
            bridge_cpu / events * 1e6,
            floor_cpu / events * 1e6,
            events / bridge_wall
        );
        if rows_floor.is_some() {
            let r = stats(rows_lat);
            same_rows.push(format!(
                "| {size} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} |",
                r.p50,
                r.p99,
                s.p50 / r.p50,
                s.p99 / r.p99,
                f.p50 / r.p50,
                rows_cpu / events * 1e6
            ));
        }
    }
    if !same_rows.is_empty() {
        println!(
            "\nSame-rows floor (each message in its room's channel, with its sender), same run:\n"
        );
        println!(
            "| events/txn | same-rows floor p50 | p99 ms | bridge p50 ×same-rows | p99 ×same-rows | issue floor p50 ×same-rows | same-rows µs CPU/event |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        for line in same_rows {
            println!("{line}");
        }
    }
    if let Db::Pg(_) = &db {
        // Edits and redactions are the only updates of `messages` here (the floors only
        // insert). A backend flushes its table counts when idle for 10 s at most, hence the wait.
        tokio::time::sleep(Duration::from_secs(11)).await;
        println!(
            "\nmessages updated in place (edits, redactions): {}",
            db.scalar(
                "SELECT n_tup_upd || ' updates, ' || n_tup_hot_upd || ' HOT (' || \
                 COALESCE(round(100.0 * n_tup_hot_upd / NULLIF(n_tup_upd, 0)), 0) || ' %)' \
                 FROM pg_stat_user_tables WHERE relname = 'messages'"
            )
            .await
        );
    }
    // 16 transactions at a time, 50 events each (throughput; homeservers send one at a time).
    let (size, per_task) = (50usize, 25usize);
    let cpu0 = bridge.cpu_seconds();
    let started = Instant::now();
    let bodies: Vec<Vec<Vec<u8>>> = (0..16)
        .map(|_| (0..per_task).map(|_| traffic.body(size)).collect())
        .collect();
    let tasks: Vec<_> = bodies
        .into_iter()
        .enumerate()
        .map(|(task, bodies)| {
            let (http, base) = (bridge.http.clone(), bridge.base.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                for (i, body) in bodies.into_iter().enumerate() {
                    lat.push(put(&http, &base, &format!("c{task}-{i}"), body).await);
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let wall = started.elapsed().as_secs_f64();
    let events = (16 * per_task * size) as f64;
    let s = stats(lat);
    println!(
        "\n16 at a time, 50 events: p50 {:.2} ms, p99 {:.2} ms, {:.0} events/s, {:.1} µs CPU/event",
        s.p50,
        s.p99,
        events / wall,
        (bridge.cpu_seconds() - cpu0) / events * 1e6
    );
    println!(
        "bridge peak RSS: {:.1} MiB; messages now: {}",
        bridge.peak_rss_mib(),
        db.scalar("SELECT CAST(COUNT(*) AS TEXT) FROM messages")
            .await
    );
}

#[path = "../tests/common/e2ee.rs"]
#[allow(dead_code)]
mod e2ee;
#[path = "transactions/encrypted.rs"]
mod encrypted;
#[path = "transactions/events.rs"]
mod events;
#[path = "transactions/floor.rs"]
mod floor;
#[path = "transactions/history.rs"]
mod history;
#[path = "transactions/overhead.rs"]
mod overhead;

fn main() {
    if let Ok(spec) = std::env::var(FLOOR_ENV) {
        floor::serve(spec);
        return;
    }
    // `cargo test --benches` builds and runs benches as tests: nothing to measure then.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let history: u64 = std::env::var("DAARION_BENCH_HISTORY")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(1_000_000);
    // `DAARION_BENCH_LOG=warn` (a tracing filter) shows what the in-process bridges (`crypto`,
    // `e2ee-run`) log: a fake homeserver answer the bridge cannot take shows up there.
    if let Ok(filter) = std::env::var("DAARION_BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
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
        let base = admin.rsplit_once('/').unwrap().0.to_owned();
        println!(
            "# daarion-bridge transaction benchmark ({} cores)",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        );
        let only = std::env::var("DAARION_BENCH_ONLY").unwrap_or_default();
        let wanted =
            |section: &str| only.is_empty() || only.split(',').any(|s| s.trim() == section);
        if wanted("pg") || wanted("events") {
            run("PostgreSQL", &format!("{base}/{name}"), &dir, history).await;
        }
        if wanted("events") {
            let url = format!("{base}/{name}");
            let db = Db::Pg(sqlx::PgPool::connect(&url).await.unwrap());
            events::on_versus_off(&url, &dir, &db).await;
            events::publisher(&url, &dir, &db).await;
        }
        if wanted("sqlite") {
            run(
                "SQLite",
                &format!("sqlite://{}/bench.db", dir.display()),
                &dir,
                history,
            )
            .await;
        }
        let runs_db = format!("{name}_runs");
        sqlx::query(&format!("CREATE DATABASE {runs_db}"))
            .execute(&pool)
            .await
            .unwrap();
        if wanted("overhead") {
            overhead::run_overhead(&format!("{base}/{runs_db}"), &dir).await;
        }
        if wanted("crypto") {
            let crypto_db = format!("{name}_crypto");
            sqlx::query(&format!("CREATE DATABASE {crypto_db}"))
                .execute(&pool)
                .await
                .unwrap();
            encrypted::decryption(&format!("{base}/{crypto_db}")).await;
            sqlx::query(&format!("DROP DATABASE {crypto_db} WITH (FORCE)"))
                .execute(&pool)
                .await
                .unwrap();
        }
        if wanted("e2ee-run") {
            let e2ee_db = format!("{name}_e2ee_run");
            sqlx::query(&format!("CREATE DATABASE {e2ee_db}"))
                .execute(&pool)
                .await
                .unwrap();
            history::run_history(&format!("{base}/{e2ee_db}")).await;
            sqlx::query(&format!("DROP DATABASE {e2ee_db} WITH (FORCE)"))
                .execute(&pool)
                .await
                .unwrap();
        }
        for db in [runs_db, name] {
            sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
                .execute(&pool)
                .await
                .unwrap();
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}
