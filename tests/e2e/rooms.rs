//! The platform creates rooms (issue #26), end to end on a real Synapse: the admin API creates
//! an encrypted channel with a person and an agent; the person's matrix-sdk client is invited,
//! sees the room's name and topic, joins, and talks with the agent (answered, decrypted). Then
//! the room is upgraded (`/rooms/{id}/upgrade`): the channel moves to the new room and the agent
//! follows it.

use daarion_bridge::{db::audit::Actor, keys};
use serde_json::{Value, json};

use crate::{
    e2ee::{E2eeClient, assert_trusted},
    encryption::bridge_with_identity,
    harness::*,
};

const SOFIA: &str = "@agent_sofia:localhost";
const AS_TOKEN: &str = "e2e_test_as_token_not_a_secret_0123456789abcdef";

/// A state event of `room` as `person` reads it.
async fn state(person: &Person, room: &str, kind: &str) -> Value {
    person
        .call(
            reqwest::Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room)),
            json!(null),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_creates_an_encrypted_channel_that_follows_an_upgrade() {
    let _serial = serial().lock().await;
    let db_url = fresh_pg().await;
    let bridge = bridge_with_identity(&db_url, SOFIA).await;
    let pool = bridge.store.pool().clone();
    let (_, admin) = keys::create_admin(&bridge.store, "e2e-rooms", None, &Actor::cli())
        .await
        .unwrap();
    let alice = Person::register("alice").await;
    let mut client = E2eeClient::start(&alice).await;

    let slug = format!("garden-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/api/v1/admin/channels", bridge_port()))
        .bearer_auth(&admin)
        .json(&json!({
            "microdao": "microdao:e2e", "slug": slug, "name": "Garden", "topic": "Plants and people",
            "visibility": "private", "members": [alice.user_id], "agents": ["agent:sofia"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let created: Value = r.json().await.unwrap();
    let room = created["room_id"].as_str().unwrap().to_owned();
    let channel = created["channel_id"].as_str().unwrap().to_owned();

    // Alice is invited: she joins and sees the room as the platform named it, encrypted.
    client.run(&format!("join {room}")).await;
    assert_eq!(state(&alice, &room, "m.room.name").await["name"], "Garden");
    assert_eq!(
        state(&alice, &room, "m.room.topic").await["topic"],
        "Plants and people"
    );
    assert_eq!(
        state(&alice, &room, "m.room.encryption").await["algorithm"],
        "m.megolm.v1.aes-sha2"
    );
    client.run(&format!("joined {room} {SOFIA}")).await;
    wait_rows(
        &pool,
        &format!(
            "SELECT m.external_id, c.slug FROM channels c JOIN microdaos m ON m.id = c.microdao_id \
             WHERE c.matrix_room_id = '{room}' AND CAST(c.id AS TEXT) = '{channel}'"
        ),
        "the channel in its microDAO",
        |r| r == [vec![Some("microdao:e2e".to_owned()), Some(slug.clone())]],
    )
    .await;

    // She talks with Sofia; the answer comes back encrypted and decrypts.
    client
        .run(&format!(
            "mention {room} {SOFIA} Sofia, say: juniper lantern"
        ))
        .await;
    let answer = client
        .run(&format!("expect {room} {SOFIA} juniper lantern"))
        .await;
    assert_trusted(&answer);

    // The room is upgraded (by its creator, the bot, through the bridge's token): the channel
    // moves to the replacement, and Sofia follows it.
    let r = reqwest::Client::new()
        .post(format!(
            "{}/_matrix/client/v3/rooms/{}/upgrade",
            homeserver(),
            enc(&room)
        ))
        .bearer_auth(AS_TOKEN)
        .json(&json!({ "new_version": "10" }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let upgraded: Value = r.json().await.unwrap();
    let new = upgraded["replacement_room"].as_str().unwrap().to_owned();
    wait_rows(
        &pool,
        &format!("SELECT matrix_room_id FROM channels WHERE CAST(id AS TEXT) = '{channel}'"),
        "the channel moving to the replacement room",
        |r| r == [vec![Some(new.clone())]],
    )
    .await;
    wait_rows(
        &pool,
        &format!(
            "SELECT CAST(channel_id AS TEXT) FROM bridge_room_aliases WHERE room_id = '{room}'"
        ),
        "the old room kept as an alias",
        |r| r == [vec![Some(channel.clone())]],
    )
    .await;
    // Sofia is a member of the new room, as the homeserver sees it.
    let http = reqwest::Client::new();
    let url = format!(
        "{}/_matrix/client/v3/rooms/{}/joined_members",
        homeserver(),
        enc(&new)
    );
    let mut joined = Value::Null;
    for _ in 0..300 {
        joined = http
            .get(&url)
            .bearer_auth(AS_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if joined["joined"].get(SOFIA).is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(joined["joined"].get(SOFIA).is_some(), "{joined}");
    assert_eq!(
        rows(&pool, "SELECT count(*)::text FROM channels").await,
        [vec![Some("1".to_owned())]],
        "no second channel for the replacement"
    );
    bridge.stop().await;
}
