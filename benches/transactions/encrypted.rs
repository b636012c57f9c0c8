//! The cost of decryption: 50-event transactions of encrypted messages in a room whose room key
//! Sofia's machine holds, against the same messages in plaintext, interleaved, through the
//! bridge (in-process here: the bench plays the person's client with matrix-sdk-crypto and needs
//! Sofia's machine to exchange keys with). Every encrypted body is prepared before timing.

use std::time::Duration;

use ruma::{OwnedRoomId, events::AnyMessageLikeEventContent, serde::Raw};
use serde_json::{Value, json};

use super::{SENTENCE, bridge_toml, free_port, put, stats};
use crate::e2ee::{ALICE, Alice, SOFIA, SOFIA_DEVICE, upload};

const ROOM: &str = "!crypto:localhost";

fn message(seq: u64, content: Value, kind: &str) -> Value {
    json!({ "type": kind, "event_id": format!("$c{seq}"), "sender": ALICE, "room_id": ROOM,
            "origin_server_ts": 1_700_000_000_000u64 + seq, "content": content, "unsigned": { "age": 5 } })
}

/// Runs the comparison on `db_url` and prints a table.
pub async fn decryption(db_url: &str) {
    let store = daarion_bridge::db::Store::connect(db_url, 4).await.unwrap();
    store.migrate().await.unwrap();
    store.crypto().device(SOFIA, SOFIA_DEVICE).await.unwrap();
    let port = free_port();
    let toml = bridge_toml(
        port,
        db_url,
        "http://127.0.0.1:9",
        "[encryption]\npickle_key = \"bench-pickle-key-0123456789-abcdefghijk\"",
    );
    let config = daarion_bridge::config::Config::from_toml_str(&toml).unwrap();
    let bridge = daarion_bridge::Bridge::build(config).await.unwrap();
    let sofia = bridge.crypto.as_ref().unwrap().opened()[0].clone();
    let keys = upload(&sofia.machine).await;
    let mut alice = Alice::meet(&keys).await;
    alice.room = ROOM.try_into().unwrap();
    // One session for the whole run (the default rotates every 100 messages).
    let to_device = alice
        .share_key_with(matrix_sdk_crypto::EncryptionSettings {
            rotation_period_msgs: u64::MAX,
            rotation_period: Duration::from_secs(86_400),
            ..Default::default()
        })
        .await;
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
                .machine
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
