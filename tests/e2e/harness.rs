//! The end-to-end harness: a real Synapse (through `scripts/synapse.sh`), the bridge on the
//! registration's port, fresh databases, and a person speaking the client-server API.

use std::{path::PathBuf, process::Command, sync::OnceLock, time::Duration};

use daarion_bridge::{Bridge, config::Config, db::Pool, registration};
use serde_json::{Value, json};
use sqlx::Row;

pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn homeserver() -> String {
    std::env::var("DAARION_E2E_HOMESERVER").unwrap_or_else(|_| "http://127.0.0.1:8008".into())
}

/// The bridge listens on a fixed port (the registration's url): one test at a time.
pub(crate) fn serial() -> &'static tokio::sync::Mutex<()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
}

/// The bridge's port: the e2e config's 29334 unless `DAARION_E2E_BRIDGE_PORT` names another (so
/// that two checkouts, each with its own Synapse, can run the suite at once).
pub(crate) fn bridge_port() -> u16 {
    std::env::var("DAARION_E2E_BRIDGE_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(29334)
}

pub(crate) fn config(db_url: &str) -> Config {
    let text = std::fs::read_to_string(repo().join("tests/e2e/config.toml")).unwrap();
    let port = bridge_port();
    let text = text.replace("127.0.0.1:29334", &format!("127.0.0.1:{port}"));
    let mut config = Config::from_toml_str(&text).unwrap();
    config.database.url = db_url.into();
    config.homeserver.url = homeserver();
    config.validate().unwrap();
    config
}

/// Writes the registration and makes sure Synapse runs with it (idempotent).
pub(crate) fn ensure_synapse() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = repo().join("target/e2e");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("registration.yaml");
        let yaml = registration::to_yaml(&registration::build(&config("sqlite://unused")));
        if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
            std::fs::write(&path, yaml).unwrap();
        }
        let status = Command::new(repo().join("scripts/synapse.sh"))
            .args(["start", "--registration"])
            .arg(&path)
            .status()
            .expect("scripts/synapse.sh runs");
        assert!(
            status.success(),
            "scripts/synapse.sh could not start Synapse"
        );
    });
}

/// A fresh PostgreSQL database on the test server.
pub(crate) async fn fresh_pg() -> String {
    let admin = std::env::var("DAARION_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("daarion_e2e_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::PgPool::connect(&admin)
        .await
        .expect("PostgreSQL reachable (scripts/ensure-postgres.sh)");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .unwrap();
    format!("{}/{name}", admin.rsplit_once('/').unwrap().0)
}

/// The bridge serving on the registration's address (127.0.0.1:29334) until stopped.
pub(crate) struct RunningBridge {
    pub(crate) store: daarion_bridge::db::Store,
    pub(crate) stop: tokio::sync::oneshot::Sender<()>,
    pub(crate) server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningBridge {
    pub(crate) async fn start(db_url: &str) -> Self {
        // Bridge logs in the test output (shown when a test fails); RUST_LOG for more.
        let mut logging = config(db_url).logging;
        logging.level = std::env::var("DAARION_E2E_LOG").unwrap_or_else(|_| "warn".into());
        daarion_bridge::telemetry::init(&logging);
        let bridge = Bridge::build(config(db_url)).await.expect("bridge builds");
        let store = bridge.store.clone();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", bridge_port()))
            .await
            .expect("the e2e bridge's port is free");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(bridge.run(listener, async move {
            let _ = stopped.await;
        }));
        RunningBridge {
            store,
            stop,
            server,
        }
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        self.server.await.unwrap().unwrap();
    }
}

/// A Matrix user of the test, speaking the client-server API as a person's client would.
pub(crate) struct Person {
    pub(crate) http: reqwest::Client,
    pub(crate) token: String,
    pub(crate) user_id: String,
}

impl Person {
    pub(crate) async fn register(prefix: &str) -> Person {
        let http = reqwest::Client::new();
        let username = format!(
            "{prefix}{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let url = format!("{}/_matrix/client/v3/register", homeserver());
        let mut body =
            json!({ "username": username, "password": "e2e-password-1", "inhibit_login": false });
        let first: Value = http
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(session) = first.get("session") {
            body["auth"] = json!({ "type": "m.login.dummy", "session": session });
        }
        let r: Value = http
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = r["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("register failed: {r}"))
            .to_owned();
        Person {
            http,
            token,
            user_id: r["user_id"].as_str().unwrap().to_owned(),
        }
    }

    pub(crate) async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method, format!("{}{path}", homeserver()))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    pub(crate) async fn send(&self, room: &str, content: Value) -> String {
        let txn = uuid::Uuid::new_v4().simple().to_string();
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
            enc(room)
        );
        self.call(reqwest::Method::PUT, &path, content).await["event_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

pub(crate) fn enc(s: &str) -> String {
    s.replace('!', "%21")
        .replace(':', "%3A")
        .replace('@', "%40")
        .replace('$', "%24")
        .replace('#', "%23")
}

pub(crate) async fn rows(pool: &Pool, sql: &str) -> Vec<Vec<Option<String>>> {
    match pool {
        Pool::Pg(p) => sqlx::query(sql)
            .fetch_all(p)
            .await
            .unwrap()
            .iter()
            .map(|r| (0..r.len()).map(|i| r.get(i)).collect())
            .collect(),
        Pool::Sqlite(p) => sqlx::query(sql)
            .fetch_all(p)
            .await
            .unwrap()
            .iter()
            .map(|r| (0..r.len()).map(|i| r.get(i)).collect())
            .collect(),
    }
}

/// Polls `sql` until `done` holds (Synapse delivers asynchronously), or fails with the last rows.
pub(crate) async fn wait_rows(
    pool: &Pool,
    sql: &str,
    what: &str,
    done: impl Fn(&[Vec<Option<String>>]) -> bool,
) -> Vec<Vec<Option<String>>> {
    let mut last = Vec::new();
    for _ in 0..300 {
        last = rows(pool, sql).await;
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}; last rows of `{sql}`: {last:?}");
}

/// The room's timeline as a person's client reads it, oldest first.
pub(crate) async fn timeline(p: &Person, room: &str) -> Vec<Value> {
    let v = p
        .call(
            reqwest::Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=200",
                enc(room)
            ),
            json!(null),
        )
        .await;
    let mut events = v["chunk"].as_array().cloned().unwrap_or_default();
    events.reverse();
    events
}

/// Polls the person's view of the room until `done` holds.
pub(crate) async fn wait_timeline(
    p: &Person,
    room: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut last = Vec::new();
    for _ in 0..300 {
        last = timeline(p, room).await;
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "timed out waiting for {what}; timeline: {:#?}",
        last.iter()
            .map(|e| (&e["sender"], &e["type"], &e["content"]["body"]))
            .collect::<Vec<_>>()
    );
}
