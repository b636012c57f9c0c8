//! The events outbox in the benchmark: 50-event transactions with events on versus off (two
//! bridges on the same database, interleaved in blocks), then the publisher against a real NATS
//! JetStream (a `nats-server -js` of its own): catching up on a backlog (events/s), and the lag
//! from commit to publish under steady traffic.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{Db, EVENTS_OFF, Traffic, start_bridge, stats};

/// A NATS server of the benchmark's own, on `port`, storing under `dir`.
struct Nats(Child);

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nats_binary() -> String {
    std::env::var("DAARION_NATS_SERVER").unwrap_or_else(|_| {
        [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nats-server")
        .to_owned()
    })
}

async fn start_nats(port: u16, dir: &std::path::Path) -> Nats {
    let child = Command::new(nats_binary())
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server (scripts/ensure-nats.sh installs it)");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Nats(child)
}

async fn pending(db: &Db) -> i64 {
    db.scalar("SELECT CAST(COUNT(*) AS TEXT) FROM outbox_events WHERE NOT processed")
        .await
        .parse()
        .unwrap()
}

/// Events on versus off, PostgreSQL, 50-event transactions, one at a time.
pub async fn on_versus_off(db_url: &str, dir: &std::path::Path, db: &Db) {
    let on = start_bridge(db_url, dir, "http://127.0.0.1:9", "").await;
    let off = start_bridge(db_url, dir, "http://127.0.0.1:9", EVENTS_OFF).await;
    let (mut t_on, mut t_off) = (Traffic::new("eon"), Traffic::new("eoff"));
    for i in 0..20 {
        on.put(&format!("eon-w{i}"), t_on.body(50)).await;
        off.put(&format!("eoff-w{i}"), t_off.body(50)).await;
    }
    let (mut lat_on, mut lat_off) = (Vec::new(), Vec::new());
    for block in 0..10 {
        for i in 0..40 {
            lat_on.push(on.put(&format!("eon-{block}-{i}"), t_on.body(50)).await);
        }
        for i in 0..40 {
            lat_off.push(off.put(&format!("eoff-{block}-{i}"), t_off.body(50)).await);
        }
    }
    let (a, b) = (stats(lat_on), stats(lat_off));
    println!("\n## Events outbox: 50-event transactions, events on vs off (PostgreSQL)\n");
    println!("| events | txns | p50 ms | p90 | p99 ms |");
    println!("|---|---:|---:|---:|---:|");
    println!("| off | 400 | {:.2} | {:.2} | {:.2} |", b.p50, b.p90, b.p99);
    println!("| on | 400 | {:.2} | {:.2} | {:.2} |", a.p50, a.p90, a.p99);
    println!(
        "\noutbox cost at p50: {:+.1} %",
        (a.p50 / b.p50 - 1.0) * 100.0
    );
    let _ = db;
}

/// The publisher against JetStream: a backlog drained, then steady traffic's commit→publish lag.
pub async fn publisher(db_url: &str, dir: &std::path::Path, db: &Db) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = dir.join("nats");
    std::fs::create_dir_all(&store).unwrap();
    // The bridge starts while NATS is down: a backlog builds up.
    db.exec("UPDATE outbox_events SET processed = true WHERE NOT processed")
        .await;
    let bridge = start_bridge(
        db_url,
        dir,
        "http://127.0.0.1:9",
        &format!("[events]\nnats_url = \"nats://127.0.0.1:{port}\"\npoll_interval = \"50ms\"\n"),
    )
    .await;
    let mut traffic = Traffic::new("pub");
    for i in 0..200 {
        bridge.put(&format!("pub-b{i}"), traffic.body(50)).await;
    }
    let backlog = pending(db).await;
    let nats = start_nats(port, &store).await;
    let started = Instant::now();
    while pending(db).await > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the backlog never drained"
        );
    }
    let drained = started.elapsed().as_secs_f64();
    // Steady: one 50-event transaction at a time, then the lag of each event.
    let mark = db.scalar("SELECT CAST(now() AS TEXT)").await;
    for i in 0..200 {
        bridge.put(&format!("pub-s{i}"), traffic.body(50)).await;
    }
    while pending(db).await > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lags: Vec<Duration> = match db {
        Db::Pg(p) => sqlx::query_scalar::<_, f64>(
            "SELECT CAST(EXTRACT(EPOCH FROM processed_at - created_at) AS float8) FROM outbox_events \
             WHERE created_at > CAST($1 AS timestamptz)",
        )
        .bind(&mark)
        .fetch_all(p)
        .await
        .unwrap(),
        Db::Sqlite(_) => unreachable!("PostgreSQL only"),
    }
    .into_iter()
    .map(|s| Duration::from_secs_f64(s.max(0.0)))
    .collect();
    let n = lags.len();
    let l = stats(lags);
    println!("\n## Events publisher → NATS JetStream (PostgreSQL, 100 channels)\n");
    println!(
        "backlog of {backlog} events drained in {drained:.2} s: {:.0} events/s",
        backlog as f64 / drained
    );
    println!(
        "steady traffic ({n} events): commit → marked published (after the ack) p50 {:.1} ms, p99 {:.1} ms",
        l.p50, l.p99
    );
    drop(nats);
}
