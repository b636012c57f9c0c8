//! Agents living in Matrix through a real Synapse: joining, the agent API, answering.

use std::{process::Command, time::Duration};

use serde_json::{Value, json};

use crate::harness::*;
use crate::model;

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
        &daarion_bridge::db::audit::Actor::cli(),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let api = |method: reqwest::Method, path: String, body: Value| {
        let req = http
            .request(method, format!("http://127.0.0.1:{}{path}", bridge_port()))
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
        &daarion_bridge::db::audit::Actor::cli(),
    )
    .await
    .unwrap();
    let r = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/api/v1/channels/{channel}/messages",
            bridge_port()
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
