//! Test harness: a bridge on an ephemeral port (in-process or as a child process) over a fresh
//! database (SQLite file or a new PostgreSQL database per test), talking to the fake homeserver
//! of `fake_hs`, with helpers to query the database and build events.

use std::{net::SocketAddr, time::Duration};

use daarion_bridge::{
    Bridge,
    config::Config,
    db::{Pool, Store},
};
use serde_json::{Value, json};
use sqlx::Row;

pub use crate::fake_hs::FakeHs;

pub const HS_TOKEN: &str = "hs_test_token_0123456789abcdefghijklmnopqrstuv";
pub const AS_TOKEN: &str = "as_test_token_0123456789abcdefghijklmnopqrstuv";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub hs: FakeHs,
    pub store: Store,
    /// The bridge's puppets (`None` when the bridge runs as a separate process).
    pub puppets: Option<std::sync::Arc<daarion_bridge::puppet::Puppets>>,
    /// The bridge's agent registry (`None` when the bridge runs as a separate process).
    pub registry: Option<std::sync::Arc<daarion_bridge::bridge::agents::AgentRegistry>>,
    /// The agents' crypto engines (in-process bridges with encryption on).
    pub crypto: Option<std::sync::Arc<daarion_bridge::crypto::Crypto>>,
    /// The mirror (in-process bridges).
    pub mirror: Option<std::sync::Arc<daarion_bridge::bridge::mirror::Mirror>>,
    pub config: Config,
    pub db_url: String,
    pub hs_url: String,
    pub backend: Backend,
    pg_db: Option<String>,
    _dir: Option<TempDir>,
    pub toml: String,
    /// The bridge as a child process (the release-like binary), when started so.
    pub process: Option<std::process::Child>,
    /// The in-process bridge: its shutdown trigger and task (a restart stops it first, as an
    /// operator's restart does: one bridge per database leads).
    running: std::sync::Mutex<Option<InProcess>>,
}

type InProcess = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(child) = &mut self.process {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn pg_admin_url() -> String {
    std::env::var("DAARION_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_db_name(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("postgres url has a path");
    format!("{base}/{db}")
}

pub fn base_config(db_url: &str, hs_url: &str) -> String {
    format!(
        r#"
[homeserver]
url = "{hs_url}"
server_name = "localhost"

[appservice]
id = "daarion-test"
listen = "127.0.0.1:0"
url = "http://127.0.0.1:0"
as_token = "{AS_TOKEN}"
hs_token = "{HS_TOKEN}"
bot_localpart = "daarion"
agent_prefix = "agent_"
max_body_bytes = 65536

[database]
url = "{db_url}"
max_connections = 4

[leader]
# Short, so a killed bridge's successor takes over quickly.
ttl = "3s"
renew_interval = "1s"

[bridge]
preview_chars = 40
default_microdao = "microdao:demo"

[[microdaos]]
external_id = "microdao:demo"
name = "Demo"

[[microdaos]]
external_id = "microdao:7"
name = "Quantum Garden"

[[blueprints]]
code = "echo"
model = "echo"

[[agents]]
external_id = "agent:sofia"
name = "Sofia"
blueprint = "echo"
microdao = "microdao:demo"

[[agents]]
external_id = "agent:free"
name = "Free"
"#
    )
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |c| c).await
    }

    /// Spawns with a config edited by `tweak` (on the TOML text).
    pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(String) -> String) -> Self {
        let prepared = Self::prepare(backend, tweak).await;
        let mut app = Self::start(
            backend,
            &prepared.toml,
            prepared.hs.clone(),
            &prepared.hs_url,
        )
        .await;
        app.db_url = prepared.db_url.clone();
        app.pg_db = prepared.pg_db.clone();
        app._dir = prepared.take_dir();
        app
    }

    /// A fresh database, a fake homeserver and a config, without a bridge: start one with
    /// [`TestApp::spawn_process`].
    pub async fn prepare(backend: Backend, tweak: impl FnOnce(String) -> String) -> Self {
        let (hs, hs_url) = FakeHs::spawn().await;
        let (db_url, pg_db, dir) = match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir()
                    .join(format!("daarion-test-{}", uuid::Uuid::new_v4().simple()));
                std::fs::create_dir_all(&dir).unwrap();
                (
                    format!("sqlite://{}/bridge.db", dir.display()),
                    None,
                    Some(TempDir(dir)),
                )
            }
            Backend::Postgres => {
                let admin = pg_admin_url();
                let name = format!("daarion_test_{}", uuid::Uuid::new_v4().simple());
                let pool = sqlx::PgPool::connect(&admin).await.unwrap_or_else(|e| {
                    panic!("PostgreSQL at {admin} is not reachable ({e}); run scripts/test.sh, which starts it")
                });
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                (with_db_name(&admin, &name), Some(name), None)
            }
        };
        let toml = tweak(base_config(&db_url, &hs_url));
        let config = Config::from_toml_str(&toml).expect("test config parses");
        let store = Store::connect(&db_url, 2).await.unwrap();
        store.migrate().await.unwrap();
        TestApp {
            addr: "127.0.0.1:9".parse().unwrap(),
            http: reqwest::Client::new(),
            hs,
            store,
            puppets: None,
            registry: None,
            crypto: None,
            mirror: None,
            config,
            db_url,
            hs_url,
            backend,
            pg_db,
            _dir: dir,
            toml,
            process: None,
            running: Default::default(),
        }
    }

    fn take_dir(mut self) -> Option<TempDir> {
        self._dir.take()
    }

    async fn start(backend: Backend, toml: &str, hs: FakeHs, hs_url: &str) -> Self {
        let config = Config::from_toml_str(toml).expect("test config parses");
        config.validate().expect("test config is valid");
        let db_url = config.database.url.clone();
        let bridge = Bridge::build(config.clone()).await.expect("bridge builds");
        let store = bridge.store.clone();
        let puppets = bridge.puppets.clone();
        let registry = bridge.registry.clone();
        let crypto = bridge.crypto.clone();
        let mirror = bridge.mirror.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            bridge
                .run(listener, async move {
                    // A dropped sender (the test ended) is no shutdown: the runtime ends it.
                    if stopped.await.is_err() {
                        std::future::pending::<()>().await;
                    }
                })
                .await
                .unwrap()
        });
        TestApp {
            addr,
            http: reqwest::Client::new(),
            hs,
            store,
            puppets: Some(puppets),
            registry: Some(registry),
            crypto,
            mirror: Some(mirror),
            config,
            db_url,
            hs_url: hs_url.to_owned(),
            backend,
            pg_db: None,
            _dir: None,
            toml: toml.to_owned(),
            process: None,
            running: std::sync::Mutex::new(Some((stop, task))),
        }
    }

    /// Starts the bridge binary as a child process over the same database and homeserver (to
    /// kill it for real); returns a handle whose `addr` is the child's listener.
    pub async fn spawn_process(&self, tweak: impl FnOnce(String) -> String) -> TestApp {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let toml = tweak(self.toml.replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        ));
        let dir =
            std::env::temp_dir().join(format!("daarion-proc-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(&config, &toml).unwrap();
        let log = std::fs::File::create(dir.join("bridge.log")).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_daarion-bridge"))
            .arg("-c")
            .arg(&config)
            .arg("run")
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the bridge binary starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let http = reqwest::Client::new();
        for _ in 0..300 {
            if http
                .get(format!("http://{addr}/health/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        TestApp {
            addr,
            http,
            hs: self.hs.clone(),
            store: Store::connect(&self.db_url, 2).await.unwrap(),
            puppets: None,
            registry: None,
            crypto: None,
            mirror: None,
            config: Config::from_toml_str(&toml).unwrap(),
            db_url: self.db_url.clone(),
            hs_url: self.hs_url.clone(),
            backend: self.backend,
            pg_db: None,
            _dir: Some(TempDir(dir)),
            toml,
            process: Some(child),
            running: Default::default(),
        }
    }

    /// SIGKILL to the child process: it dies mid-whatever, as in a crash.
    pub fn kill9(&mut self) {
        let child = self.process.as_mut().expect("a child process");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM to the child process, then its exit status within `timeout` (`None` if it did
    /// not exit, after which it is killed).
    pub async fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.process.as_mut().expect("a child process");
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// The child process's log.
    pub fn process_log(&self) -> String {
        self._dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.0.join("bridge.log")).ok())
            .unwrap_or_default()
    }

    /// One idle sweep at `at` (as the upkeep task runs it), counting into `metrics`.
    pub async fn sweep(
        &self,
        metrics: &std::sync::Arc<daarion_bridge::metrics::Metrics>,
        at: daarion_bridge::model::Ts,
    ) -> u64 {
        daarion_bridge::bridge::upkeep::Upkeep::new(
            self.store.clone(),
            self.registry.clone().expect("an in-process bridge"),
            metrics.clone(),
            self.config.bridge.session_idle_after,
            daarion_bridge::bridge::upkeep::Retention::from_config(&self.config),
        )
        .sweep(at)
        .await
        .unwrap()
    }

    /// Reloads the agents and brings every puppet profile in line (what the profile watcher
    /// does); returns how many profiles changed.
    pub async fn sync_profiles(&self) -> usize {
        let registry = self.registry.as_ref().expect("an in-process bridge");
        registry.reload().await.unwrap();
        self.puppets
            .as_ref()
            .expect("an in-process bridge")
            .sync_profiles(&registry.all())
            .await
            .unwrap()
    }

    /// A restart: this bridge stops (cleanly: it gives up the leader lease) and a new one
    /// starts over the same database and homeserver.
    pub async fn restart(&self) -> TestApp {
        self.stop_bridge().await;
        Self::start(self.backend, &self.toml, self.hs.clone(), &self.hs_url).await
    }

    /// Another in-process replica over the same database and homeserver, named `name`, while
    /// this one keeps running (`[leader] replica`).
    pub async fn replica(&self, name: &str) -> TestApp {
        let toml: String = self
            .toml
            .lines()
            .filter(|l| !l.starts_with("replica = "))
            .map(|l| {
                if l == "renew_interval = \"1s\"" {
                    format!("{l}\nreplica = \"{name}\"\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        Self::start(self.backend, &toml, self.hs.clone(), &self.hs_url).await
    }

    /// Waits until this bridge leads (`/health/ready` 200), up to 15 s.
    pub async fn until_leads(&self) {
        for _ in 0..300 {
            let ready = self.http.get(self.url("/health/ready")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the bridge at {} does not lead", self.addr);
    }

    /// Stops the in-process bridge, if one runs, and waits until it has shut down.
    pub async fn stop_bridge(&self) {
        let running = self.running.lock().unwrap().take();
        if let Some((stop, task)) = running {
            let _ = stop.send(());
            task.await.expect("the bridge shuts down cleanly");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `PUT /_matrix/app/v1/transactions/{txn}` with the hs token.
    pub async fn put_txn(&self, txn: &str, events: Vec<Value>) -> (u16, Value) {
        self.put_raw(
            txn,
            serde_json::to_vec(&json!({ "events": events })).unwrap(),
        )
        .await
    }

    pub async fn put_raw(&self, txn: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .http
            .put(self.url(&format!("/_matrix/app/v1/transactions/{txn}")))
            .bearer_auth(HS_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A new admin key (admin API), the key itself.
    pub async fn admin_key(&self) -> String {
        daarion_bridge::keys::create_admin(
            &self.store,
            "ops",
            None,
            &daarion_bridge::db::audit::Actor::cli(),
        )
        .await
        .unwrap()
        .1
    }

    /// `method path` with `key` as the Bearer token and `body` as JSON: status and JSON answer
    /// (null when the answer is not JSON).
    pub async fn call_as(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Rows of `sql` with every column read as text (cast non-text columns in the SQL).
    pub async fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        match self.store.pool() {
            Pool::Pg(pool) => sqlx::query(sql)
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.get::<Option<String>, _>(i))
                        .collect()
                })
                .collect(),
            Pool::Sqlite(pool) => sqlx::query(sql)
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.get::<Option<String>, _>(i))
                        .collect()
                })
                .collect(),
        }
    }

    /// One text column of `sql`, NULL as "NULL".
    pub async fn col(&self, sql: &str) -> Vec<String> {
        self.rows(sql)
            .await
            .into_iter()
            .map(|r| r[0].clone().unwrap_or_else(|| "NULL".into()))
            .collect()
    }

    pub async fn count(&self, table: &str) -> usize {
        self.col(&format!("SELECT CAST(COUNT(*) AS TEXT) FROM {table}"))
            .await[0]
            .parse()
            .unwrap()
    }

    /// A run left `running` by an earlier process after `attempts` runtime calls (a crash),
    /// in the test room; returns its id.
    pub async fn insert_running_run(&self, agent: &str, attempts: i32) -> String {
        let id = daarion_bridge::model::ids::RunId::new();
        let now = daarion_bridge::model::Ts::now();
        let sql = "INSERT INTO agent_runs (id, agent_id, input, status, channel_id, runtime, attempts, \
                   created_at, queued_at, started_at) \
                   SELECT $1, a.id, '{}', 'running', c.id, 'echo', $2, $3, $3, $3 FROM agents a, channels c \
                   WHERE a.matrix_id = $4 AND c.matrix_room_id = $5";
        match self.store.pool() {
            Pool::Pg(p) => sqlx::query(&sql.replace("'{}'", "'{}'::jsonb"))
                .bind(id)
                .bind(attempts)
                .bind(now)
                .bind(agent)
                .bind(ev::ROOM)
                .execute(p)
                .await
                .map(|_| ()),
            Pool::Sqlite(p) => sqlx::query(sql)
                .bind(id)
                .bind(attempts)
                .bind(now)
                .bind(agent)
                .bind(ev::ROOM)
                .execute(p)
                .await
                .map(|_| ()),
        }
        .unwrap();
        id.to_string()
    }

    /// Polls `check` every 20 ms until it holds; panics after `within` naming `what`.
    pub async fn eventually<F, Fut>(&self, what: &str, within: Duration, check: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = std::time::Instant::now();
        while !check().await {
            assert!(start.elapsed() < within, "{what} within {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn exec(&self, sql: &str) {
        self.try_exec(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Runs `sql`, returning the database's refusal instead of panicking on it.
    pub async fn try_exec(&self, sql: &str) -> Result<(), sqlx::Error> {
        match self.store.pool() {
            Pool::Pg(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()),
            Pool::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()),
        }
    }

    /// Takes the database away: PostgreSQL refuses connections and drops the bridge's; SQLite's
    /// pool is closed.
    pub async fn break_db(&self) {
        match (&self.pg_db, self.store.pool()) {
            (Some(name), _) => {
                let admin = sqlx::PgPool::connect(&pg_admin_url()).await.unwrap();
                sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
                    .execute(&admin)
                    .await
                    .unwrap();
                sqlx::query(&format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                ))
                .execute(&admin)
                .await
                .unwrap();
            }
            (None, Pool::Sqlite(pool)) => pool.close().await,
            (None, Pool::Pg(_)) => unreachable!(),
        }
    }

    pub async fn heal_db(&self) {
        if let Some(name) = &self.pg_db {
            let admin = sqlx::PgPool::connect(&pg_admin_url()).await.unwrap();
            sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
                .execute(&admin)
                .await
                .unwrap();
        }
    }
}

/// Event builders.
pub mod ev {
    use serde_json::{Value, json};

    pub const ROOM: &str = "!room:localhost";
    pub const BOT: &str = "@daarion:localhost";
    pub const SOFIA: &str = "@agent_sofia:localhost";

    pub fn base(kind: &str, id: &str, sender: &str, content: Value) -> Value {
        json!({
            "type": kind, "event_id": format!("${id}"), "sender": sender, "room_id": ROOM,
            "origin_server_ts": 1_700_000_000_000u64, "content": content,
        })
    }
    pub fn in_room(mut e: Value, room: &str) -> Value {
        e["room_id"] = json!(room);
        e
    }
    /// Stamped with the current time (sessions and the idle sweeper work on real time).
    pub fn now(e: Value) -> Value {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        at(e, ms)
    }
    pub fn at(mut e: Value, ts: u64) -> Value {
        e["origin_server_ts"] = json!(ts);
        e
    }
    pub fn state(kind: &str, id: &str, sender: &str, key: &str, content: Value) -> Value {
        let mut e = base(kind, id, sender, content);
        e["state_key"] = json!(key);
        e
    }
    pub fn member(id: &str, sender: &str, target: &str, membership: &str) -> Value {
        state(
            "m.room.member",
            id,
            sender,
            target,
            json!({ "membership": membership }),
        )
    }
    /// An edit (`m.replace`) of `target` (a full event id) by `sender`, to `body`.
    pub fn edit(id: &str, sender: &str, target: &str, body: &str) -> Value {
        base(
            "m.room.message",
            id,
            sender,
            json!({
                "msgtype": "m.text", "body": format!("* {body}"),
                "m.new_content": { "msgtype": "m.text", "body": body },
                "m.relates_to": { "rel_type": "m.replace", "event_id": target },
            }),
        )
    }
    pub fn text(id: &str, sender: &str, body: &str) -> Value {
        base(
            "m.room.message",
            id,
            sender,
            json!({ "msgtype": "m.text", "body": body }),
        )
    }
    /// Invites the bot with a room name in the stripped state, as Synapse sends it.
    pub fn invite_bot(id: &str, inviter: &str, name: &str) -> Value {
        let mut e = member(id, inviter, BOT, "invite");
        e["unsigned"] = json!({ "invite_room_state": [
            { "type": "m.room.name", "state_key": "", "sender": inviter, "content": { "name": name } },
            { "type": "m.room.join_rules", "state_key": "", "sender": inviter, "content": { "join_rule": "invite" } }
        ]});
        e
    }
}
