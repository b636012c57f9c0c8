//! End-to-end tests against a real Synapse on loopback (started by `scripts/synapse.sh` with the
//! registration generated from `tests/e2e/config.toml`): a person creates a room, invites the
//! bridge bot, chats; the DAARION rows are asserted, on SQLite and on PostgreSQL.

use std::{path::PathBuf, process::Command, sync::OnceLock, time::Duration};

use daarion_bridge::{Bridge, config::Config, db::Pool, registration};
use serde_json::{Value, json};
use sqlx::Row;

#[path = "../common/model.rs"]
mod model;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn homeserver() -> String {
    std::env::var("DAARION_E2E_HOMESERVER").unwrap_or_else(|_| "http://127.0.0.1:8008".into())
}

/// The bridge listens on a fixed port (the registration's url): one test at a time.
fn serial() -> &'static tokio::sync::Mutex<()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
}

fn config(db_url: &str) -> Config {
    let text = std::fs::read_to_string(repo().join("tests/e2e/config.toml")).unwrap();
    let mut config = Config::from_toml_str(&text).unwrap();
    config.database.url = db_url.into();
    config.homeserver.url = homeserver();
    config.validate().unwrap();
    config
}

/// Writes the registration and makes sure Synapse runs with it (idempotent).
fn ensure_synapse() {
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
async fn fresh_pg() -> String {
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
struct RunningBridge {
    store: daarion_bridge::db::Store,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningBridge {
    async fn start(db_url: &str) -> Self {
        // Bridge logs in the test output (shown when a test fails); RUST_LOG for more.
        let mut logging = config(db_url).logging;
        logging.level = "warn".into();
        daarion_bridge::telemetry::init(&logging);
        let bridge = Bridge::build(config(db_url)).await.expect("bridge builds");
        let store = bridge.store.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:29334")
            .await
            .expect("port 29334 free for the e2e bridge");
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

    async fn stop(self) {
        let _ = self.stop.send(());
        self.server.await.unwrap().unwrap();
    }
}

/// A Matrix user of the test, speaking the client-server API as a person's client would.
struct Person {
    http: reqwest::Client,
    token: String,
    user_id: String,
}

impl Person {
    async fn register(prefix: &str) -> Person {
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

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
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

    async fn send(&self, room: &str, content: Value) -> String {
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

fn enc(s: &str) -> String {
    s.replace('!', "%21")
        .replace(':', "%3A")
        .replace('@', "%40")
        .replace('$', "%24")
        .replace('#', "%23")
}

async fn rows(pool: &Pool, sql: &str) -> Vec<Vec<Option<String>>> {
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
async fn wait_rows(
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

async fn room_is_mirrored(db_url: String) {
    let _serial = serial().lock().await;
    ensure_synapse();
    let bridge = RunningBridge::start(&db_url).await;
    let pool = bridge.store.pool().clone();

    let alice = Person::register("alice").await;
    let bob = Person::register("bob").await;
    let name = format!(
        "E2E Room {}",
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let created = alice
        .call(
            reqwest::Method::POST,
            "/_matrix/client/v3/createRoom",
            json!({ "name": name, "topic": "end to end", "preset": "private_chat", "invite": ["@daarion:localhost", bob.user_id] }),
        )
        .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    bob.call(
        reqwest::Method::POST,
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        json!({}),
    )
    .await;

    // The bot accepts the invite; the channel exists with the room's real name.
    let q = format!("SELECT name, visibility, topic FROM channels WHERE matrix_room_id = '{room}'");
    let ch = wait_rows(&pool, &q, "the channel", |r| {
        r.len() == 1 && r[0][0].as_deref() == Some(name.as_str())
    })
    .await;
    assert_eq!(ch[0][1].as_deref(), Some("private"));
    assert_eq!(ch[0][2].as_deref(), Some("end to end"));

    let hello = alice
        .send(
            &room,
            json!({ "msgtype": "m.text", "body": "hello from alice" }),
        )
        .await;
    let wave = bob
        .send(&room, json!({ "msgtype": "m.emote", "body": "waves" }))
        .await;
    let typo = alice
        .send(&room, json!({ "msgtype": "m.text", "body": "tpyo" }))
        .await;
    alice
        .send(
            &room,
            json!({
                "msgtype": "m.text", "body": "* typo",
                "m.new_content": { "msgtype": "m.text", "body": "typo" },
                "m.relates_to": { "rel_type": "m.replace", "event_id": typo },
            }),
        )
        .await;
    let gone = bob
        .send(&room, json!({ "msgtype": "m.text", "body": "oops" }))
        .await;
    bob.call(
        reqwest::Method::PUT,
        &format!(
            "/_matrix/client/v3/rooms/{}/redact/{}/r1",
            enc(&room),
            enc(&gone)
        ),
        json!({ "reason": "mistake" }),
    )
    .await;

    let q = format!(
        "SELECT m.matrix_event_id, m.content_preview, m.sender_type, u.matrix_id FROM messages m \
         JOIN channels c ON c.id = m.channel_id LEFT JOIN users u ON u.id = m.sender_user_id \
         WHERE c.matrix_room_id = '{room}' ORDER BY m.created_at, m.matrix_event_id"
    );
    let msgs = wait_rows(&pool, &q, "four messages, edited and redacted", |r| {
        r.len() == 4
            && r.iter()
                .any(|m| m[0].as_deref() == Some(typo.as_str()) && m[1].as_deref() == Some("typo"))
            && r.iter()
                .any(|m| m[0].as_deref() == Some(gone.as_str()) && m[1].as_deref() == Some(""))
    })
    .await;
    let by_id = |id: &str| {
        msgs.iter()
            .find(|m| m[0].as_deref() == Some(id))
            .unwrap()
            .clone()
    };
    assert_eq!(by_id(&hello)[1].as_deref(), Some("hello from alice"));
    assert_eq!(by_id(&hello)[3].as_deref(), Some(alice.user_id.as_str()));
    let bob_local = bob
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap();
    assert_eq!(
        by_id(&wave)[1].as_deref(),
        Some(format!("* {bob_local} waves").as_str())
    );
    assert!(msgs.iter().all(|m| m[2].as_deref() == Some("human")));

    // Members: alice created the room (power 100 → owner), bob joined (member); the bot is not one.
    let q = format!(
        "SELECT u.matrix_id, cm.role FROM channel_members cm JOIN channels c ON c.id = cm.channel_id \
         JOIN users u ON u.id = cm.member_user_id WHERE c.matrix_room_id = '{room}' AND cm.left_at IS NULL ORDER BY u.matrix_id"
    );
    let members = wait_rows(&pool, &q, "two members", |r| r.len() == 2).await;
    assert!(
        members.contains(&vec![Some(alice.user_id.clone()), Some("owner".into())]),
        "{members:?}"
    );
    assert!(
        members.contains(&vec![Some(bob.user_id.clone()), Some("member".into())]),
        "{members:?}"
    );

    // Invite the agent: its puppet is registered, joins, and becomes an agent member.
    alice
        .call(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            json!({ "user_id": "@agent_sofia:localhost" }),
        )
        .await;
    let q = format!(
        "SELECT a.external_id, cm.role FROM channel_members cm JOIN channels c ON c.id = cm.channel_id \
         JOIN agents a ON a.id = cm.member_agent_id WHERE c.matrix_room_id = '{room}' AND cm.left_at IS NULL"
    );
    wait_rows(&pool, &q, "the agent member", |r| {
        r == [vec![Some("agent:sofia".into()), Some("agent".into())]]
    })
    .await;

    // Bob leaves: his row is kept with left_at.
    bob.call(
        reqwest::Method::POST,
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        json!({}),
    )
    .await;
    let q = format!(
        "SELECT u.matrix_id FROM channel_members cm JOIN users u ON u.id = cm.member_user_id \
         JOIN channels c ON c.id = cm.channel_id WHERE c.matrix_room_id = '{room}' AND cm.left_at IS NOT NULL"
    );
    wait_rows(&pool, &q, "bob's leave", |r| {
        r == [vec![Some(bob.user_id.clone())]]
    })
    .await;

    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_is_mirrored_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("daarion-e2e-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    room_is_mirrored(format!("sqlite://{}/bridge.db", dir.display())).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_is_mirrored_on_postgres() {
    room_is_mirrored(fresh_pg().await).await;
}

/// The agent side against the real homeserver: invited, it joins as "Sofia"; through the agent
/// API it answers in Markdown, edits, reacts; the person's /sync sees all of it from the agent's
/// user id; a homeserver outage delays a send but delivers it exactly once; kicked, its session
/// closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_lives_in_matrix() {
    let db_url = fresh_pg().await;

    let _serial = serial().lock().await;
    ensure_synapse();
    let bridge = RunningBridge::start(&db_url).await;
    let (store, pool) = (bridge.store.clone(), bridge.store.pool().clone());
    let sofia = "@agent_sofia:localhost";

    let alice = Person::register("alice").await;
    let created = alice
        .call(reqwest::Method::POST, "/_matrix/client/v3/createRoom", json!({ "name": "Ask Sofia", "preset": "private_chat", "invite": ["@daarion:localhost"] }))
        .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    let q = format!("SELECT CAST(id AS TEXT) FROM channels WHERE matrix_room_id = '{room}'");
    let channel = wait_rows(&pool, &q, "the channel", |r| r.len() == 1).await[0][0]
        .clone()
        .unwrap();
    alice
        .call(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            json!({ "user_id": sofia }),
        )
        .await;
    let q = format!(
        "SELECT s.status FROM agent_sessions s JOIN channels c ON c.id = s.channel_id WHERE c.matrix_room_id = '{room}' ORDER BY s.started_at"
    );
    wait_rows(&pool, &q, "Sofia's active session", |r| {
        r == [vec![Some("active".into())]]
    })
    .await;
    // She joined under her own name.
    let profile = alice
        .call(
            reqwest::Method::GET,
            &format!("/_matrix/client/v3/profile/{}", enc(sofia)),
            json!(null),
        )
        .await;
    assert_eq!(profile["displayname"], "Sofia");

    let question = alice
        .send(
            &room,
            json!({ "msgtype": "m.text", "body": "Sofia, what is 2+2?" }),
        )
        .await;
    let (_, key) = daarion_bridge::keys::create(
        &store,
        "agent:sofia",
        "e2e",
        &[],
        &["agent.runtime".into()],
        None,
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let api = |method: reqwest::Method, path: String, body: Value| {
        let req = http
            .request(method, format!("http://127.0.0.1:29334{path}"))
            .bearer_auth(&key)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let base = format!("/api/v1/channels/{channel}/messages");
    let (s, sent) = api(
        reqwest::Method::POST,
        base.clone(),
        json!({ "text": "It is **4**.", "reply_to": question, "mentions": [alice.user_id] }),
    )
    .await;
    assert_eq!(s, 200, "{sent}");
    let answer = sent["event_id"].as_str().unwrap().to_owned();
    let (s, _) = api(
        reqwest::Method::PUT,
        format!("{base}/{}", enc(&answer)),
        json!({ "text": "It is **four**." }),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = api(
        reqwest::Method::POST,
        format!("{base}/{}/reactions", enc(&question)),
        json!({ "key": "👍" }),
    )
    .await;
    assert_eq!(s, 200);

    // Alice's client sees all three from Sofia's user id.
    let filter = enc(r#"{"room":{"timeline":{"limit":50}}}"#)
        .replace('{', "%7B")
        .replace('}', "%7D")
        .replace('"', "%22")
        .replace(',', "%2C");
    let sync = alice
        .call(
            reqwest::Method::GET,
            &format!("/_matrix/client/v3/sync?timeout=0&filter={filter}"),
            json!(null),
        )
        .await;
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let from_sofia: Vec<&Value> = timeline.iter().filter(|e| e["sender"] == sofia).collect();
    let reply = from_sofia
        .iter()
        .find(|e| e["event_id"] == answer.as_str())
        .expect("the answer reached alice");
    assert_eq!(reply["content"]["msgtype"], "m.notice");
    assert_eq!(
        reply["content"]["formatted_body"],
        "<p>It is <strong>4</strong>.</p>"
    );
    assert_eq!(
        reply["content"]["m.relates_to"]["m.in_reply_to"]["event_id"],
        question.as_str()
    );
    assert_eq!(
        reply["content"]["m.mentions"]["user_ids"][0],
        alice.user_id.as_str()
    );
    assert!(
        from_sofia
            .iter()
            .any(|e| e["content"]["m.relates_to"]["rel_type"] == "m.replace"
                && e["content"]["m.new_content"]["body"] == "It is **four**.")
    );
    assert!(
        from_sofia
            .iter()
            .any(|e| e["type"] == "m.reaction" && e["content"]["m.relates_to"]["key"] == "👍")
    );
    let q = format!(
        "SELECT content_preview, sender_type FROM messages WHERE matrix_event_id = '{answer}'"
    );
    wait_rows(&pool, &q, "the edited answer", |r| {
        r == [vec![Some("It is **four**.".into()), Some("agent".into())]]
    })
    .await;

    // The homeserver goes away: the send is queued (202), then delivered exactly once.
    let synapse = repo().join("scripts/synapse.sh");
    assert!(
        Command::new(&synapse)
            .arg("stop")
            .status()
            .unwrap()
            .success()
    );
    let (s, queued) = api(
        reqwest::Method::POST,
        base.clone(),
        json!({ "text": "sent during the outage" }),
    )
    .await;
    assert_eq!(s, 202, "{queued}");
    assert!(
        Command::new(&synapse)
            .args(["start", "--registration"])
            .arg(repo().join("target/e2e/registration.yaml"))
            .status()
            .unwrap()
            .success()
    );
    let q = "SELECT status FROM agent_outbox WHERE content->>'body' = 'sent during the outage'"
        .to_owned();
    wait_rows(&pool, &q, "the queued send to be delivered", |r| {
        r == [vec![Some("sent".into())]]
    })
    .await;
    let messages = alice
        .call(
            reqwest::Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
                enc(&room)
            ),
            json!(null),
        )
        .await;
    let copies = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["content"]["body"] == "sent during the outage")
        .count();
    assert_eq!(copies, 1, "delivered exactly once");

    // Kicked, the agent's session closes.
    alice
        .call(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room)),
            json!({ "user_id": sofia, "reason": "bye" }),
        )
        .await;
    let q = format!(
        "SELECT s.status FROM agent_sessions s JOIN channels c ON c.id = s.channel_id WHERE c.matrix_room_id = '{room}'"
    );
    wait_rows(&pool, &q, "the closed session", |r| {
        r == [vec![Some("closed".into())]]
    })
    .await;

    bridge.stop().await;
}

/// The room's timeline as a person's client reads it, oldest first.
async fn timeline(p: &Person, room: &str) -> Vec<Value> {
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
async fn wait_timeline(
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

/// Agents answer for real: a DM gets an echo; a mention in a group room gets a streamed answer
/// seen as one message plus edits ending with the whole text; two agents mentioning each other
/// stop at the chain limit; a runtime that is down yields a failed run and one notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_answer() {
    let db_url = fresh_pg().await;

    let _serial = serial().lock().await;
    ensure_synapse();
    let (_model, _) = model::FakeModel::spawn_on("stream", "127.0.0.1:29335").await;
    let bridge = RunningBridge::start(&db_url).await;
    let (store, pool) = (bridge.store.clone(), bridge.store.pool().clone());
    let (sofia, nova, ghost) = (
        "@agent_sofia:localhost",
        "@agent_nova:localhost",
        "@agent_ghost:localhost",
    );
    let alice = Person::register("alice").await;
    let bob = Person::register("bob").await;

    // A DM with Sofia: no mention needed.
    let dm = alice
        .call(
            reqwest::Method::POST,
            "/_matrix/client/v3/createRoom",
            json!({ "is_direct": true, "preset": "trusted_private_chat", "invite": [sofia] }),
        )
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let q = format!(
        "SELECT s.status FROM agent_sessions s JOIN channels c ON c.id = s.channel_id WHERE c.matrix_room_id = '{dm}'"
    );
    wait_rows(&pool, &q, "Sofia in the DM", |r| {
        r == [vec![Some("active".into())]]
    })
    .await;
    alice
        .send(&dm, json!({ "msgtype": "m.text", "body": "hello sofia" }))
        .await;
    let events = wait_timeline(&alice, &dm, "Sofia's answer", |t| {
        t.iter()
            .any(|e| e["sender"] == sofia && e["type"] == "m.room.message")
    })
    .await;
    let answer = events
        .iter()
        .find(|e| e["sender"] == sofia && e["type"] == "m.room.message")
        .unwrap();
    assert!(
        answer["content"]["body"]
            .as_str()
            .unwrap()
            .contains("hello sofia"),
        "{answer}"
    );

    // A group room with Nova: a mention gets a streamed answer.
    let room = alice
        .call(reqwest::Method::POST, "/_matrix/client/v3/createRoom", json!({ "name": "Group", "preset": "private_chat", "invite": ["@daarion:localhost", nova, sofia, ghost, bob.user_id] }))
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.call(
        reqwest::Method::POST,
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        json!({}),
    )
    .await;
    let q = format!(
        "SELECT COUNT(*) FROM agent_sessions s JOIN channels c ON c.id = s.channel_id WHERE c.matrix_room_id = '{room}' AND s.status = 'active'"
    );
    wait_rows(
        &pool,
        &q.replace("COUNT(*)", "CAST(COUNT(*) AS TEXT)"),
        "three agents in the group",
        |r| r == [vec![Some("3".into())]],
    )
    .await;
    alice
        .send(
            &room,
            json!({ "msgtype": "m.text", "body": "just chatting" }),
        )
        .await;
    let question = alice
        .send(&room, json!({ "msgtype": "m.text", "body": "Nova, what is six times seven?", "m.mentions": { "user_ids": [nova] } }))
        .await;
    let events = wait_timeline(&alice, &room, "Nova's final edit", |t| {
        t.iter().any(|e| {
            e["sender"] == nova
                && e["content"]["m.new_content"]["body"] == "The answer is forty-two."
        })
    })
    .await;
    let from_nova: Vec<&Value> = events
        .iter()
        .filter(|e| e["sender"] == nova && e["type"] == "m.room.message")
        .collect();
    let originals: Vec<&&Value> = from_nova
        .iter()
        .filter(|e| e["content"]["m.relates_to"]["rel_type"] != "m.replace")
        .collect();
    assert_eq!(originals.len(), 1, "one message");
    assert_eq!(
        originals[0]["content"]["m.relates_to"]["m.in_reply_to"]["event_id"],
        question.as_str()
    );
    let edits: Vec<&&Value> = from_nova
        .iter()
        .filter(|e| e["content"]["m.relates_to"]["rel_type"] == "m.replace")
        .collect();
    assert!(!edits.is_empty(), "edits as the answer grows");
    assert!(
        edits
            .iter()
            .all(|e| e["content"]["m.relates_to"]["event_id"] == originals[0]["event_id"])
    );
    assert_eq!(
        edits.last().unwrap()["content"]["m.new_content"]["body"],
        "The answer is forty-two."
    );
    // "just chatting" addressed nobody.
    let q = format!(
        "SELECT CAST(COUNT(*) AS TEXT) FROM agent_runs r JOIN channels c ON c.id = r.channel_id WHERE c.matrix_room_id = '{room}'"
    );
    assert_eq!(rows(&pool, &q).await, vec![vec![Some("1".into())]]);

    // Sofia and Nova mention each other: three agent→agent turns, then the chain stops.
    let channel = rows(
        &pool,
        &format!("SELECT CAST(id AS TEXT) FROM channels WHERE matrix_room_id = '{room}'"),
    )
    .await[0][0]
        .clone()
        .unwrap();
    let (_, key) = daarion_bridge::keys::create(
        &store,
        "agent:sofia",
        "e2e",
        &[],
        &["agent.runtime".into()],
        None,
    )
    .await
    .unwrap();
    let r = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:29334/api/v1/channels/{channel}/messages"
        ))
        .bearer_auth(&key)
        .json(&json!({ "text": "Nova, over to you", "mentions": [nova] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let q = format!(
        "SELECT CAST(r.chain_depth AS TEXT), r.status FROM agent_runs r JOIN channels c ON c.id = r.channel_id WHERE c.matrix_room_id = '{room}' AND r.chain_depth > 0 ORDER BY r.queued_at"
    );
    let chain = wait_rows(&pool, &q, "three chained runs", |r| {
        r.len() == 3 && r.iter().all(|x| x[1].as_deref() == Some("completed"))
    })
    .await;
    assert_eq!(
        chain
            .iter()
            .map(|r| r[0].clone().unwrap())
            .collect::<Vec<_>>(),
        ["1", "2", "3"]
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rows(&pool, &q).await.len(), 3, "no fourth turn");

    // Ghost's runtime is down: a failed run and exactly one notice.
    alice.send(&room, json!({ "msgtype": "m.text", "body": "Ghost, are you there?", "m.mentions": { "user_ids": [ghost] } })).await;
    let q = "SELECT r.status, r.error FROM agent_runs r JOIN agents a ON a.id = r.agent_id WHERE a.external_id = 'agent:ghost'".to_owned();
    let failed = wait_rows(&pool, &q, "Ghost's failed run", |r| {
        r.len() == 1 && r[0][0].as_deref() == Some("failed")
    })
    .await;
    assert!(
        failed[0][1].as_deref().unwrap().contains("unreachable"),
        "{failed:?}"
    );
    let events = wait_timeline(&alice, &room, "Ghost's notice", |t| {
        t.iter()
            .any(|e| e["sender"] == ghost && e["type"] == "m.room.message")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = if events.is_empty() {
        events
    } else {
        timeline(&alice, &room).await
    };
    let notices: Vec<&Value> = events
        .iter()
        .filter(|e| e["sender"] == ghost && e["type"] == "m.room.message")
        .collect();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0]["content"]["msgtype"], "m.notice");

    bridge.stop().await;
}
