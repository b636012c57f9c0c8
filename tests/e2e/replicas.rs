//! Past one machine (issue #27), end to end with all real parts: a real Synapse, two
//! `daarion-bridge run` processes on one PostgreSQL database, and haproxy in front of them
//! routing by `GET /health/ready` (`replicas_harness.rs`). One replica leads and handles the
//! homeserver's transactions; the other stands by. People chat with agents in encrypted and
//! plaintext rooms; the leader is killed (`kill -9`) mid-load, or paused past its lease
//! (`SIGSTOP`) and resumed (`SIGCONT`); every event is mirrored once and every message
//! answered once, from the same agent device.

use std::time::{Duration, Instant};

use daarion_bridge::db::Pool;
use serde_json::{Map, Value, json};

use crate::e2ee::{E2eeClient, assert_trusted};
use crate::harness::*;
use crate::replicas_harness::*;

const SOFIA: &str = "@agent_sofia:localhost";
const NOVA: &str = "@agent_nova:localhost";
const BOT: &str = "@daarion:localhost";

/// A take-over must come within the lease and a few seconds.
const TAKEOVER: Duration = Duration::from_secs(TTL.as_secs() + 5);

/// The same person on a second HTTP client (for a background sender).
fn again(p: &Person) -> Person {
    Person {
        http: reqwest::Client::new(),
        token: p.token.clone(),
        user_id: p.user_id.clone(),
    }
}

/// `user`'s devices as the homeserver publishes them (`/keys/query`): device id → keys.
async fn published_devices(p: &Person, user: &str) -> Map<String, Value> {
    let keys = p
        .call(
            reqwest::Method::POST,
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { user: [] } }),
        )
        .await;
    keys["device_keys"][user]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

/// Waits until the leader set up `agent`'s device and cross-signing identity.
async fn agent_identity(pool: &Pool, agent: &str) {
    let q = format!(
        "SELECT kind FROM bridge_crypto_items WHERE user_id = '{agent}' AND kind = 'identity'"
    );
    wait_rows(pool, &q, "the agent's cross-signing identity", |r| {
        r.len() == 1
    })
    .await;
}

/// A room `p` creates (`body`: the createRoom request) and the channel the bridge made of it,
/// once every agent in `agents` holds an active session there.
async fn room_with(p: &Person, pool: &Pool, body: Value, agents: usize) -> String {
    let room = p
        .call(reqwest::Method::POST, "/_matrix/client/v3/createRoom", body)
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let q = format!(
        "SELECT CAST(COUNT(*) AS TEXT) FROM agent_sessions s JOIN channels c ON c.id = s.channel_id \
         WHERE c.matrix_room_id = '{room}' AND s.status = 'active'"
    );
    let want = agents.to_string();
    wait_rows(pool, &q, "the agents' sessions", |r| {
        r[0][0].as_deref() == Some(want.as_str())
    })
    .await;
    room
}

fn sql_list(ids: &[String]) -> String {
    ids.iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Every event in `ids` is mirrored into `messages`, and announced (`chat.message.created` in
/// the outbox) exactly once.
async fn mirrored_once(pool: &Pool, ids: &[String]) {
    let list = sql_list(ids);
    let q = format!(
        "SELECT matrix_event_id, CAST(COUNT(*) AS TEXT) FROM messages \
         WHERE matrix_event_id IN ({list}) GROUP BY matrix_event_id"
    );
    let mirrored = wait_rows(pool, &q, "every event mirrored", |r| r.len() == ids.len()).await;
    assert!(
        mirrored.iter().all(|r| r[1].as_deref() == Some("1")),
        "{mirrored:?}"
    );
    let q = format!(
        "SELECT payload->>'matrix_event_id', CAST(COUNT(*) AS TEXT) FROM outbox_events \
         WHERE topic = 'chat.message.created' AND payload->>'matrix_event_id' IN ({list}) \
         GROUP BY 1"
    );
    let announced = wait_rows(pool, &q, "every event announced", |r| r.len() == ids.len()).await;
    let doubled: Vec<_> = announced
        .iter()
        .filter(|r| r[1].as_deref() != Some("1"))
        .collect();
    assert!(doubled.is_empty(), "announced more than once: {doubled:?}");
}

/// `event` was taken by exactly one run, which completed.
async fn answered_once(pool: &Pool, event: &str) {
    let q = format!(
        "SELECT DISTINCT CAST(r.id AS TEXT), r.status FROM bridge_triggers t \
         JOIN agent_runs r ON r.id = t.run_id WHERE t.event_id = '{event}'"
    );
    let runs = wait_rows(pool, &q, "the run answering the event", |r| {
        r.iter().any(|run| run[1].as_deref() == Some("completed"))
    })
    .await;
    assert_eq!(runs.len(), 1, "one run for {event}: {runs:?}");
}

/// As many agent messages in the room as completed runs (an edit is no new message): no answer
/// posted twice.
async fn one_message_per_run(pool: &Pool, room: &str) {
    let q = format!(
        "SELECT (SELECT CAST(COUNT(*) AS TEXT) FROM messages m JOIN channels c ON c.id = m.channel_id \
           WHERE c.matrix_room_id = '{room}' AND m.sender_type = 'agent'), \
         (SELECT CAST(COUNT(*) AS TEXT) FROM agent_runs r JOIN channels c ON c.id = r.channel_id \
           WHERE c.matrix_room_id = '{room}' AND r.status = 'completed')"
    );
    // A run is marked completed just after its answer is recorded: give it a moment; a doubled
    // answer stays one message ahead however long this waits.
    let mut counts = rows(pool, &q).await;
    for _ in 0..50 {
        if counts[0][0] == counts[0][1] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        counts = rows(pool, &q).await;
    }
    assert_eq!(
        counts[0][0], counts[0][1],
        "agent messages vs runs in {room}"
    );
}

/// `agent`'s messages in the room that are not edits, as the person's client reads them.
fn answers<'a>(timeline: &'a [Value], agent: &str) -> Vec<&'a Value> {
    timeline
        .iter()
        .filter(|e| {
            e["sender"] == agent
                && e["type"] == "m.room.message"
                && e["content"]["m.relates_to"]["rel_type"] != "m.replace"
        })
        .collect()
}

/// Sends a plaintext message mentioning `agent`.
async fn mention(p: &Person, room: &str, agent: &str, text: &str) -> String {
    p.send(
        room,
        json!({ "msgtype": "m.text", "body": text, "m.mentions": { "user_ids": [agent] } }),
    )
    .await
}

/// Rows the bridge writes as it works, counted.
async fn written(pool: &Pool) -> Vec<Vec<Option<String>>> {
    rows(
        pool,
        "SELECT (SELECT CAST(COUNT(*) AS TEXT) FROM messages), \
         (SELECT CAST(COUNT(*) AS TEXT) FROM agent_runs), \
         (SELECT CAST(COUNT(*) AS TEXT) FROM bridge_triggers), \
         (SELECT CAST(COUNT(*) AS TEXT) FROM outbox_events), \
         (SELECT CAST(COUNT(*) AS TEXT) FROM audit_log)",
    )
    .await
}

/// [`written`] once it holds still: the same counts twice, half a second apart (the leader
/// finishes what it was doing: the mirror of its own last edit, the run's end).
async fn settled(pool: &Pool) -> Vec<Vec<Option<String>>> {
    let mut last = written(pool).await;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = written(pool).await;
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the bridge keeps writing: {last:?}");
}

/// Both replicas up: exactly one leads (ready, metric 1), the other stands by (503 `standby`,
/// metric 0), both live, and the admin status names the leader on both. A person chats with
/// Sofia in an encrypted DM and in a plaintext one: each message is mirrored once and answered
/// once, the encrypted answers decrypted from her cross-signed device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_leader_answers_dms_once() {
    let db_url = fresh_pg().await;
    let _serial = serial().lock().await;
    let set = Replicas::start(&db_url).await;
    let pool = set.store.pool().clone();
    let leader = set.wait_leader(Duration::from_secs(30)).await;
    let standby = 1 - leader;
    let (l, s) = (&set.replicas[leader], &set.replicas[standby]);
    assert_eq!(s.ready().await, Some(503));
    assert_eq!(s.ready_body().await["role"], "standby");
    for r in &set.replicas {
        let live = probe(r.port, "/health/live").await.map(|(s, _)| s);
        assert_eq!(live, Some(200), "replica {} is live", r.name);
    }
    assert_eq!(l.metric("daarion_bridge_leader").await, Some(1.0));
    assert_eq!(s.metric("daarion_bridge_leader").await, Some(0.0));
    let epoch = l.metric("daarion_bridge_leader_epoch").await;
    assert!(epoch.is_some_and(|e| e >= 1.0), "{epoch:?}");

    let (_, admin) = daarion_bridge::keys::create_admin(
        &set.store,
        "e2e",
        None,
        &daarion_bridge::db::audit::Actor::cli(),
    )
    .await
    .unwrap();
    for r in [l, s] {
        let status: Value = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/api/v1/admin/status", r.port))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let seen = &status["leader"];
        assert_eq!(seen["replica"], l.name, "{status}");
        assert_eq!(seen["this_replica"], r.name, "{status}");
        assert_eq!(seen["is_leader"], r.name == l.name, "{status}");
        assert_eq!(seen["epoch"].as_f64(), epoch, "{status}");
    }

    // An encrypted DM, as Element opens it.
    agent_identity(&pool, SOFIA).await;
    let alice = Person::register("alice").await;
    let mut client = E2eeClient::start(&alice).await;
    let room = client.run(&format!("dm {SOFIA}")).await["room"]
        .as_str()
        .unwrap()
        .to_owned();
    client.run(&format!("joined {room} {SOFIA}")).await;
    let mut sent = Vec::new();
    for words in ["amber falcon", "cobalt meadow", "saffron tide"] {
        let id = client
            .run(&format!("send {room} Sofia, say: {words}"))
            .await["event_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let answer = client.run(&format!("expect {room} {SOFIA} {words}")).await;
        assert_trusted(&answer);
        answered_once(&pool, &id).await;
        sent.push(id);
    }
    mirrored_once(&pool, &sent).await;
    one_message_per_run(&pool, &room).await;
    assert_eq!(published_devices(&alice, SOFIA).await.len(), 1);

    // A plaintext DM.
    let dm = room_with(
        &alice,
        &pool,
        json!({ "is_direct": true, "preset": "trusted_private_chat", "invite": [SOFIA] }),
        1,
    )
    .await;
    let mut sent = Vec::new();
    for words in ["granite harbour", "lilac engine", "quartz orchard"] {
        let id = alice
            .send(&dm, json!({ "msgtype": "m.text", "body": words }))
            .await;
        wait_timeline(&alice, &dm, "Sofia's plaintext answer", |t| {
            answers(t, SOFIA)
                .iter()
                .any(|e| e["content"]["body"].as_str().unwrap_or("").contains(words))
        })
        .await;
        answered_once(&pool, &id).await;
        sent.push(id);
    }
    mirrored_once(&pool, &sent).await;
    one_message_per_run(&pool, &dm).await;
    let timeline = timeline(&alice, &dm).await;
    assert_eq!(answers(&timeline, SOFIA).len(), 3, "one answer per message");

    // The same replica led throughout.
    assert_eq!(set.wait_leader(Duration::from_secs(5)).await, leader);
}

/// `kill -9` of the leader mid-load, while Nova streams an answer: the standby takes over
/// within the lease and a few seconds; every event sent around the kill is mirrored once;
/// the run in flight is resumed and answered once; Sofia answers the next encrypted message
/// from the same device, with no red shield. The killed replica comes back as a standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_load_loses_and_doubles_nothing() {
    // The e2e config names the model's port: one test at a time holds it.
    let _serial = serial().lock().await;
    let (model, _) = crate::model::FakeModel::spawn_on("stream", "127.0.0.1:29335").await;
    let db_url = fresh_pg().await;
    let mut set = Replicas::start(&db_url).await;
    let pool = set.store.pool().clone();
    let leader = set.wait_leader(Duration::from_secs(30)).await;
    let standby = 1 - leader;

    // Alice's encrypted DM with Sofia works before the kill.
    agent_identity(&pool, SOFIA).await;
    let alice = Person::register("alice").await;
    let mut client = E2eeClient::start(&alice).await;
    let dm = client.run(&format!("dm {SOFIA}")).await["room"]
        .as_str()
        .unwrap()
        .to_owned();
    client.run(&format!("joined {dm} {SOFIA}")).await;
    client
        .run(&format!("send {dm} Sofia, say: ivory comet"))
        .await;
    assert_trusted(
        &client
            .run(&format!("expect {dm} {SOFIA} ivory comet"))
            .await,
    );
    let devices = published_devices(&alice, SOFIA).await;
    assert_eq!(devices.len(), 1, "{devices:?}");

    // A plaintext group room of two people with Nova (so chatter addresses nobody); a question
    // whose answer streams for ~6 s.
    let bob = Person::register("bob").await;
    let room = room_with(
        &alice,
        &pool,
        json!({ "name": "Load", "preset": "private_chat", "invite": [BOT, NOVA, bob.user_id] }),
        1,
    )
    .await;
    bob.call(
        reqwest::Method::POST,
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        json!({}),
    )
    .await;
    let question = mention(&alice, &room, NOVA, "Nova, tell me a long story").await;
    for _ in 0..300 {
        if !model.requests.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !model.requests.lock().unwrap().is_empty(),
        "Nova's run started"
    );

    // Chatter in the room, the kill in its middle.
    let (halfway, killed) = tokio::sync::oneshot::channel::<()>();
    let sender = again(&alice);
    let burst_room = room.clone();
    let burst = tokio::spawn(async move {
        let mut halfway = Some(halfway);
        let mut ids = Vec::new();
        for i in 0..40 {
            let body = json!({ "msgtype": "m.text", "body": format!("chatter {i}") });
            ids.push(sender.send(&burst_room, body).await);
            if i == 10 {
                let _ = halfway.take().unwrap().send(());
            }
            // A person's pace, not a condition: the burst spans the kill.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ids
    });
    killed.await.unwrap();
    let before_kill = model.requests.lock().unwrap().len();
    let killed_at = Instant::now();
    set.replicas[leader].kill9();
    let took = set.wait_ready(standby, TAKEOVER).await;
    let routed = killed_at.elapsed();
    set.wait_routed(Duration::from_secs(10)).await;
    println!(
        "fail-over: replica {} ready {took:?} after the kill of {}; haproxy routes to it after {:?}",
        set.replicas[standby].name,
        set.replicas[leader].name,
        routed.max(killed_at.elapsed())
    );
    let mut sent = burst.await.unwrap();
    sent.push(question.clone());

    // The killed replica comes back, as a standby.
    set.replicas[leader].restart();
    for _ in 0..600 {
        if set.replicas[leader].ready().await == Some(503) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(set.replicas[leader].ready().await, Some(503));
    assert_eq!(set.wait_leader(Duration::from_secs(5)).await, standby);

    mirrored_once(&pool, &sent).await;
    answered_once(&pool, &question).await;
    let t = wait_timeline(&alice, &room, "Nova's whole story", |t| {
        t.iter().any(|e| {
            e["sender"] == NOVA
                && e["content"]["m.new_content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.ends_with("the end."))
        })
    })
    .await;
    assert_eq!(answers(&t, NOVA).len(), 1, "the story is told once");
    one_message_per_run(&pool, &room).await;
    let calls: Vec<String> = model
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| {
            let last = r["messages"].as_array().and_then(|m| m.last()).cloned();
            format!("{}", last.unwrap_or_default()["content"])
        })
        .collect();
    println!("model calls ({before_kill} before the kill; a resumed run calls again): {calls:?}");

    // The next encrypted message is answered by the same device: no new device, no shield.
    let next = client
        .run(&format!("send {dm} Sofia, say: jade lantern"))
        .await["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_trusted(
        &client
            .run(&format!("expect {dm} {SOFIA} jade lantern"))
            .await,
    );
    answered_once(&pool, &next).await;
    one_message_per_run(&pool, &dm).await;
    assert_eq!(
        published_devices(&alice, SOFIA).await,
        devices,
        "Sofia's device and keys unchanged"
    );
}

/// A leader paused (`SIGSTOP`) past its lease while Nova streams: the standby takes over,
/// resumes the run and answers a new message. Resumed (`SIGCONT`), the old leader steps down
/// (503, metric 0) and writes nothing: no row, no Matrix event. Everything is answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_fenced_and_steps_down() {
    let _serial = serial().lock().await;
    let (model, _) = crate::model::FakeModel::spawn_on("stream", "127.0.0.1:29335").await;
    let db_url = fresh_pg().await;
    let set = Replicas::start(&db_url).await;
    let pool = set.store.pool().clone();
    let leader = set.wait_leader(Duration::from_secs(30)).await;
    let standby = 1 - leader;
    let (old, new) = (&set.replicas[leader], &set.replicas[standby]);
    let epoch = old.metric("daarion_bridge_leader_epoch").await.unwrap();

    let alice = Person::register("alice").await;
    let room = room_with(
        &alice,
        &pool,
        json!({ "name": "Fencing", "preset": "private_chat", "invite": [BOT, NOVA, SOFIA] }),
        2,
    )
    .await;
    let story = mention(&alice, &room, NOVA, "Nova, tell me a long story").await;
    for _ in 0..300 {
        if !model.requests.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !model.requests.lock().unwrap().is_empty(),
        "Nova's run started"
    );

    // Paused mid-run, past the lease.
    signal(old.pid(), "STOP");
    let took = set.wait_ready(standby, TAKEOVER).await;
    set.wait_routed(Duration::from_secs(10)).await;
    println!(
        "take-over from paused {}: {} ready after {took:?}",
        old.name, new.name
    );
    let new_epoch = new.metric("daarion_bridge_leader_epoch").await.unwrap();
    assert!(new_epoch > epoch, "epoch {epoch} → {new_epoch}");

    // The new leader works: a new message, and the story it resumed.
    let hello = mention(&alice, &room, SOFIA, "Sofia, say: after the pause").await;
    answered_once(&pool, &hello).await;
    answered_once(&pool, &story).await;
    let before = wait_timeline(&alice, &room, "Nova's whole story", |t| {
        t.iter().any(|e| {
            e["sender"] == NOVA
                && e["content"]["m.new_content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.ends_with("the end."))
        })
    })
    .await;
    let rows_before = settled(&pool).await;

    // Resumed: it finds its lease gone and steps down at once (503, metric 0); its leader work
    // ends, and it waits as a standby (its log says so).
    let logged = old.log().len();
    signal(old.pid(), "CONT");
    let resumed = Instant::now();
    let mut stepped_down = None;
    for _ in 0..200 {
        if old.ready().await == Some(503) && old.metric("daarion_bridge_leader").await == Some(0.0)
        {
            stepped_down = Some(resumed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stepped_down = stepped_down.expect("the resumed replica steps down");
    let mut standby_again = None;
    for _ in 0..600 {
        if old.log()[logged..].contains("this one is a standby") {
            standby_again = Some(resumed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let standby_again = standby_again.expect("the resumed replica's leader work ends");
    assert_eq!(old.ready_body().await["role"], "standby");
    println!(
        "resumed {}: 503 and metric 0 after {stepped_down:?}, a standby again after {standby_again:?}",
        old.name
    );
    // Anything it still had in flight would have landed by now; a last second for stragglers
    // (nothing to poll for: the claim is that nothing happens).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        written(&pool).await,
        rows_before,
        "the resumed replica wrote nothing (messages, runs, triggers, outbox, audit)"
    );
    let after = timeline(&alice, &room).await;
    assert_eq!(
        after.len(),
        before.len(),
        "no Matrix event after the resume"
    );
    assert_eq!(set.wait_leader(Duration::from_secs(5)).await, standby);
    let log = old.log();
    let stepped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("daarion_bridge::leadership"))
        .map(str::trim)
        .collect();
    println!(
        "replica {}'s log on leadership:\n{}",
        old.name,
        stepped[stepped.len().saturating_sub(8)..].join("\n")
    );

    // Everything answered once; the new leader keeps answering.
    assert_eq!(answers(&after, NOVA).len(), 1, "the story is told once");
    assert_eq!(answers(&after, SOFIA).len(), 1);
    one_message_per_run(&pool, &room).await;
    let last = mention(&alice, &room, SOFIA, "Sofia, say: still here").await;
    answered_once(&pool, &last).await;
    mirrored_once(&pool, &[story, hello, last]).await;
}
