//! Rooms that move (issue #26): `!daarion adopt` places a room into a microDAO; a tombstone moves
//! the channel to the replacement room (or archives it without one). Audit rows and outbox events
//! for each, on SQLite and PostgreSQL.

use std::time::Duration;

use reqwest::Method;
use rstest::rstest;
use serde_json::{Value, json};

use crate::{
    platform::command,
    rooms::{admin_key, audits, call, events, with_history},
    support::{Backend, TestApp, ev},
};

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_places_a_room_into_a_microdao(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let key = admin_key(&app).await;
    let channel = with_history(&app).await;
    let alice = "@alice:localhost";
    let bob = "@bob:localhost";
    let (s, _) = app
        .put_txn(
            "pl",
            vec![
                ev::now(ev::member("bj", bob, bob, "join")),
                ev::now(ev::state(
                    "m.room.power_levels",
                    "pl",
                    alice,
                    "",
                    json!({ "users": { alice: 50 } }),
                )),
            ],
        )
        .await;
    assert_eq!(s, 200);
    let q = format!(
        "SELECT m.external_id, c.slug FROM channels c JOIN microdaos m ON m.id = c.microdao_id WHERE CAST(c.id AS TEXT) = '{channel}'"
    );
    let before = app.rows(&q).await.remove(0);
    assert_eq!(before[0].as_deref(), Some("microdao:demo"));
    let help = command(&app, "a0", bob, "!daarion help").await;
    assert!(help.contains("!daarion adopt <microdao> [slug]"), "{help}");
    let denied = command(&app, "a1", bob, "!daarion adopt microdao:7").await;
    assert!(denied.contains("power level 50"), "{denied}");
    let unknown = command(&app, "a2", alice, "!daarion adopt microdao:nope").await;
    assert!(unknown.contains("no microDAO `microdao:nope`"), "{unknown}");
    // A slug another channel of the microDAO has is refused with the way out.
    let taken =
        json!({ "microdao": "microdao:7", "slug": "taken", "name": "T", "visibility": "public" });
    assert_eq!(
        call(&app, &key, Method::POST, "/channels", Some(taken))
            .await
            .0,
        201
    );
    let refused = command(&app, "a3", alice, "!daarion adopt microdao:7 taken").await;
    assert!(
        refused.contains("already has a channel `taken`"),
        "{refused}"
    );
    assert_eq!(app.rows(&q).await.remove(0), before);
    // Moved, with its slug kept.
    let moved = command(&app, "a4", alice, "!daarion adopt microdao:7").await;
    let slug = before[1].clone().unwrap();
    assert!(
        moved.contains(&format!("`{slug}` of `microdao:7`")),
        "{moved}"
    );
    assert_eq!(
        app.rows(&q).await.remove(0),
        vec![Some("microdao:7".into()), Some(slug.clone())]
    );
    let again = command(&app, "a5", alice, "!daarion adopt microdao:7 lounge").await;
    assert!(again.contains("`lounge` of `microdao:7`"), "{again}");
    assert_eq!(audits(&app, "channel.moved").await, 2);
    let ev = events(&app, "chat.channel.moved").await;
    assert_eq!(ev.len(), 2);
    assert_eq!(
        (&ev[1]["channel_id"], &ev[1]["slug"]),
        (&json!(channel), &json!("lounge"))
    );
    assert!(
        ev[0]["previous_microdao_id"].is_string() && ev[0]["microdao_id"].is_string(),
        "{ev:?}"
    );
    // The mirror follows: a message lands in the same channel, now in microdao:7.
    let (s, _) = app
        .put_txn("after", vec![ev::now(ev::text("h2", alice, "still here"))])
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        app.col(&format!(
            "SELECT content_preview FROM messages WHERE CAST(channel_id AS TEXT) = '{channel}' AND content_preview = 'still here'"
        ))
        .await
        .len(),
        1
    );
}

/// A tombstone from Alice in the mirrored room.
fn tombstone(id: &str, replacement: Option<&str>) -> Value {
    let mut content = json!({ "body": "This room has been replaced" });
    if let Some(r) = replacement {
        content["replacement_room"] = json!(r);
    }
    ev::now(ev::state(
        "m.room.tombstone",
        id,
        "@alice:localhost",
        "",
        content,
    ))
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_upgrade_moves_the_channel(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let channel = with_history(&app).await;
    let new = "!new:localhost";
    let (s, _) = app.put_txn("tomb", vec![tombstone("t1", Some(new))]).await;
    assert_eq!(s, 200);
    assert_eq!(
        app.col(&format!(
            "SELECT matrix_room_id FROM channels WHERE CAST(id AS TEXT) = '{channel}'"
        ))
        .await,
        vec![new]
    );
    assert_eq!(
        app.rows("SELECT room_id, CAST(channel_id AS TEXT), replaced_by FROM bridge_room_aliases")
            .await,
        vec![vec![
            Some(ev::ROOM.into()),
            Some(channel.clone()),
            Some(new.into())
        ]]
    );
    // The job: the bot joins through the servers of the old room and the sender, then brings
    // Sofia (invited by the bot, joined).
    let join = app
        .hs
        .wait_for("the bot joining the replacement", |c| {
            c.path.ends_with(&format!("/v3/join/{new}")) && !c.query.contains("user_id=")
        })
        .await;
    assert!(
        join.query.contains("via=localhost") || join.query.contains("server_name=localhost"),
        "{}",
        join.query
    );
    app.hs
        .wait_for("Sofia joining the replacement", |c| {
            c.path.ends_with(&format!("/v3/join/{new}")) && c.query.contains("agent_sofia")
        })
        .await;
    assert_eq!(
        app.hs.calls_to(&format!("/{new}/invite"))[0].body["user_id"],
        ev::SOFIA
    );
    app.eventually("the job done", Duration::from_secs(10), || async {
        app.col("SELECT status FROM bridge_jobs WHERE room_id = '!new:localhost'")
            .await
            == vec!["done"]
    })
    .await;
    // Messages in either room belong to the channel: the old room id still resolves.
    let (s, _) = app
        .put_txn(
            "after",
            vec![
                ev::now(ev::text("late", "@alice:localhost", "in the old room")),
                ev::in_room(
                    ev::now(ev::text("fresh", "@alice:localhost", "in the new room")),
                    new,
                ),
            ],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        app.col(&format!("SELECT content_preview FROM messages WHERE CAST(channel_id AS TEXT) = '{channel}' ORDER BY created_at")).await.len(),
        3
    );
    assert_eq!(app.count("channels").await, 1);
    assert_eq!(
        app.col("SELECT status FROM agent_sessions WHERE closed_at IS NOT NULL")
            .await
            .len(),
        1
    );
    let moved = events(&app, "chat.channel.moved").await;
    assert_eq!(moved.len(), 1);
    assert_eq!(
        (&moved[0]["matrix_room_id"], &moved[0]["previous_room_id"]),
        (&json!(new), &json!(ev::ROOM))
    );
    assert_eq!(audits(&app, "channel.upgraded").await, 1);
    // A replayed tombstone changes nothing.
    let (s, _) = app
        .put_txn("tomb-again", vec![tombstone("t1", Some(new))])
        .await;
    assert_eq!(s, 200);
    assert_eq!(events(&app, "chat.channel.moved").await.len(), 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_without_replacement_archives(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let channel = with_history(&app).await;
    let (s, _) = app.put_txn("tomb", vec![tombstone("t1", None)]).await;
    assert_eq!(s, 200);
    assert_eq!(
        app.col("SELECT reason FROM bridge_channel_archives").await,
        vec!["tombstone"]
    );
    app.hs
        .wait_for("Sofia leaving", |c| {
            c.path.ends_with(&format!("/{}/leave", ev::ROOM)) && c.query.contains("agent_sofia")
        })
        .await;
    app.hs
        .wait_for("the bot leaving", |c| {
            c.path.ends_with(&format!("/{}/leave", ev::ROOM)) && !c.query.contains("user_id=")
        })
        .await;
    let archived = events(&app, "chat.channel.archived").await;
    assert_eq!(
        (archived.len(), &archived[0]["reason"]),
        (1, &json!("tombstone"))
    );
    assert_eq!(archived[0]["channel_id"], json!(channel));
    assert_eq!(app.count("messages").await, 1);
    assert!(app.hs.calls_to("/v3/join/").is_empty());
}
