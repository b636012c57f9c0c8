//! A person's room mirrored into the DAARION rows through a real Synapse.

use serde_json::json;

use crate::harness::*;

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
    // microdao_members fills as people join (#26): the room's creator (power 100) administers
    // the microDAO, bob is a member; each change is an event.
    let mq = "SELECT u.matrix_id, mm.role FROM microdao_members mm JOIN users u ON u.id = mm.user_id \
              ORDER BY u.matrix_id";
    wait_rows(&pool, mq, "the microDAO's members", |r| {
        r.contains(&vec![Some(alice.user_id.clone()), Some("admin".into())])
            && r.contains(&vec![Some(bob.user_id.clone()), Some("member".into())])
    })
    .await;
    wait_rows(
        &pool,
        "SELECT topic FROM outbox_events WHERE topic = 'microdao.member.added'",
        "two microdao.member.added events",
        |r| r.len() == 2,
    )
    .await;

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
    // He left the microDAO's last channel he was in: his membership (the bridge's) goes.
    wait_rows(&pool, mq, "bob out of the microDAO", |r| {
        r == [vec![Some(alice.user_id.clone()), Some("admin".into())]]
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
