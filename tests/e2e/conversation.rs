//! An agent holding a conversation in an encrypted direct chat (issue #23), with a real E2EE
//! client the bridge did not write (`tests/e2ee-client`, matrix-sdk) and the real Synapse: a
//! person edits, redacts, writes in a thread, replies to an old message, says `forget` and
//! `stop`; what the fake model is sent shows what the agent was given each time.

use serde_json::Value;

use crate::{
    e2ee::{E2eeClient, assert_trusted},
    encryption::bridge_with_identity,
    harness::*,
};

const NOVA: &str = "@agent_nova:localhost";

/// The user and assistant turns of a model request (after the system prompt), as one text per
/// turn: `role: content`.
fn turns(request: &Value) -> Vec<String> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|m| {
            format!(
                "{}: {}",
                m["role"].as_str().unwrap_or(""),
                m["content"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_dm_with_edits_redactions_threads_replies_forget_and_stop() {
    // The e2e config names the model's port: one test at a time holds it.
    let _serial = serial().lock().await;
    let (model, _) = crate::model::FakeModel::spawn_on("stream", "127.0.0.1:29335").await;
    let db_url = fresh_pg().await;
    let bridge = bridge_with_identity(&db_url, NOVA).await;
    let pool = bridge.store.pool().clone();
    let runs = |status: &'static str, n: usize| {
        let pool = pool.clone();
        async move {
            let q = format!("SELECT count(*)::text FROM agent_runs WHERE status = '{status}'");
            wait_rows(&pool, &q, "the runs", |r| {
                r[0][0].as_deref() == Some(n.to_string().as_str())
            })
            .await;
        }
    };
    let request = |n: usize| turns(&model.requests.lock().unwrap()[n]);

    let dana = Person::register("dana").await;
    let mut client = E2eeClient::start(&dana).await;
    let room = client.run(&format!("dm {NOVA}")).await["room"]
        .as_str()
        .unwrap()
        .to_owned();
    client.run(&format!("joined {room} {NOVA}")).await;
    let id = |answer: Value| answer["event_id"].as_str().unwrap().to_owned();

    // A question, then its edit (which asks nothing: edits are not questions by default).
    let q1 = id(client
        .run(&format!("send {room} remember the fruit word PAPYA"))
        .await);
    runs("completed", 1).await;
    client
        .run(&format!("edit {room} {q1} remember the fruit word MANGO"))
        .await;
    // A secret, answered, then redacted.
    let secret = id(client
        .run(&format!("send {room} my password is hunter2"))
        .await);
    runs("completed", 2).await;
    client.run(&format!("redact {room} {secret}")).await;

    // In the thread of the first message: the thread is the context (its root, edited).
    client
        .run(&format!("thread {room} {q1} which fruit, in this thread?"))
        .await;
    runs("completed", 3).await;
    // Synapse names a new user by its localpart.
    let me = &dana.user_id[1..dana.user_id.find(':').unwrap()];
    assert_eq!(
        request(2),
        [
            format!("user: {me}: remember the fruit word MANGO"),
            format!("user: {me}: which fruit, in this thread?"),
        ],
        "the thread, its root as edited"
    );

    // A reply to the first message in the main timeline: the main timeline without the thread
    // reply, the edit applied, the redacted secret gone, the answers whole.
    client
        .run(&format!("reply {room} {q1} which fruit was that?"))
        .await;
    runs("completed", 4).await;
    let main_turns = request(3);
    let main = main_turns.join("\n");
    assert!(main.contains("remember the fruit word MANGO"), "{main}");
    assert!(main.contains("which fruit was that?"), "{main}");
    for gone in ["PAPYA", "hunter2", "in this thread"] {
        assert!(
            !main.contains(gone),
            "`{gone}` must not reach the model: {main}"
        );
    }
    let answers: Vec<&String> = main_turns
        .iter()
        .filter(|t| t.starts_with("assistant: "))
        .collect();
    assert!(
        answers.len() == 2
            && answers
                .iter()
                .all(|t| *t == "assistant: The answer is forty-two."),
        "both answers, whole: {main}"
    );

    // `forget`, bare in the DM: Nova answers it herself (the bot is not here), encrypted.
    client.run(&format!("send {room} forget")).await;
    let done = client
        .run(&format!("expect {room} {NOVA} I forget everything"))
        .await;
    assert_trusted(&done);
    client
        .run(&format!("send {room} what do you remember now?"))
        .await;
    runs("completed", 5).await;
    let after = request(4).join("\n");
    assert!(after.contains("what do you remember now?"), "{after}");
    for gone in ["MANGO", "which fruit"] {
        assert!(!after.contains(gone), "forgotten, `{gone}`: {after}");
    }

    // `stop` while a long answer streams: what was written stays, marked; the run is cancelled.
    client
        .run(&format!("send {room} tell me a long story"))
        .await;
    client.run(&format!("expect {room} {NOVA} and on")).await;
    client.run(&format!("send {room} stop")).await;
    let stopped = client.run(&format!("expect {room} {NOVA} Stopped.")).await;
    assert_trusted(&stopped);
    runs("cancelled", 1).await;
    let marked = client
        .run(&format!("expect {room} {NOVA} _(stopped)_"))
        .await;
    assert!(
        !marked["body"].as_str().unwrap().contains("the end."),
        "{marked}"
    );
    bridge.stop().await;
}

/// Three turns in a plaintext DM (a client without encryption): the third request holds both
/// earlier questions and both earlier answers whole (their final edits, not streamed pieces).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_turns_in_a_plaintext_dm() {
    let _serial = serial().lock().await;
    let (model, _) = crate::model::FakeModel::spawn_on("stream", "127.0.0.1:29335").await;
    let db_url = fresh_pg().await;
    ensure_synapse();
    let bridge = RunningBridge::start(&db_url).await;
    let pool = bridge.store.pool().clone();
    let fay = Person::register("fay").await;
    let dm = fay
        .call(
            reqwest::Method::POST,
            "/_matrix/client/v3/createRoom",
            serde_json::json!({ "is_direct": true, "preset": "trusted_private_chat", "invite": [NOVA] }),
        )
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let q = format!(
        "SELECT s.status FROM agent_sessions s JOIN channels c ON c.id = s.channel_id WHERE c.matrix_room_id = '{dm}'"
    );
    wait_rows(&pool, &q, "Nova in the DM", |r| !r.is_empty()).await;
    for (n, text) in [
        "remember the fruit word PAPAYA",
        "and the colour word TURQUOISE",
        "which words did I give you?",
    ]
    .into_iter()
    .enumerate()
    {
        fay.send(
            &dm,
            serde_json::json!({ "msgtype": "m.text", "body": text }),
        )
        .await;
        let done = "SELECT count(*)::text FROM agent_runs WHERE status = 'completed'";
        wait_rows(&pool, done, "the run", |r| {
            r[0][0].as_deref() == Some((n + 1).to_string().as_str())
        })
        .await;
    }
    let third = turns(&model.requests.lock().unwrap()[2]).join("\n");
    for said in [
        "remember the fruit word PAPAYA",
        "and the colour word TURQUOISE",
        "which words did I give you?",
    ] {
        assert!(third.contains(said), "{said}: {third}");
    }
    assert_eq!(
        third.matches("assistant: The answer is forty-two.").count(),
        2,
        "both answers whole: {third}"
    );
    bridge.stop().await;
}
