//! Agents in encrypted rooms, proven with a real E2EE client the bridge did not write
//! (`e2ee`: `tests/e2ee-client` on the `matrix-sdk` crate), against the real Synapse.

use std::time::Duration;

use serde_json::{Value, json};

use crate::e2ee::{E2eeClient, assert_trusted};
use crate::harness::*;

const SOFIA: &str = "@agent_sofia:localhost";

/// Synapse up and the bridge started over `db_url`, once `agent`'s device and cross-signing
/// identity are set up (after the homeserver answered the ping).
pub(crate) async fn bridge_with_identity(db_url: &str, agent: &str) -> RunningBridge {
    ensure_synapse();
    let bridge = RunningBridge::start(db_url).await;
    let q = format!(
        "SELECT kind FROM bridge_crypto_items WHERE user_id = '{agent}' AND kind = 'identity'"
    );
    wait_rows(
        bridge.store.pool(),
        &q,
        "the agent's cross-signing identity",
        |r| r.len() == 1,
    )
    .await;
    bridge
}

/// A person opens an encrypted DM with Sofia exactly as Element does (`is_direct`,
/// `trusted_private_chat`, `m.room.encryption` in the initial state) and writes to her. Her own
/// device reads it, the channel holds the decrypted preview, and her echo answer comes back
/// encrypted (`m.room.encrypted` on the wire) from a device signed by her own cross-signing
/// identity: no red shield. Then the bridge restarts; the second message is answered too, by
/// the same single device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_dm_with_an_agent() {
    let db_url = fresh_pg().await;
    let _serial = serial().lock().await;
    let bridge = bridge_with_identity(&db_url, SOFIA).await;
    let pool = bridge.store.pool().clone();

    // The start-up probe found that Synapse delivers to-device events to the bridge.
    let mut encryption = Value::Null;
    for _ in 0..300 {
        let ready: Value = reqwest::get(format!("http://127.0.0.1:{}/health/ready", bridge_port()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        encryption = ready["encryption"].clone();
        if encryption == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        encryption, "delivered",
        "readiness reports to-device delivery"
    );

    let alice = Person::register("alice").await;
    let mut client = E2eeClient::start(&alice).await;
    let room = client.run(&format!("dm {SOFIA}")).await["room"]
        .as_str()
        .unwrap()
        .to_owned();
    client.run(&format!("joined {room} {SOFIA}")).await;

    client
        .run(&format!("send {room} Sofia, say: tangerine lighthouse"))
        .await;
    let answer = client
        .run(&format!("expect {room} {SOFIA} tangerine lighthouse"))
        .await;
    assert_trusted(&answer);

    // On the wire, every event Sofia sent into the room is encrypted.
    let wire = timeline(&alice, &room).await;
    let from_sofia: Vec<&str> = wire
        .iter()
        .filter(|e| e["sender"] == SOFIA && e.get("state_key").is_none())
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect();
    assert!(
        !from_sofia.is_empty() && from_sofia.iter().all(|t| *t == "m.room.encrypted"),
        "{from_sofia:?}"
    );

    // The channel holds the decrypted preview of Alice's message.
    let q = format!(
        "SELECT m.content_preview FROM messages m JOIN channels c ON c.id = m.channel_id \
         WHERE c.matrix_room_id = '{room}' AND m.content_preview LIKE '%tangerine lighthouse%'"
    );
    wait_rows(&pool, &q, "the decrypted previews", |r| r.len() == 2).await;

    // A restart between two messages: the same single device answers the second one.
    bridge.stop().await;
    let bridge = RunningBridge::start(&db_url).await;
    client
        .run(&format!("send {room} Sofia, now say: violet harbour"))
        .await;
    let answer = client
        .run(&format!("expect {room} {SOFIA} violet harbour"))
        .await;
    assert_trusted(&answer);
    let keys = alice
        .call(
            reqwest::Method::POST,
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { SOFIA: [] } }),
        )
        .await;
    let devices = keys["device_keys"][SOFIA]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        devices.len(),
        1,
        "one device for Sofia across restarts: {devices:?}"
    );
    let q = format!("SELECT device_id FROM bridge_crypto_devices WHERE user_id = '{SOFIA}'");
    let stored = rows(&pool, &q).await;
    assert!(devices.contains_key(stored[0][0].as_deref().unwrap()));
    // Her master key is published: clients can check her device's signature.
    assert!(keys["master_keys"][SOFIA].is_object(), "{keys}");

    // A room key that comes after its event, through Synapse: Alice's client encrypts a message
    // in a new Megolm session and holds back the to-device message carrying its key. The event
    // waits durably, unmirrored and unanswered; once the key arrives it is decrypted, mirrored
    // with its text and answered.
    let late = client
        .run(&format!("late {room} Sofia, say: copper meadow"))
        .await["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let pending = format!("SELECT event_id FROM bridge_crypto_pending WHERE event_id = '{late}'");
    wait_rows(&pool, &pending, "the event waiting for its key", |r| {
        r.len() == 1
    })
    .await;
    let mirrored = format!("SELECT content_preview FROM messages WHERE matrix_event_id = '{late}'");
    assert!(
        rows(&pool, &mirrored).await.is_empty(),
        "not mirrored before its key"
    );
    assert_eq!(client.run("release").await["sent"], 1);
    let answer = client
        .run(&format!("expect {room} {SOFIA} copper meadow"))
        .await;
    assert_trusted(&answer);
    wait_rows(
        &pool,
        &mirrored,
        "the late event's decrypted preview",
        |r| {
            r.len() == 1
                && r[0][0]
                    .as_deref()
                    .is_some_and(|p| p.contains("copper meadow"))
        },
    )
    .await;
    wait_rows(&pool, &pending, "the pending event forgotten", |r| {
        r.is_empty()
    })
    .await;

    // Sofia redacts her last answer through the agent API with a reason. A redaction cannot be
    // encrypted (the homeserver applies it), so the reason must not go out in clear.
    let wire = timeline(&alice, &room).await;
    let target = wire
        .iter()
        .rev()
        .find(|e| e["sender"] == SOFIA && e["type"] == "m.room.encrypted")
        .and_then(|e| e["event_id"].as_str())
        .expect("an answer of Sofia's")
        .to_owned();
    let channel = rows(
        &pool,
        &format!("SELECT id::text FROM channels WHERE matrix_room_id = '{room}'"),
    )
    .await[0][0]
        .clone()
        .unwrap();
    let (_, key) = daarion_bridge::keys::create(
        &bridge.store,
        "agent:sofia",
        "e2e",
        &[],
        &["agent.runtime".into()],
        None,
        &daarion_bridge::db::audit::Actor::cli(),
    )
    .await
    .unwrap();
    let redacted = reqwest::Client::new()
        .delete(format!(
            "http://127.0.0.1:{}/api/v1/channels/{channel}/messages/{}",
            bridge_port(),
            target.replace('$', "%24")
        ))
        .bearer_auth(&key)
        .json(&json!({ "reason": "a private reason" }))
        .send()
        .await
        .unwrap();
    assert_eq!(redacted.status(), 200, "{:?}", redacted.text().await);
    let wire = timeline(&alice, &room).await;
    let redaction = wire
        .iter()
        .find(|e| {
            e["type"] == "m.room.redaction"
                && (e["redacts"] == target.as_str() || e["content"]["redacts"] == target.as_str())
        })
        .expect("the redaction reached the room");
    assert_eq!(redaction["sender"], SOFIA);
    assert!(
        redaction["content"].get("reason").is_none(),
        "no reason in clear: {redaction}"
    );

    bridge.stop().await;
}

/// An encrypted group room with two people: a mention of Nova gets a streamed answer (a
/// message, then edits), encrypted, and both people's clients decrypt the final text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_group_room_gets_a_streamed_answer() {
    const NOVA: &str = "@agent_nova:localhost";
    // The e2e config names the model's port: one test at a time holds it.
    let _serial = serial().lock().await;
    let (model, _) = crate::model::FakeModel::spawn_on("stream", "127.0.0.1:29335").await;
    let db_url = fresh_pg().await;
    let bridge = bridge_with_identity(&db_url, NOVA).await;
    let pool = bridge.store.pool().clone();

    let (alice, bob) = (
        Person::register("alice").await,
        Person::register("bob").await,
    );
    let mut alice_client = E2eeClient::start(&alice).await;
    let mut bob_client = E2eeClient::start(&bob).await;
    let room = alice_client
        .run(&format!("room {NOVA} {}", bob.user_id))
        .await["room"]
        .as_str()
        .unwrap()
        .to_owned();
    bob_client.run(&format!("join {room}")).await;
    alice_client.run(&format!("joined {room} {NOVA}")).await;
    alice_client
        .run(&format!("joined {room} {}", bob.user_id))
        .await;
    bob_client.run(&format!("joined {room} {NOVA}")).await;

    alice_client
        .run(&format!(
            "mention {room} {NOVA} Nova, what is six times seven?"
        ))
        .await;
    for client in [&mut alice_client, &mut bob_client] {
        let answer = client
            .run(&format!("expect {room} {NOVA} The answer is forty-two."))
            .await;
        assert_trusted(&answer);
        assert!(
            answer["edits"].as_u64().unwrap_or(0) >= 1,
            "streamed as edits: {answer}"
        );
    }
    // On the wire, Nova's message and its edits are all encrypted.
    let wire = timeline(&alice, &room).await;
    let from_nova: Vec<&str> = wire
        .iter()
        .filter(|e| e["sender"] == NOVA && e.get("state_key").is_none())
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect();
    assert!(
        from_nova.len() >= 2 && from_nova.iter().all(|t| *t == "m.room.encrypted"),
        "{from_nova:?}"
    );

    // Nova holds the conversation (issue #23): two more turns, with a restart between them.
    // The third request holds both earlier questions and both earlier answers whole (their
    // final edits), decrypted by Nova's own device from the room's encrypted history.
    let completed = |n: usize| {
        let pool = pool.clone();
        async move {
            let q = "SELECT count(*)::text FROM agent_runs WHERE status = 'completed'";
            wait_rows(&pool, q, "the completed runs", |r| {
                r[0][0].as_deref() == Some(n.to_string().as_str())
            })
            .await;
        }
    };
    completed(1).await;
    alice_client
        .run(&format!(
            "mention {room} {NOVA} Nova, remember the colour word TURQUOISE."
        ))
        .await;
    completed(2).await;
    bridge.stop().await;
    let bridge = RunningBridge::start(&db_url).await;
    alice_client
        .run(&format!(
            "mention {room} {NOVA} Nova, which words did I give you?"
        ))
        .await;
    completed(3).await;
    let third = model.requests.lock().unwrap()[2].clone();
    let turns: Vec<(String, String)> = third["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or("").to_owned(),
                m["content"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let said = |role: &str, words: &str| {
        turns
            .iter()
            .filter(|(r, c)| r == role && c.contains(words))
            .count()
    };
    assert_eq!(said("user", "what is six times seven?"), 1, "{third}");
    assert_eq!(said("user", "the colour word TURQUOISE"), 1, "{third}");
    assert_eq!(said("user", "which words did I give you?"), 1, "{third}");
    assert_eq!(
        said("assistant", "The answer is forty-two."),
        2,
        "both earlier answers, whole: {third}"
    );
    assert!(
        turns
            .iter()
            .all(|(r, c)| r != "assistant" || c == "The answer is forty-two."),
        "no streamed fragment stands for an answer: {third}"
    );
    bridge.stop().await;
}

/// Element opens a DM with the bridge bot encrypted, like any DM. The bot has a device of its
/// own: it reads a command there and answers it encrypted, from a device its own cross-signing
/// identity signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_commands_in_an_encrypted_dm() {
    const BOT: &str = "@daarion:localhost";
    let db_url = fresh_pg().await;
    let _serial = serial().lock().await;
    let bridge = bridge_with_identity(&db_url, BOT).await;
    let carol = Person::register("carol").await;
    let mut client = E2eeClient::start(&carol).await;
    let room = client.run(&format!("dm {BOT}")).await["room"]
        .as_str()
        .unwrap()
        .to_owned();
    client.run(&format!("joined {room} {BOT}")).await;
    client.run(&format!("send {room} !daarion agents")).await;
    let answer = client.run(&format!("expect {room} {BOT} Sofia")).await;
    assert_trusted(&answer);
    let wire = timeline(&carol, &room).await;
    assert!(
        wire.iter()
            .filter(|e| e["sender"] == BOT && e.get("state_key").is_none())
            .all(|e| e["type"] == "m.room.encrypted"),
        "the bot's answer is encrypted on the wire"
    );
    bridge.stop().await;
}
