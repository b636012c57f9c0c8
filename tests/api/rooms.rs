//! The platform creates rooms (issue #26): `POST /api/v1/admin/channels` makes the bot create
//! the Matrix room (request shape checked on the fake homeserver), idempotently by microDAO and
//! slug, also after a crash; `DELETE` archives (`moves.rs`: adopt and room upgrades). Audit rows
//! and outbox events for each, on SQLite and PostgreSQL.

use daarion_bridge::{db::audit::Actor, keys};
use reqwest::Method;
use rstest::rstest;
use serde_json::{Value, json};

use crate::{
    agents::setup,
    support::{Backend, TestApp, ev},
};

const ADMIN: &str = "/api/v1/admin";

pub(crate) async fn admin_key(app: &TestApp) -> String {
    keys::create_admin(&app.store, "ops", None, &Actor::cli())
        .await
        .unwrap()
        .1
}

pub(crate) async fn call(
    app: &TestApp,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app
        .http
        .request(method, app.url(&format!("{ADMIN}{path}")))
        .bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn general() -> Value {
    json!({
        "microdao": "microdao:7", "slug": "general", "name": "General", "visibility": "private",
        "topic": "Everything", "members": ["@alice:localhost"], "agents": ["agent:sofia"],
    })
}

/// The rows of `outbox_events` of `topic`, as JSON payloads.
pub(crate) async fn events(app: &TestApp, topic: &str) -> Vec<Value> {
    app.col(&format!(
        "SELECT CAST(payload AS TEXT) FROM outbox_events WHERE topic = '{topic}' ORDER BY seq"
    ))
    .await
    .iter()
    .map(|p| serde_json::from_str(p).unwrap())
    .collect()
}

pub(crate) async fn audits(app: &TestApp, action: &str) -> usize {
    app.col(&format!(
        "SELECT action FROM audit_log WHERE action = '{action}'"
    ))
    .await
    .len()
}

/// The initial state event of `kind` in a createRoom body.
fn initial<'a>(body: &'a Value, kind: &str) -> Option<&'a Value> {
    body["initial_state"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == kind)
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_creates_a_channel_once(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let key = admin_key(&app).await;
    let (s, created) = call(&app, &key, Method::POST, "/channels", Some(general())).await;
    assert_eq!(s, 201, "{created}");
    let channel = created["channel_id"].as_str().unwrap().to_owned();
    assert_eq!(created["room_id"], "!made1:localhost");
    assert_eq!(
        (
            &created["microdao"],
            &created["slug"],
            &created["name"],
            &created["topic"]
        ),
        (
            &json!("microdao:7"),
            &json!("general"),
            &json!("General"),
            &json!("Everything")
        )
    );

    // The room as Element makes a private room, placed in the platform, the person invited.
    let rooms = app.hs.calls_to("/createRoom");
    assert_eq!(rooms.len(), 1);
    let body = &rooms[0].body;
    assert_eq!(body["preset"], "private_chat");
    // Not in the room directory (ruma leaves out `private`, the default).
    assert!(
        body["visibility"].is_null() || body["visibility"] == "private",
        "{body}"
    );
    assert_eq!(
        (&body["name"], &body["topic"]),
        (&json!("General"), &json!("Everything"))
    );
    assert_eq!(body["invite"], json!(["@alice:localhost"]));
    let enc = initial(body, "m.room.encryption").expect("encrypted");
    assert_eq!(enc["content"]["algorithm"], "m.megolm.v1.aes-sha2");
    let place = initial(body, "city.daarion.channel").expect("placed");
    assert_eq!(place["state_key"], "");
    assert_eq!(
        place["content"],
        json!({ "microdao": "microdao:7", "slug": "general", "visibility": "private", "channel_id": channel })
    );
    // The agent went in as the admin API's invite does: the bot invites, the agent joins.
    let invite = app.hs.calls_to("/!made1:localhost/invite");
    assert_eq!(invite.len(), 1);
    assert_eq!(invite[0].body["user_id"], ev::SOFIA);
    assert!(
        app.hs
            .calls_to("/!made1:localhost/join")
            .iter()
            .any(|c| c.query.contains("agent_sofia"))
    );

    // The channel row, as the mirror writes one.
    let row = app
        .rows(&format!(
            "SELECT c.slug, c.name, c.topic, c.visibility, c.matrix_room_id, m.external_id, br.name_source \
             FROM channels c JOIN microdaos m ON m.id = c.microdao_id \
             JOIN bridge_rooms br ON br.channel_id = c.id WHERE CAST(c.id AS TEXT) = '{channel}'"
        ))
        .await;
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        row,
        vec![vec![
            s("general"),
            s("General"),
            s("Everything"),
            s("private"),
            s("!made1:localhost"),
            s("microdao:7"),
            s("name")
        ]]
    );

    // Idempotent: the same (microDAO, slug) answers the channel, and no second room is made.
    let (s2, again) = call(&app, &key, Method::POST, "/channels", Some(general())).await;
    assert_eq!(
        (s2, &again["channel_id"]),
        (200, &json!(channel)),
        "{again}"
    );
    assert_eq!(app.hs.calls_to("/createRoom").len(), 1);

    // The room's first transaction arrives afterwards: the channel is already there.
    let room = "!made1:localhost";
    let bot = ev::BOT;
    let (st, _) = app
        .put_txn(
            "made1",
            vec![
                ev::in_room(
                    ev::state(
                        "m.room.create",
                        "c1",
                        bot,
                        "",
                        json!({ "room_version": "10" }),
                    ),
                    room,
                ),
                ev::in_room(ev::member("c2", bot, bot, "join"), room),
                ev::in_room(
                    ev::state(
                        "city.daarion.channel",
                        "c3",
                        bot,
                        "",
                        place["content"].clone(),
                    ),
                    room,
                ),
                ev::in_room(
                    ev::state("m.room.name", "c4", bot, "", json!({ "name": "General" })),
                    room,
                ),
                ev::in_room(ev::member("c5", bot, "@alice:localhost", "invite"), room),
            ],
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(app.count("channels").await, 1);
    assert_eq!(events(&app, "chat.channel.created").await.len(), 1);
    assert_eq!(
        events(&app, "chat.channel.created").await[0]["channel_id"],
        json!(channel)
    );
    assert_eq!(audits(&app, "channel.created").await, 1);
    assert_eq!(audits(&app, "agent.invited").await, 1);

    // A public room: Element's public preset, not encrypted unless asked.
    let lobby = json!({ "microdao": "microdao:7", "slug": "lobby", "name": "Lobby", "visibility": "public" });
    let (s3, _) = call(&app, &key, Method::POST, "/channels", Some(lobby)).await;
    assert_eq!(s3, 201);
    let body = &app.hs.calls_to("/createRoom")[1].body;
    assert_eq!(body["preset"], "public_chat");
    assert!(initial(body, "m.room.encryption").is_none(), "{body}");
    assert!(body.get("topic").is_none() || body["topic"].is_null());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_channel_is_validated(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let key = admin_key(&app).await;
    let with = |field: &str, value: Value| {
        let mut body = general();
        body[field] = value;
        body
    };
    for (body, field) in [
        (with("slug", json!("Not A Slug")), "`slug`"),
        (with("name", json!("  ")), "`name`"),
        (with("visibility", json!("secret")), "`visibility`"),
        (with("members", json!(["alice"])), "`members[0]`"),
        (with("topic", json!("x".repeat(1001))), "`topic`"),
    ] {
        let (s, e) = call(&app, &key, Method::POST, "/channels", Some(body)).await;
        assert_eq!(
            (s, &e["errcode"]),
            (400, &json!("M_INVALID_PARAM")),
            "{field}: {e}"
        );
        assert!(e["error"].as_str().unwrap().contains(field), "{field}: {e}");
    }
    let (s, e) = call(
        &app,
        &key,
        Method::POST,
        "/channels",
        Some(with("microdao", json!("microdao:nope"))),
    )
    .await;
    assert_eq!((s, &e["errcode"]), (404, &json!("M_NOT_FOUND")), "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("microdao:nope"),
        "{e}"
    );
    let (s, e) = call(
        &app,
        &key,
        Method::POST,
        "/channels",
        Some(with("agents", json!(["agent:nobody"]))),
    )
    .await;
    assert_eq!((s, &e["errcode"]), (404, &json!("M_NOT_FOUND")), "{e}");
    let (s, e) = call(
        &app,
        &key,
        Method::POST,
        "/channels",
        Some(with("extra", json!(1))),
    )
    .await;
    assert_eq!((s, &e["errcode"]), (400, &json!("M_BAD_JSON")), "{e}");
    // Nothing was created, nothing was asked of the homeserver.
    assert!(app.hs.calls_to("/createRoom").is_empty());
    assert_eq!(app.count("channels").await, 0);
    assert_eq!(app.count("bridge_channel_creations").await, 0);
    // An agent key may not create channels.
    let (_, agent_key) = setup(&app).await;
    let (s, e) = call(&app, &agent_key, Method::POST, "/channels", Some(general())).await;
    assert_eq!((s, &e["errcode"]), (403, &json!("M_FORBIDDEN")), "{e}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_crash_finds_the_room(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let key = admin_key(&app).await;
    // A creation that died after the homeserver made the room, before recording it: the room's
    // first transaction placed it, under the chosen channel id (the bot's own join, first in
    // the transaction, places nothing).
    let chosen = uuid::Uuid::new_v4().to_string();
    let id7 = app
        .col("SELECT CAST(id AS TEXT) FROM microdaos WHERE external_id = 'microdao:7'")
        .await
        .remove(0);
    let old = match b {
        Backend::Sqlite => "'2020-01-01T00:00:00.000Z'",
        Backend::Postgres => "'2020-01-01T00:00:00Z'",
    };
    app.exec(&format!(
        "INSERT INTO bridge_channel_creations (microdao_id, slug, channel_id, started_at) VALUES ('{id7}', 'general', '{chosen}', {old})"
    ))
    .await;
    let room = "!crashed:localhost";
    let bot = ev::BOT;
    let place = json!({ "microdao": "microdao:7", "slug": "general", "visibility": "private", "channel_id": chosen });
    let (st, _) = app
        .put_txn(
            "crashed",
            vec![
                ev::in_room(ev::state("m.room.create", "k1", bot, "", json!({})), room),
                ev::in_room(ev::member("k2", bot, bot, "join"), room),
                ev::in_room(
                    ev::state("city.daarion.channel", "k3", bot, "", place),
                    room,
                ),
                ev::in_room(
                    ev::state("m.room.name", "k4", bot, "", json!({ "name": "General" })),
                    room,
                ),
            ],
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        app.rows("SELECT CAST(c.id AS TEXT), m.external_id, c.slug FROM channels c JOIN microdaos m ON m.id = c.microdao_id").await,
        vec![vec![Some(chosen.clone()), Some("microdao:7".into()), Some("general".into())]]
    );
    // The retry finishes that creation: no second room, the agent brought in, audited once.
    let (s, out) = call(&app, &key, Method::POST, "/channels", Some(general())).await;
    assert_eq!(
        (s, &out["channel_id"], &out["room_id"]),
        (201, &json!(chosen), &json!(room)),
        "{out}"
    );
    assert!(app.hs.calls_to("/createRoom").is_empty());
    assert_eq!(app.hs.calls_to(&format!("/{room}/invite")).len(), 1);
    assert_eq!(audits(&app, "channel.created").await, 1);
    let (s, _) = call(&app, &key, Method::POST, "/channels", Some(general())).await;
    assert_eq!(s, 200);
    assert_eq!(app.count("channels").await, 1);
}

/// Sofia's session in the mirrored room of `setup`, and a message in it.
pub(crate) async fn with_history(app: &TestApp) -> String {
    let (channel, _) = setup(app).await;
    let (s, _) = app
        .put_txn(
            "hist",
            vec![ev::now(ev::text("h1", "@alice:localhost", "hello"))],
        )
        .await;
    assert_eq!(s, 200);
    channel
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_channel_archives_it(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let key = admin_key(&app).await;
    let channel = with_history(&app).await;
    app.store.sessions();
    let (s, out) = call(
        &app,
        &key,
        Method::DELETE,
        &format!("/channels/{channel}"),
        None,
    )
    .await;
    assert_eq!((s, &out["archived"]), (200, &json!(true)), "{out}");
    assert!(out["archived_at"].is_string(), "{out}");
    // The agent and the bot leave (durable jobs); nobody sends a tombstone.
    for who in ["agent_sofia", ""] {
        app.hs
            .wait_for(&format!("{who} leaving"), |c| {
                c.path.ends_with(&format!("/{}/leave", ev::ROOM))
                    && (if who.is_empty() {
                        !c.query.contains("user_id=")
                    } else {
                        c.query.contains(who)
                    })
            })
            .await;
    }
    assert!(app.hs.calls_to("m.room.tombstone").is_empty());
    assert_eq!(
        app.col("SELECT reason FROM bridge_channel_archives").await,
        vec!["admin"]
    );
    assert_eq!(
        app.col("SELECT status FROM agent_sessions").await,
        vec!["closed"],
        "sessions close"
    );
    assert_eq!(app.count("messages").await, 1, "history stays");
    assert_eq!(app.count("channels").await, 1);
    // Idempotent: archived once, published once, audited once.
    let (s, out) = call(
        &app,
        &key,
        Method::DELETE,
        &format!("/channels/{channel}"),
        None,
    )
    .await;
    assert_eq!((s, &out["archived"]), (200, &json!(false)), "{out}");
    let archived = events(&app, "chat.channel.archived").await;
    assert_eq!(archived.len(), 1);
    assert_eq!(
        (
            &archived[0]["channel_id"],
            &archived[0]["matrix_room_id"],
            &archived[0]["reason"]
        ),
        (&json!(channel), &json!(ev::ROOM), &json!("admin"))
    );
    assert_eq!(audits(&app, "channel.archived").await, 1);
    let (s, e) = call(
        &app,
        &key,
        Method::DELETE,
        &format!("/channels/{}", uuid::Uuid::new_v4()),
        None,
    )
    .await;
    assert_eq!((s, &e["errcode"]), (404, &json!("M_NOT_FOUND")));
    let (s, e) = call(&app, &key, Method::DELETE, "/channels/not-a-uuid", None).await;
    assert_eq!((s, &e["errcode"]), (400, &json!("M_INVALID_PARAM")));
}
