//! End-to-end encryption below the homeserver: Sofia's crypto engine (the bridge's
//! [`Crypto`], its store in the test database) against a person's matrix-sdk-crypto
//! `OlmMachine` (in memory), with the homeserver's part (key upload, query, claim, to-device
//! delivery) played by the test. Covers the store surviving a reopen, nothing stored in clear,
//! room keys arriving before, with and after their event, and hostile input.

use std::sync::Arc;

use daarion_bridge::{crypto::Crypto, matrix::Homeserver};
use rstest::rstest;
use ruma::{
    api::{appservice::event::push_events, client::keys::upload_keys},
    serde::Raw,
};
use serde_json::{Value, json};

use crate::{
    e2ee::{ALICE, Alice, SOFIA, SOFIA_DEVICE, upload},
    support::{Backend, TestApp},
};

const PICKLE_KEY: &str = "test-pickle-key-0123456789-abcdefghij";

async fn crypto(app: &TestApp) -> Arc<Crypto> {
    // Nothing listens on port 9: the engine's own requests fail (and are only logged).
    let hs = Homeserver::new(
        "http://127.0.0.1:9",
        "as_token",
        "@daarion:localhost".try_into().unwrap(),
    )
    .unwrap();
    Crypto::open(app.store.crypto(), hs, PICKLE_KEY, true)
        .await
        .expect("crypto opens")
}

fn transaction(events: Vec<Value>, to_device: Vec<Value>) -> push_events::v1::Request {
    let events = events
        .into_iter()
        .map(|e| Raw::from_json(serde_json::value::to_raw_value(&e).unwrap()))
        .collect();
    let mut request = push_events::v1::Request::new("txn".into(), events);
    request.to_device = to_device
        .into_iter()
        .map(|e| Raw::from_json(serde_json::value::to_raw_value(&e).unwrap()))
        .collect();
    request
}

/// Sofia's join of `room` (keys for a room can only come once an agent is in it).
fn sofia_joins(room: &str) -> Value {
    json!({ "type": "m.room.member", "state_key": SOFIA, "sender": SOFIA, "room_id": room,
            "event_id": format!("$join-{room}"), "origin_server_ts": 1_700_000_000_000u64,
            "content": { "membership": "join" } })
}

fn bodies(prepared: &daarion_bridge::crypto::inbound::Prepared) -> Vec<String> {
    prepared
        .events
        .iter()
        .map(|e| {
            let v: Value = serde_json::from_str(e.get()).unwrap();
            format!(
                "{}: {}",
                v["type"].as_str().unwrap_or(""),
                v["content"]["body"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Sofia's engine with a device (stored, as after a first start) and her keys uploaded.
async fn sofia(app: &TestApp) -> (Arc<Crypto>, upload_keys::v3::Request) {
    app.store
        .crypto()
        .device(SOFIA, SOFIA_DEVICE)
        .await
        .unwrap();
    let crypto = crypto(app).await;
    let machines = crypto.opened();
    assert_eq!(
        machines.len(),
        1,
        "the stored device is opened without the homeserver"
    );
    let uploaded = upload(&machines[0].machine).await;
    (crypto, uploaded)
}

/// A room key that arrives after its event (the usual order across transactions): the event
/// waits durably, then comes out decrypted, once; one in the same transaction as its key
/// decrypts at once. The state survives a reopen of the store: the same identity, and the room
/// key still opens Alice's next message. No value is stored in clear.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_events_decrypt_whatever_the_key_order(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let metrics = daarion_bridge::metrics::Metrics::new();
    let (crypto, uploaded) = sofia(&app).await;
    let alice = Alice::meet(&uploaded).await;
    let keys = alice.share_key().await;

    // The event first, its key in the next transaction.
    let early = alice.say("$early", "the early bird").await;
    let join = sofia_joins("!secret:localhost");
    let prepared = crypto
        .prepare(
            &transaction(vec![join.clone(), early.clone()], vec![]),
            &metrics,
        )
        .await
        .unwrap()
        .expect("work for the crypto engines");
    assert!(
        prepared.events.len() == 1,
        "it waits for its key: {:?}",
        bodies(&prepared)
    );
    assert_eq!(app.store.crypto().pending_count().await.unwrap(), 1);
    // A replay of that transaction keeps one pending row.
    crypto
        .prepare(&transaction(vec![join, early], vec![]), &metrics)
        .await
        .unwrap()
        .expect("work for the crypto engines");
    assert_eq!(app.store.crypto().pending_count().await.unwrap(), 1);

    let prepared = crypto
        .prepare(&transaction(vec![], keys), &metrics)
        .await
        .unwrap()
        .expect("work for the crypto engines");
    assert_eq!(bodies(&prepared), ["m.room.message: the early bird"]);
    assert_eq!(prepared.late, ["$early"]);
    let event: Value = serde_json::from_str(prepared.events[0].get()).unwrap();
    assert_eq!(event["event_id"], "$early");
    assert_eq!(event["sender"], ALICE);
    assert_eq!(event["room_id"], "!secret:localhost");
    app.store.crypto().pending_remove("$early").await.unwrap();

    // Key known: decrypted in its own transaction.
    let now = alice.say("$now", "right on time").await;
    let prepared = crypto
        .prepare(&transaction(vec![now], vec![]), &metrics)
        .await
        .unwrap()
        .expect("work for the crypto engines");
    assert_eq!(bodies(&prepared), ["m.room.message: right on time"]);

    // Many at once, decrypted in two lanes (each with its own copy of the session), twice
    // (the second time from the copies kept live): all of them, in order. A plaintext event,
    // garbage and a message of an unknown session (in a room without agents) among them, in
    // either lane, stay in their places as they came.
    let mut unshared = Unshared::new();
    for round in 0..2 {
        let mut many = Vec::new();
        let mut expected = Vec::new();
        for i in 0..20 {
            if i == 7 {
                many.push(crate::ev::text(&format!("plain{round}"), ALICE, "in clear"));
                expected.push("m.room.message: in clear".to_owned());
            }
            if i == 3 || i == 15 {
                many.push(json!({ "type": "m.room.encrypted", "event_id": format!("$junk{round}-{i}"),
                    "room_id": "!secret:localhost", "sender": ALICE, "origin_server_ts": 1_700_000_000_000u64,
                    "content": { "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": 12 } }));
                many.push(unshared.event(&format!("$unknown{round}-{i}"), i));
                expected.extend([
                    "m.room.encrypted: ".to_owned(),
                    "m.room.encrypted: ".to_owned(),
                ]);
            }
            many.push(
                alice
                    .say(
                        &format!("$many{round}-{i}"),
                        &format!("message {round}-{i}"),
                    )
                    .await,
            );
            expected.push(format!("m.room.message: message {round}-{i}"));
        }
        let prepared = crypto
            .prepare(&transaction(many, vec![]), &metrics)
            .await
            .unwrap()
            .expect("work for the crypto engines");
        assert_eq!(bodies(&prepared), expected);
    }

    // A reopen: same device identity, and the stored room key opens the next message.
    let identity = crypto.opened()[0].machine.identity_keys();
    drop(crypto);
    let reopened = self::crypto(&app).await;
    assert_eq!(reopened.opened()[0].machine.identity_keys(), identity);
    let later = alice.say("$later", "after the restart").await;
    let prepared = reopened
        .prepare(&transaction(vec![later], vec![]), &metrics)
        .await
        .unwrap()
        .expect("work for the crypto engines");
    assert_eq!(bodies(&prepared), ["m.room.message: after the restart"]);

    // With `store_previews = false` the decrypted event is marked to keep its text out of the
    // preview, and the mirror stores `[encrypted]` (the text still reaches the planner).
    drop(reopened);
    let hs = Homeserver::new(
        "http://127.0.0.1:9",
        "as_token",
        "@daarion:localhost".try_into().unwrap(),
    )
    .unwrap();
    let private = Crypto::open(app.store.crypto(), hs, PICKLE_KEY, false)
        .await
        .unwrap();
    let hidden = alice.say("$hidden", "keep me out of the database").await;
    let prepared = private
        .prepare(&transaction(vec![hidden], vec![]), &metrics)
        .await
        .unwrap()
        .expect("work for the crypto engines");
    let event: Value = serde_json::from_str(prepared.events[0].get()).unwrap();
    assert_eq!(event["content"]["body"], "keep me out of the database");
    assert_eq!(event[daarion_bridge::model::HIDE_PREVIEW], true);
    crate::mirrored(&app).await;
    let mut marked = crate::ev::text("hidden2", "@alice:localhost", "a private thought");
    marked[daarion_bridge::model::HIDE_PREVIEW] = json!(true);
    let (status, _) = app.put_txn("hide-1", vec![marked]).await;
    assert_eq!(status, 200);
    assert_eq!(
        app.col("SELECT content_preview FROM messages WHERE matrix_event_id = '$hidden2'")
            .await,
        ["[encrypted]"]
    );

    // Nothing in clear: no stored value shows JSON, a pickle, or Sofia's public identity key.
    let curve = identity.curve25519.to_base64();
    let values: Vec<Vec<u8>> = match app.store.pool() {
        daarion_bridge::db::Pool::Pg(p) => {
            sqlx::query_scalar("SELECT value FROM bridge_crypto_items")
                .fetch_all(p)
                .await
                .unwrap()
        }
        daarion_bridge::db::Pool::Sqlite(p) => {
            sqlx::query_scalar("SELECT value FROM bridge_crypto_items")
                .fetch_all(p)
                .await
                .unwrap()
        }
    };
    assert!(
        values.len() > 5,
        "the state is stored: {} rows",
        values.len()
    );
    for value in &values {
        let text = String::from_utf8_lossy(value);
        for clear in [
            "pickle",
            "\"session_id\"",
            "signed_curve25519",
            curve.as_str(),
        ] {
            assert!(!text.contains(clear), "`{clear}` stored in clear");
        }
    }
    // A wrong pickle key cannot open the store.
    let hs = Homeserver::new(
        "http://127.0.0.1:9",
        "as_token",
        "@daarion:localhost".try_into().unwrap(),
    )
    .unwrap();
    let wrong = Crypto::open(
        app.store.crypto(),
        hs,
        "another-pickle-key-0123456789-abcdefgh",
        true,
    )
    .await;
    assert!(wrong.is_err(), "a wrong pickle key must not open the store");
}

/// Hostile input never fails a transaction: garbage and misaddressed to-device events, a wrong
/// algorithm, garbage ciphertext, an unknown session, a forged sender, an event without an id.
/// Each is passed on (to be mirrored as `[encrypted]`), kept pending, or ignored, and counted.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_encrypted_input_never_fails_a_transaction(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let metrics = daarion_bridge::metrics::Metrics::new();
    let (crypto, uploaded) = sofia(&app).await;
    let alice = Alice::meet(&uploaded).await;
    let keys = alice.share_key().await;
    let good = alice.say("$good", "still fine").await;
    let mut forged = alice.say("$forged", "who am I").await;
    // A well-formed event of a session nobody shared (its key may still come): it waits.
    let mut unknown = alice.say("$unknown", "not for you yet").await;
    unknown["content"]["session_id"] = json!("unknown-session");
    forged["sender"] = json!("@mallory:localhost");
    let to_device = vec![
        json!("not an object"),
        json!({ "type": "m.room.encrypted", "content": {} }),
        json!({ "type": "m.room.encrypted", "to_user_id": "@nobody:localhost", "to_device_id": "X", "sender": ALICE, "content": {} }),
        json!({ "type": "m.room.encrypted", "to_user_id": SOFIA, "to_device_id": SOFIA_DEVICE, "sender": ALICE,
                "content": { "algorithm": "m.olm.v1.curve25519-aes-sha2", "sender_key": "garbage", "ciphertext": { "nope": { "type": 0, "body": "AAAA" } } } }),
        json!({ "type": "m.room_key", "to_user_id": SOFIA, "to_device_id": SOFIA_DEVICE, "sender": ALICE,
                "content": { "algorithm": "m.megolm.v1.aes-sha2", "room_id": "!secret:localhost", "session_id": "forged", "session_key": "AAAA" } }),
    ]
    .into_iter()
    .chain(keys)
    .collect();
    let base = |id: &str, content: Value| {
        json!({ "type": "m.room.encrypted", "event_id": id, "room_id": "!secret:localhost", "sender": ALICE,
                "origin_server_ts": 1_700_000_000_000u64, "content": content })
    };
    let events = vec![
        sofia_joins("!secret:localhost"),
        base(
            "$olm",
            json!({ "algorithm": "m.olm.v1.curve25519-aes-sha2", "ciphertext": {} }),
        ),
        base(
            "$garbage",
            json!({ "algorithm": "m.megolm.v1.aes-sha2", "sender_key": "x", "device_id": "D", "session_id": "s", "ciphertext": "!!!not base64\u{0}" }),
        ),
        base(
            "$short",
            json!({ "algorithm": "m.megolm.v1.aes-sha2", "sender_key": "x", "device_id": "D", "session_id": "s2", "ciphertext": "AwgAEhAAAAAA" }),
        ),
        unknown,
        base(
            "$weird",
            json!({ "algorithm": "org.example.rot13", "ciphertext": "uryyb" }),
        ),
        base("$nocontent", json!("a string")),
        json!({ "type": "m.room.encrypted", "room_id": "!secret:localhost", "sender": ALICE, "content": {} }),
        forged,
        good,
    ];
    let prepared = crypto
        .prepare(&transaction(events, to_device), &metrics)
        .await
        .expect("hostile input never fails the transaction")
        .expect("work for the crypto engines");
    let out = bodies(&prepared);
    // The good message decrypted; every bad one passed on untouched (mirrored as [encrypted]).
    assert!(
        out.contains(&"m.room.message: still fine".to_owned()),
        "{out:?}"
    );
    let passed_on = out
        .iter()
        .filter(|b| b.starts_with("m.room.encrypted"))
        .count();
    assert!(passed_on >= 5, "{out:?}");
    // The unknown session waits for a key that may still come.
    assert_eq!(app.store.crypto().pending_count().await.unwrap(), 1);
    let text = metrics.render();
    for outcome in ["to_device_ignored", "undecryptable", "decrypted", "pending"] {
        assert!(
            text.contains(&format!("crypto_events_total{{outcome=\"{outcome}\"}}")),
            "{outcome} not counted:\n{text}"
        );
    }
}

/// Well-formed Megolm messages of a session nobody shared (their key never comes).
pub(crate) struct Unshared {
    session: matrix_sdk_crypto::vodozemac::megolm::GroupSession,
    sender_key: String,
}

impl Unshared {
    pub(crate) fn new() -> Self {
        Self {
            session: matrix_sdk_crypto::vodozemac::megolm::GroupSession::new(Default::default()),
            sender_key: matrix_sdk_crypto::vodozemac::Curve25519PublicKey::from(
                &matrix_sdk_crypto::vodozemac::Curve25519SecretKey::new(),
            )
            .to_base64(),
        }
    }

    /// The next message of the session, as Alice's event `id` in the test room.
    pub(crate) fn event(&mut self, id: &str, ts_offset: u64) -> Value {
        json!({ "type": "m.room.encrypted", "event_id": id, "room_id": crate::ev::ROOM, "sender": ALICE,
                "origin_server_ts": 1_700_000_000_000u64 + ts_offset,
                "content": { "algorithm": "m.megolm.v1.aes-sha2", "sender_key": self.sender_key, "device_id": "D",
                             "session_id": self.session.session_id(),
                             "ciphertext": self.session.encrypt("never readable").to_base64() } })
    }
}

/// Sofia joins the test room (keys for it can reach her from then on).
async fn sofia_joins_the_room(app: &TestApp) {
    let (status, _) = app
        .put_txn(
            "sofia-joins",
            vec![crate::ev::member("sj", SOFIA, SOFIA, "join")],
        )
        .await;
    assert_eq!(status, 200);
}

/// A bridge with encryption on (plus `extra` in `[encryption]`), in a mirrored room, with
/// Sofia's device stored from an earlier start: it opens her machine before serving.
pub(crate) async fn encrypted_bridge(b: Backend, extra: &str) -> TestApp {
    let prepared = TestApp::prepare(b, |toml| {
        format!("{toml}\n[encryption]\npickle_key = \"{PICKLE_KEY}\"\n{extra}\n")
    })
    .await;
    prepared
        .store
        .crypto()
        .device(SOFIA, SOFIA_DEVICE)
        .await
        .unwrap();
    let app = prepared.restart().await;
    crate::mirrored(&app).await;
    app
}

/// Through the bridge itself, with encryption on: a transaction of hostile encrypted and
/// to-device events is answered 200 and its undecryptable events are mirrored as `[encrypted]`; an
/// event whose key never comes waits in `bridge_crypto_pending` until `pending_max_age`, then is
/// mirrored as `[encrypted]` and forgotten.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_events_wait_then_give_up(#[case] b: Backend) {
    let app = encrypted_bridge(b, "pending_max_age = \"1s\"").await;
    // A well-formed Megolm message of a session nobody shared.
    let mut unshared = Unshared::new();
    let mut unknown_session = |id: &str| unshared.event(id, 0);
    let garbage = json!({ "type": "m.room.encrypted", "event_id": "$garbage", "room_id": crate::ev::ROOM,
        "sender": "@alice:localhost", "origin_server_ts": 1_700_000_000_000u64,
        "content": { "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": 12 } });
    // A room the bridge does not mirror, with no agent: no key can come to any device of the
    // bridge's, so nothing waits.
    let mut elsewhere = unknown_session("$nobody");
    elsewhere["room_id"] = json!("!elsewhere:localhost");
    let (status, _) = app
        .put_raw(
            "enc-0",
            serde_json::to_vec(&json!({ "events": [elsewhere] })).unwrap(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(app.store.crypto().pending_count().await.unwrap(), 0);
    let body = json!({
        "events": [crate::ev::member("sj", SOFIA, SOFIA, "join"), unknown_session("$waiting"), garbage],
        "de.sorunome.msc2409.to_device": [
            "junk",
            { "type": "m.room.encrypted", "to_user_id": SOFIA, "to_device_id": SOFIA_DEVICE, "sender": "@alice:localhost", "content": { "ciphertext": "no" } }
        ],
        "org.matrix.msc3202.device_lists": { "changed": ["@alice:localhost"], "left": [] },
        "org.matrix.msc3202.device_one_time_keys_count": { SOFIA: { SOFIA_DEVICE: { "signed_curve25519": 50 } } }
    });
    let (status, answer) = app
        .put_raw("enc-1", serde_json::to_vec(&body).unwrap())
        .await;
    assert_eq!(status, 200, "{answer}");
    let preview = |id: &'static str| {
        let app = &app;
        async move {
            app.col(&format!(
                "SELECT content_preview FROM messages WHERE matrix_event_id = '{id}'"
            ))
            .await
        }
    };
    assert_eq!(preview("$garbage").await, ["[encrypted]"]);
    assert!(preview("$waiting").await.is_empty(), "it waits for its key");
    assert_eq!(app.store.crypto().pending_count().await.unwrap(), 1);
    app.eventually(
        "the waiting event given up on",
        std::time::Duration::from_secs(10),
        || async {
            preview("$waiting").await == ["[encrypted]"]
                && app.store.crypto().pending_count().await.unwrap() == 0
        },
    )
    .await;
}

/// A question whose room key arrives in a later transaction is still answered: it waits,
/// unmirrored, then comes out decrypted with the key's transaction, is mirrored with its text
/// and becomes Sofia's run.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_whose_key_comes_late_is_answered(#[case] b: Backend) {
    let app = encrypted_bridge(b, "").await;
    sofia_joins_the_room(&app).await;
    let crypto = app.crypto.clone().expect("encryption is on");
    let uploaded = upload(&crypto.opened()[0].machine).await;
    let mut alice = Alice::meet(&uploaded).await;
    alice.room = crate::ev::ROOM.try_into().unwrap();
    let keys = alice.share_key().await;
    let mut question = alice
        .say_content(
            "$late-question",
            json!({ "msgtype": "m.text", "body": "Sofia, are you there?", "m.mentions": { "user_ids": [SOFIA] } }),
        )
        .await;
    question["origin_server_ts"] = json!(daarion_bridge::model::Ts::now().millis());

    let body = |v: Value| serde_json::to_vec(&v).unwrap();
    let (status, _) = app
        .put_raw("late-1", body(json!({ "events": [question] })))
        .await;
    assert_eq!(status, 200);
    let preview = "SELECT content_preview FROM messages WHERE matrix_event_id = '$late-question'";
    assert!(app.col(preview).await.is_empty(), "it waits for its key");
    assert_eq!(app.store.crypto().pending_count().await.unwrap(), 1);

    let (status, _) = app
        // Under MSC4203's stable field name this time.
        .put_raw("late-2", body(json!({ "events": [], "to_device": keys })))
        .await;
    assert_eq!(status, 200);
    assert_eq!(app.col(preview).await, ["Sofia, are you there?"]);
    assert_eq!(app.store.crypto().pending_count().await.unwrap(), 0);
    app.eventually(
        "Sofia's run for the late question",
        std::time::Duration::from_secs(10),
        || async {
            !app.col("SELECT status FROM agent_runs WHERE trigger_event_id = '$late-question'")
                .await
                .is_empty()
        },
    )
    .await;
}

/// The bot has a device of its own (people write commands to it in encrypted DMs), so a room
/// key can come in any mirrored room, agents or not: an event whose key is missing waits there
/// instead of being mirrored `[encrypted]` at once.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_bot_device_every_mirrored_room_waits_for_keys(#[case] b: Backend) {
    let prepared = TestApp::prepare(b, |toml| {
        format!("{toml}\n[encryption]\npickle_key = \"{PICKLE_KEY}\"\n")
    })
    .await;
    prepared
        .store
        .crypto()
        .device(crate::ev::BOT, "BOTDEVICE")
        .await
        .unwrap();
    let app = prepared.restart().await;
    crate::mirrored(&app).await;
    let crypto = app.crypto.clone().expect("encryption is on");
    assert!(
        crypto
            .opened()
            .iter()
            .any(|m| m.user.as_str() == crate::ev::BOT),
        "the bot's machine is opened before serving"
    );
    let mut unshared = Unshared::new();
    let (status, _) = app
        .put_txn("bot-key-1", vec![unshared.event("$for-the-bot", 0)])
        .await;
    assert_eq!(status, 200);
    assert!(
        app.col("SELECT content_preview FROM messages WHERE matrix_event_id = '$for-the-bot'")
            .await
            .is_empty(),
        "it waits for its key"
    );
    assert_eq!(app.store.crypto().pending_count().await.unwrap(), 1);
}

/// The count bound: past `pending_max` waiting events, the oldest are mirrored as
/// `[encrypted]` whatever their age.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_events_are_bounded_in_count(#[case] b: Backend) {
    let app = encrypted_bridge(b, "pending_max_age = \"1h\"").await;
    sofia_joins_the_room(&app).await;
    let mut unshared = Unshared::new();
    for (i, id) in ["$first", "$second", "$third"].into_iter().enumerate() {
        let event = unshared.event(id, i as u64);
        let (status, _) = app.put_txn(&format!("bound-{i}"), vec![event]).await;
        assert_eq!(status, 200);
    }
    assert_eq!(app.store.crypto().pending_count().await.unwrap(), 3);
    let bounds = daarion_bridge::bridge::pending::Bounds {
        max_age: std::time::Duration::from_secs(3600),
        max_count: 1,
    };
    let metrics = daarion_bridge::metrics::Metrics::new();
    let settled = daarion_bridge::bridge::pending::expire(
        app.crypto.as_ref().unwrap(),
        app.mirror.as_ref().unwrap(),
        &app.store.crypto(),
        &metrics,
        bounds,
        daarion_bridge::model::Ts::now(),
    )
    .await
    .unwrap();
    assert_eq!(settled, 2, "the two oldest go");
    assert_eq!(app.store.crypto().pending_count().await.unwrap(), 1);
    let mirrored = app
        .col("SELECT matrix_event_id FROM messages WHERE content_preview = '[encrypted]' ORDER BY matrix_event_id")
        .await;
    assert_eq!(mirrored, ["$first", "$second"]);
    assert!(
        metrics
            .render()
            .contains("crypto_events_total{outcome=\"expired\"} 2")
    );
}
