//! Two bridge **processes** on one PostgreSQL database behind a real haproxy (issue #27). The
//! homeserver reaches the bridge through haproxy on the registration's port ([`bridge_port`]),
//! which sends each request to the replica whose `GET /health/ready` answers 200: the leader.
//! Each replica is the built `daarion-bridge run` binary with a config file of its own (its
//! listen port, `[leader] replica = "a"` or `"b"`, a short lease) and logs to a file under
//! `target/e2e/replicas/<run>/`. Every process started here is killed when its handle drops,
//! on a panic too, and a failing test prints the tails of their logs.
//!
//! Shared by the replica e2e tests (`replicas.rs`) and the fail-over soak
//! (`examples/soak_replicas.rs`, through `#[path]`).

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use daarion_bridge::db::Store;
use serde_json::Value;

use crate::harness::*;

/// The lease of the test replicas: a standby takes over this long after the leader stopped
/// renewing.
pub(crate) const TTL: Duration = Duration::from_secs(3);
/// How often the leader renews its lease.
pub(crate) const RENEW: &str = "500ms";
/// The replicas' names (`[leader] replica`), by index.
pub(crate) const NAMES: [&str; 2] = ["a", "b"];

/// The bridge binary: the one cargo built for this test target, or `DAARION_BRIDGE_BIN` (the
/// soak, an example, has no `CARGO_BIN_EXE_*`; `scripts/soak-replicas.sh` sets it).
pub(crate) fn bridge_bin() -> PathBuf {
    if let Ok(path) = std::env::var("DAARION_BRIDGE_BIN") {
        return path.into();
    }
    match option_env!("CARGO_BIN_EXE_daarion-bridge") {
        Some(path) => path.into(),
        None => panic!("set DAARION_BRIDGE_BIN to the daarion-bridge binary"),
    }
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `signal` (`KILL`, `STOP`, `CONT`) to `pid`.
pub(crate) fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// The last `lines` lines of a log file.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// An answer to a GET on a replica (or haproxy): its status and body; `None` when nothing
/// answered within a second (down, or paused).
pub(crate) async fn probe(port: u16, path: &str) -> Option<(u16, String)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let r = http
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

/// One replica: a `daarion-bridge run` process on its own port.
pub(crate) struct Replica {
    /// Its `[leader] replica` name.
    pub(crate) name: &'static str,
    /// The port it listens on (haproxy's backend).
    pub(crate) port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn spawn(&mut self) {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        writeln!(log, "==== harness: starting replica {} ====", self.name).unwrap();
        let child = Command::new(bridge_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .current_dir(self.config.parent().unwrap())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{} runs: {e}", bridge_bin().display()));
        self.child = Some(child);
    }

    /// Its process id (panics when it is not running).
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("the replica runs").id()
    }

    /// `kill -9`, and reaps it.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again (after [`Replica::kill9`]) with the same config, port and log.
    pub(crate) fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// `GET /health/ready`: `Some(200)` on the leader, `Some(503)` on a standby, `None` when it
    /// does not answer.
    pub(crate) async fn ready(&self) -> Option<u16> {
        probe(self.port, "/health/ready").await.map(|(s, _)| s)
    }

    /// The readiness body (`role`, …).
    pub(crate) async fn ready_body(&self) -> Value {
        let (_, body) = probe(self.port, "/health/ready")
            .await
            .unwrap_or_else(|| panic!("replica {} answers", self.name));
        serde_json::from_str(&body).unwrap_or(Value::Null)
    }

    /// The value of an unlabelled metric on its `/metrics`.
    pub(crate) async fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = probe(self.port, "/metrics").await?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Its log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        // SIGKILL ends a paused (SIGSTOP) process too.
        self.kill9();
    }
}

/// haproxy on the registration's port, in front of the replicas.
pub(crate) struct Haproxy {
    child: Child,
    log: PathBuf,
}

impl Haproxy {
    fn start(dir: &Path, backends: &[(&str, u16)]) -> Self {
        let servers: String = backends
            .iter()
            .map(|(name, port)| format!("    server {name} 127.0.0.1:{port} check\n"))
            .collect();
        // Health checks every 500 ms, one failure takes a server out and one success puts it
        // back; a server taken out has its connections cut (a paused replica's included), so
        // the homeserver sees the failure and retries the transaction on the leader.
        let config = format!(
            "global\n    log stdout format raw local0 info\n    maxconn 512\n\
             defaults\n    mode http\n    log global\n    option httplog\n    option dontlognull\n\
             \x20   timeout connect 500ms\n    timeout client 30s\n    timeout server 30s\n\
             \x20   timeout check 1s\n    retries 2\n    option redispatch\n\
             frontend bridge\n    bind 127.0.0.1:{port}\n    default_backend replicas\n\
             backend replicas\n    option httpchk GET /health/ready\n\
             \x20   http-check expect status 200\n\
             \x20   default-server inter 500ms fall 1 rise 1 on-marked-down shutdown-sessions\n\
             {servers}",
            port = bridge_port()
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let log = dir.join("haproxy.log");
        let out = File::create(&log).unwrap();
        let bin = ["/usr/sbin/haproxy", "haproxy"]
            .into_iter()
            .find(|b| !b.starts_with('/') || Path::new(b).exists())
            .unwrap();
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("haproxy runs (scripts/ensure-haproxy.sh installs it)");
        Haproxy { child, log }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asks the homeserver to ping the bridge (`/_matrix/client/v1/appservice/{id}/ping`, as the
/// appservice): Synapse then retries at once what earlier tests left undelivered, instead of
/// after the back-off it grew while no bridge answered between tests. (The leader pings by
/// itself when it takes over; this is for the start of a test only.)
pub(crate) async fn kick_homeserver() {
    let config = config("sqlite://unused");
    let r = reqwest::Client::new()
        .post(format!(
            "{}/_matrix/client/v1/appservice/{}/ping",
            homeserver(),
            config.appservice.id
        ))
        .bearer_auth(&config.appservice.as_token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("the homeserver answers");
    assert!(r.status().is_success(), "ping: {}", r.status());
}

/// Two replicas on one fresh PostgreSQL database, haproxy in front.
pub(crate) struct Replicas {
    /// Replica `a` and replica `b`.
    pub(crate) replicas: [Replica; 2],
    /// The test's own connection to the shared database (for assertions and keys).
    pub(crate) store: Store,
    haproxy: Haproxy,
    dir: PathBuf,
}

/// The config of replica `name`: the e2e config, listening on `port`, on `db_url`, with a short
/// lease.
fn replica_config(db_url: &str, name: &str, port: u16) -> String {
    let text = std::fs::read_to_string(repo().join("tests/e2e/config.toml")).unwrap();
    let mut text = text;
    for (from, to) in [
        (
            "listen = \"127.0.0.1:29334\"".to_owned(),
            format!("listen = \"127.0.0.1:{port}\""),
        ),
        (
            "url = \"http://127.0.0.1:29334\"".to_owned(),
            format!("url = \"http://127.0.0.1:{}\"", bridge_port()),
        ),
        (
            "url = \"http://127.0.0.1:8008\"".to_owned(),
            format!("url = \"{}\"", homeserver()),
        ),
        (
            "url = \"sqlite://target/e2e/bridge.db\"".to_owned(),
            format!("url = \"{db_url}\""),
        ),
    ] {
        assert!(text.contains(&from), "tests/e2e/config.toml has {from}");
        text = text.replace(&from, &to);
    }
    let ttl = TTL.as_secs();
    text.push_str(&format!(
        "\n[leader]\nreplica = \"{name}\"\nttl = \"{ttl}s\"\nrenew_interval = \"{RENEW}\"\n"
    ));
    text
}

impl Replicas {
    /// Synapse up; both replicas started at once over `db_url` and haproxy in front of them;
    /// returns once one of them leads and haproxy routes to it.
    pub(crate) async fn start(db_url: &str) -> Self {
        ensure_synapse();
        let dir = repo().join("target/e2e/replicas").join(format!(
            "{}-{}",
            chrono_stamp(),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let replicas = NAMES.map(|name| {
            let port = free_port();
            let config = dir.join(format!("{name}.toml"));
            let text = replica_config(db_url, name, port);
            daarion_bridge::config::Config::from_toml_str(&text)
                .and_then(|c| c.validate().map(|_| c))
                .unwrap_or_else(|e| panic!("replica {name}'s config: {e:#}"));
            std::fs::write(&config, text).unwrap();
            Replica {
                name,
                port,
                config,
                log: dir.join(format!("{name}.log")),
                child: None,
            }
        });
        let mut this = Replicas {
            haproxy: Haproxy::start(
                &dir,
                &[
                    (replicas[0].name, replicas[0].port),
                    (replicas[1].name, replicas[1].port),
                ],
            ),
            replicas,
            store: Store::connect(db_url, 4).await.expect("the test database"),
            dir,
        };
        // haproxy counts a server up until its first check fails: with both replicas not yet
        // started, both are down before either exists, and each comes up only by answering
        // /health/ready 200 (a standby never does).
        for _ in 0..200 {
            if probe(bridge_port(), "/health/ready").await.map(|(s, _)| s) == Some(503) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            probe(bridge_port(), "/health/ready").await.map(|(s, _)| s),
            Some(503),
            "haproxy serves, with no replica up"
        );
        for r in &mut this.replicas {
            r.spawn();
        }
        println!(
            "replicas a (:{}) and b (:{}) behind haproxy :{}; logs in {}",
            this.replicas[0].port,
            this.replicas[1].port,
            bridge_port(),
            this.dir.display()
        );
        this.wait_leader(Duration::from_secs(60)).await;
        this.wait_routed(Duration::from_secs(30)).await;
        kick_homeserver().await;
        this
    }

    /// Both replicas' `/health/ready` statuses (`None`: no answer).
    pub(crate) async fn statuses(&self) -> [Option<u16>; 2] {
        let (a, b) = tokio::join!(self.replicas[0].ready(), self.replicas[1].ready());
        [a, b]
    }

    /// Waits until exactly one replica is ready, and returns its index. Two ready at once is a
    /// failure at once.
    pub(crate) async fn wait_leader(&self, within: Duration) -> usize {
        let start = Instant::now();
        loop {
            let statuses = self.statuses().await;
            let ready: Vec<usize> = (0..2).filter(|&i| statuses[i] == Some(200)).collect();
            assert!(ready.len() < 2, "two replicas ready at once: {statuses:?}");
            if let [leader] = ready[..] {
                return leader;
            }
            assert!(
                start.elapsed() < within,
                "no replica became ready within {within:?}: {statuses:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until replica `i` answers `/health/ready` 200; returns how long that took.
    pub(crate) async fn wait_ready(&self, i: usize, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if self.replicas[i].ready().await == Some(200) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "replica {} not ready within {within:?}",
                self.replicas[i].name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until haproxy routes `/health/ready` to a ready replica; returns how long it took.
    pub(crate) async fn wait_routed(&self, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if probe(bridge_port(), "/health/ready").await.map(|(s, _)| s) == Some(200) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "haproxy routes to no ready replica within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Where this run's configs and logs are (the soak reports it).
    #[allow(dead_code)]
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for r in &self.replicas {
                eprintln!(
                    "---- replica {} (:{}) log tail ({}):\n{}",
                    r.name,
                    r.port,
                    r.log.display(),
                    tail(&r.log, 60)
                );
            }
            eprintln!(
                "---- haproxy log tail ({}):\n{}",
                self.haproxy.log.display(),
                tail(&self.haproxy.log, 30)
            );
        }
    }
}

/// A sortable stamp for run directories (seconds since the epoch).
fn chrono_stamp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
