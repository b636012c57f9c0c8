//! The cost of decryption: 50-event transactions of encrypted messages in a room whose room key
//! Sofia's machine holds, against the same messages in plaintext, interleaved, through the
//! bridge (in-process here: the bench plays the person's client with matrix-sdk-crypto and needs
//! Sofia's machine to exchange keys with). Every encrypted body is prepared before timing.

use std::{collections::BTreeMap, time::Duration};

use matrix_sdk_crypto::{
    EncryptionSettings, OlmMachine,
    types::requests::{AnyOutgoingRequest, ToDeviceRequest},
};
use ruma::{
    OneTimeKeyAlgorithm, OwnedDeviceId, OwnedRoomId, OwnedUserId, UInt,
    api::client::{
        keys::{claim_keys, get_keys, upload_keys},
        to_device::send_event_to_device,
    },
    events::AnyMessageLikeEventContent,
    serde::Raw,
};
use serde_json::{Value, json};

use super::{AS_TOKEN, HS_TOKEN, SENTENCE, free_port, put, stats};

const SOFIA: &str = "@agent_sofia:localhost";
const DEVICE: &str = "SOFIABENCH";
const ALICE: &str = "@alice:localhost";
const ROOM: &str = "!crypto:localhost";

async fn upload(machine: &OlmMachine) -> upload_keys::v3::Request {
    for request in machine.outgoing_requests().await.unwrap() {
        if let AnyOutgoingRequest::KeysUpload(upload) = request.request() {
            let counts =
                BTreeMap::from([(OneTimeKeyAlgorithm::SignedCurve25519, UInt::from(50u32))]);
            machine
                .mark_request_as_sent(
                    request.request_id(),
                    &upload_keys::v3::Response::new(counts),
                )
                .await
                .unwrap();
            return upload.clone();
        }
    }
    panic!("no key upload");
}

/// Alice's machine with a Megolm session shared with Sofia; returns the to-device events.
async fn alice_meets(sofia_keys: &upload_keys::v3::Request) -> (OlmMachine, Vec<Value>) {
    let alice: OwnedUserId = ALICE.try_into().unwrap();
    let sofia: OwnedUserId = SOFIA.try_into().unwrap();
    let device: OwnedDeviceId = DEVICE.into();
    let machine = OlmMachine::new(&alice, "ALICEBENCH".into()).await;
    upload(&machine).await;
    machine
        .update_tracked_users([sofia.as_ref()])
        .await
        .unwrap();
    for request in machine.outgoing_requests().await.unwrap() {
        if let AnyOutgoingRequest::KeysQuery(_) = request.request() {
            let mut response = get_keys::v3::Response::new();
            response.device_keys = BTreeMap::from([(
                sofia.clone(),
                BTreeMap::from([(device.clone(), sofia_keys.device_keys.clone().unwrap())]),
            )]);
            machine
                .mark_request_as_sent(request.request_id(), &response)
                .await
                .unwrap();
        }
    }
    let (id, _) = machine
        .get_missing_sessions([sofia.as_ref()].into_iter())
        .await
        .unwrap()
        .unwrap();
    let (key_id, key) = sofia_keys.one_time_keys.iter().next().unwrap();
    let response = claim_keys::v3::Response::new(BTreeMap::from([(
        sofia.clone(),
        BTreeMap::from([(device, BTreeMap::from([(key_id.clone(), key.clone())]))]),
    )]));
    machine.mark_request_as_sent(&id, &response).await.unwrap();
    let room: OwnedRoomId = ROOM.try_into().unwrap();
    let requests = machine
        .share_room_key(
            &room,
            [sofia.as_ref()].into_iter(),
            EncryptionSettings::default(),
        )
        .await
        .unwrap();
    let mut to_device = Vec::new();
    for request in requests {
        to_device.extend(to_device_events(&request));
        machine
            .mark_request_as_sent(&request.txn_id, &send_event_to_device::v3::Response::new())
            .await
            .unwrap();
    }
    (machine, to_device)
}

fn to_device_events(request: &ToDeviceRequest) -> Vec<Value> {
    let mut out = Vec::new();
    for (user, devices) in &request.messages {
        for (device, content) in devices {
            out.push(
                json!({ "type": request.event_type.to_string(), "sender": ALICE,
                "to_user_id": user, "to_device_id": device.to_string(), "content": content }),
            );
        }
    }
    out
}

fn message(seq: u64, content: Value, kind: &str) -> Value {
    json!({ "type": kind, "event_id": format!("$c{seq}"), "sender": ALICE, "room_id": ROOM,
            "origin_server_ts": 1_700_000_000_000u64 + seq, "content": content, "unsigned": { "age": 5 } })
}

/// Runs the comparison on `db_url` and prints a table.
pub async fn decryption(db_url: &str) {
    let store = daarion_bridge::db::Store::connect(db_url, 4).await.unwrap();
    store.migrate().await.unwrap();
    store.crypto_device(SOFIA, DEVICE).await.unwrap();
    let port = free_port();
    let toml = format!(
        r#"
[homeserver]
url = "http://127.0.0.1:9"
server_name = "localhost"
[appservice]
id = "bench"
listen = "127.0.0.1:{port}"
url = "http://127.0.0.1:{port}"
as_token = "{AS_TOKEN}"
hs_token = "{HS_TOKEN}"
[database]
url = "{db_url}"
[bridge]
default_microdao = "microdao:bench"
[logging]
level = "error"
[encryption]
pickle_key = "bench-pickle-key-0123456789-abcdefghijk"
[[microdaos]]
external_id = "microdao:bench"
name = "Bench"
"#
    );
    let config = daarion_bridge::config::Config::from_toml_str(&toml).unwrap();
    let bridge = daarion_bridge::Bridge::build(config).await.unwrap();
    let sofia = bridge.crypto.as_ref().unwrap().opened()[0].clone();
    let keys = upload(&sofia.machine).await;
    let (alice, to_device) = alice_meets(&keys).await;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bridge.run(listener, async move {
        let _ = stopped.await;
    }));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let setup = json!({
        "events": [
            { "type": "m.room.member", "state_key": "@daarion:localhost", "sender": ALICE, "room_id": ROOM,
              "event_id": "$cinvite", "origin_server_ts": 1_700_000_000_000u64, "content": { "membership": "invite" } },
            { "type": "m.room.member", "state_key": ALICE, "sender": ALICE, "room_id": ROOM,
              "event_id": "$cjoin", "origin_server_ts": 1_700_000_000_000u64, "content": { "membership": "join" } },
        ],
        "de.sorunome.msc2409.to_device": to_device,
    });
    for _ in 0..40 {
        if http.get(format!("{base}/health/live")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    put(&http, &base, "csetup", serde_json::to_vec(&setup).unwrap()).await;

    // The same 50 messages per pair of transactions, once in clear and once encrypted.
    const ROUNDS: usize = 200;
    let room: OwnedRoomId = ROOM.try_into().unwrap();
    let mut seq = 0u64;
    let mut bodies = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let mut plain = Vec::with_capacity(50);
        let mut encrypted = Vec::with_capacity(50);
        for _ in 0..50 {
            seq += 1;
            let content =
                json!({ "msgtype": "m.text", "body": format!("Message {seq}: {SENTENCE}") });
            plain.push(message(seq, content.clone(), "m.room.message"));
            seq += 1;
            let raw: Raw<AnyMessageLikeEventContent> = Raw::new(&content).unwrap().cast_unchecked();
            let sealed = alice
                .encrypt_room_event_raw(&room, "m.room.message", &raw)
                .await
                .unwrap();
            encrypted.push(message(
                seq,
                serde_json::to_value(&sealed.content).unwrap(),
                "m.room.encrypted",
            ));
        }
        bodies.push((
            serde_json::to_vec(&json!({ "events": plain })).unwrap(),
            serde_json::to_vec(&json!({ "events": encrypted })).unwrap(),
        ));
    }
    let (mut clear, mut sealed) = (Vec::new(), Vec::new());
    for (i, (plain, encrypted)) in bodies.into_iter().enumerate() {
        clear.push(put(&http, &base, &format!("cp{i}"), plain).await);
        sealed.push(put(&http, &base, &format!("ce{i}"), encrypted).await);
    }
    // Warm-up rounds out.
    let (clear, sealed) = (stats(clear[20..].to_vec()), stats(sealed[20..].to_vec()));
    println!("\n## Decryption (PostgreSQL, in-process bridge, 50 events per transaction)\n");
    println!("| transactions | p50 ms | p90 | p99 |");
    println!("|---|---:|---:|---:|");
    println!(
        "| plaintext | {:.2} | {:.2} | {:.2} |",
        clear.p50, clear.p90, clear.p99
    );
    println!(
        "| encrypted (key held) | {:.2} | {:.2} | {:.2} |",
        sealed.p50, sealed.p90, sealed.p99
    );
    println!(
        "\ndecryption adds {:.2} ms p50 ({:.1} µs per event)",
        sealed.p50 - clear.p50,
        (sealed.p50 - clear.p50) * 1000.0 / 50.0
    );
    let _ = stop.send(());
    let _ = server.await;
}
