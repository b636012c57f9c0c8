//! The admin (provisioning) API: every endpoint refuses missing, unknown and agent keys; PUTs
//! are idempotent and validated field by field; an agent created through it answers at once,
//! on SQLite and PostgreSQL.

use daarion_bridge::{db::audit::Actor, keys};
use reqwest::Method;
use rstest::rstest;
use serde_json::{Value, json};

use crate::{
    agents::setup,
    support::{Backend, TestApp, ev},
};

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app.http.request(method, app.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Every admin route, with a body where it takes one.
fn routes(channel: &str) -> Vec<(Method, String, Option<Value>)> {
    let a = "/api/v1/admin";
    let body = Some(json!({}));
    vec![
        (Method::GET, format!("{a}/status"), None),
        (Method::GET, format!("{a}/microdaos"), None),
        (Method::GET, format!("{a}/microdaos/microdao:demo"), None),
        (
            Method::PUT,
            format!("{a}/microdaos/microdao:x"),
            body.clone(),
        ),
        (Method::DELETE, format!("{a}/microdaos/microdao:x"), None),
        (Method::GET, format!("{a}/blueprints"), None),
        (Method::GET, format!("{a}/blueprints/echo"), None),
        (Method::PUT, format!("{a}/blueprints/x"), body.clone()),
        (Method::DELETE, format!("{a}/blueprints/x"), None),
        (Method::GET, format!("{a}/agents"), None),
        (Method::GET, format!("{a}/agents/agent:sofia"), None),
        (Method::PUT, format!("{a}/agents/agent:x"), body.clone()),
        (Method::DELETE, format!("{a}/agents/agent:x"), None),
        (
            Method::POST,
            format!("{a}/agents/agent:sofia/rooms"),
            body.clone(),
        ),
        (
            Method::DELETE,
            format!("{a}/agents/agent:sofia/rooms/!room:localhost"),
            None,
        ),
        (
            Method::PUT,
            format!("{a}/agents/agent:sofia/channels/{channel}/respond"),
            body.clone(),
        ),
        (
            Method::POST,
            format!("{a}/agents/agent:sofia/keys"),
            body.clone(),
        ),
        (Method::DELETE, format!("{a}/keys/0123456789"), None),
        (Method::GET, format!("{a}/channels"), None),
        (Method::GET, format!("{a}/channels/{channel}/members"), None),
        (Method::GET, format!("{a}/channels/{channel}/export"), None),
        (Method::GET, format!("{a}/sessions"), None),
        (Method::GET, format!("{a}/runs"), None),
        (Method::GET, format!("{a}/audit"), None),
        (Method::GET, format!("{a}/events/dead"), None),
        (
            Method::POST,
            format!("{a}/events/dead/0190a000-0000-7000-8000-000000000000/retry"),
            None,
        ),
        (Method::GET, format!("{a}/failed"), None),
        (
            Method::POST,
            format!("{a}/failed/run/0190a000-0000-7000-8000-000000000000/retry"),
            None,
        ),
    ]
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_refuses_wrong_keys(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, |c| c + "\n[api]\nauth_failures_per_minute = 100000\n").await;
    let (channel, agent_key) = setup(&app).await;
    let (_, revoked) = keys::create_admin(&app.store, "old", None, &Actor::cli())
        .await
        .unwrap();
    app.store
        .admin_keys()
        .revoke(&revoked[..12], &Actor::cli())
        .await
        .unwrap();
    for (method, path, body) in routes(&channel) {
        let (s, e) = call(&app, method.clone(), &path, None, body.clone()).await;
        assert_eq!(
            (s, e["errcode"].clone()),
            (401, json!("M_MISSING_TOKEN")),
            "{method} {path}"
        );
        let (s, e) = call(&app, method.clone(), &path, Some("dab_wrong"), body.clone()).await;
        assert_eq!(
            (s, e["errcode"].clone()),
            (401, json!("M_UNKNOWN_TOKEN")),
            "{method} {path}"
        );
        let (s, e) = call(&app, method.clone(), &path, Some(&revoked), body.clone()).await;
        assert_eq!(
            (s, e["errcode"].clone()),
            (401, json!("M_UNKNOWN_TOKEN")),
            "{method} {path}"
        );
        let (s, e) = call(&app, method.clone(), &path, Some(&agent_key), body.clone()).await;
        assert_eq!(
            (s, e["errcode"].clone()),
            (403, json!("M_FORBIDDEN")),
            "{method} {path}"
        );
        assert!(e["error"].as_str().unwrap().contains("bridge.admin"), "{e}");
    }
    // Nothing changed, and every refusal is audited.
    assert_eq!(app.count("bridge_blueprints").await, 1);
    let denied = app
        .col("SELECT action FROM audit_log WHERE action = 'api.denied'")
        .await;
    assert!(
        denied.len() >= routes(&channel).len() * 4,
        "{}",
        denied.len()
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_provisions_agents(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let (channel, _) = setup(&app).await;
    let (_, key) = keys::create_admin(&app.store, "ops", None, &Actor::cli())
        .await
        .unwrap();
    let k = Some(key.as_str());
    let a = "/api/v1/admin";

    // microDAOs: PUT creates, then replaces; GET reads.
    let put = json!({ "name": "Garden" });
    let (s, m) = call(
        &app,
        Method::PUT,
        &format!("{a}/microdaos/microdao:garden"),
        k,
        Some(put.clone()),
    )
    .await;
    assert_eq!(s, 201, "{m}");
    let (s, _) = call(
        &app,
        Method::PUT,
        &format!("{a}/microdaos/microdao:garden"),
        k,
        Some(put),
    )
    .await;
    assert_eq!(s, 200, "idempotent");
    let (s, m) = call(
        &app,
        Method::GET,
        &format!("{a}/microdaos/microdao:garden"),
        k,
        None,
    )
    .await;
    assert_eq!((s, m["name"].clone()), (200, json!("Garden")));
    let (s, e) = call(
        &app,
        Method::PUT,
        &format!("{a}/microdaos/microdao:garden"),
        k,
        Some(json!({ "name": "" })),
    )
    .await;
    assert_eq!((s, e["errcode"].clone()), (400, json!("M_INVALID_PARAM")));
    assert!(e["error"].as_str().unwrap().contains("`name`"), "{e}");

    // Blueprints: secrets are refused, and so are unknown runtimes and secret names.
    let bp = format!("{a}/blueprints/helix-v1");
    for (body, field) in [
        (
            json!({ "runtime": "openai", "settings": { "base_url": "http://x", "api_key": "sk" } }),
            "settings.api_key",
        ),
        (
            json!({ "runtime": "openai", "settings": { "base_url": "http://x", "api_key_ref": "nope" } }),
            "`nope`",
        ),
        (json!({ "runtime": "gpt" }), "`runtime`"),
        (json!({ "runtime": "openai", "settings": {} }), "`settings`"),
        (json!({ "context_events": 900 }), "`context_events`"),
        (json!({ "message_type": "loud" }), "`message_type`"),
    ] {
        let (s, e) = call(&app, Method::PUT, &bp, k, Some(body.clone())).await;
        assert_eq!(s, 400, "{body} → {e}");
        assert!(e["error"].as_str().unwrap().contains(field), "{body} → {e}");
    }
    let (s, e) = call(&app, Method::PUT, &bp, k, Some(json!({ "surprise": 1 }))).await;
    assert_eq!((s, e["errcode"].clone()), (400, json!("M_BAD_JSON")), "{e}");
    let body = json!({ "model": "m1", "instructions": "Be green.", "runtime": "echo" });
    let (s, row) = call(&app, Method::PUT, &bp, k, Some(body.clone())).await;
    assert_eq!((s, row["source"].clone()), (201, json!("admin")), "{row}");
    let (s, _) = call(&app, Method::PUT, &bp, k, Some(body)).await;
    assert_eq!(s, 200);

    // Agents: validated, then created; its Matrix id comes back.
    let ag = format!("{a}/agents/agent:helix");
    for (path, body, field) in [
        (
            ag.clone(),
            json!({ "name": "Helix", "kind": "robot" }),
            "`kind`",
        ),
        (
            ag.clone(),
            json!({ "name": "Helix", "microdao": "microdao:none" }),
            "`microdao`",
        ),
        (
            ag.clone(),
            json!({ "name": "Helix", "blueprint": "none" }),
            "`blueprint`",
        ),
        (
            ag.clone(),
            json!({ "name": "Helix", "respond": "shout" }),
            "`respond`",
        ),
        (
            ag.clone(),
            json!({ "name": "Helix", "idle_after_seconds": 0 }),
            "`idle_after_seconds`",
        ),
        (
            format!("{a}/agents/helix"),
            json!({ "name": "Helix" }),
            "`external_id`",
        ),
        (
            format!("{a}/agents/agent:He lix"),
            json!({ "name": "Helix" }),
            "`external_id`",
        ),
    ] {
        let (s, e) = call(&app, Method::PUT, &path, k, Some(body.clone())).await;
        assert_eq!(s, 400, "{body} → {e}");
        assert!(e["error"].as_str().unwrap().contains(field), "{body} → {e}");
    }
    let body = json!({
        "name": "Helix", "kind": "node", "microdao": "microdao:demo", "blueprint": "helix-v1",
        "instructions": "Speak of plants."
    });
    let (s, row) = call(&app, Method::PUT, &ag, k, Some(body.clone())).await;
    assert_eq!(s, 201, "{row}");
    assert_eq!(row["matrix_id"], "@agent_helix:localhost");
    assert_eq!(row["blueprint"], "helix-v1");
    let (s, _) = call(&app, Method::PUT, &ag, k, Some(body)).await;
    assert_eq!(s, 200);
    let (s, list) = call(&app, Method::GET, &format!("{a}/agents?limit=2"), k, None).await;
    assert_eq!(s, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let next = list["next"].as_str().unwrap().to_owned();
    let (_, rest) = call(
        &app,
        Method::GET,
        &format!("{a}/agents?limit=2&after={next}"),
        k,
        None,
    )
    .await;
    assert_eq!(rest["items"][0]["external_id"], "agent:sofia", "{rest}");
    let (s, _) = call(&app, Method::GET, &format!("{a}/agents?limit=0"), k, None).await;
    assert_eq!(s, 400);

    // Into a room, at once: the bot invites, the agent joins.
    let rooms = format!("{ag}/rooms");
    let (s, e) = call(
        &app,
        Method::POST,
        &rooms,
        k,
        Some(json!({ "room_id": "nope" })),
    )
    .await;
    assert_eq!((s, e["errcode"].clone()), (400, json!("M_INVALID_PARAM")));
    let (s, e) = call(
        &app,
        Method::POST,
        &rooms,
        k,
        Some(json!({ "room_id": "!elsewhere:localhost" })),
    )
    .await;
    assert_eq!((s, e["errcode"].clone()), (404, json!("M_NOT_FOUND")));
    let (s, r) = call(
        &app,
        Method::POST,
        &rooms,
        k,
        Some(json!({ "room_id": ev::ROOM })),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let invite = app.hs.calls_to("/invite").remove(0);
    assert_eq!(invite.body["user_id"], "@agent_helix:localhost");
    assert!(
        app.hs
            .calls_to("/join")
            .iter()
            .any(|c| c.query.contains("agent_helix"))
    );
    let (s, _) = call(
        &app,
        Method::PUT,
        &format!("{ag}/channels/{channel}/respond"),
        k,
        Some(json!({ "respond": "all" })),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = call(
        &app,
        Method::PUT,
        &format!("{ag}/channels/{channel}/respond"),
        k,
        Some(json!({ "respond": "loud" })),
    )
    .await;
    assert_eq!(s, 400);

    // Agent keys: created (shown once), usable, revoked.
    let (s, created) = call(
        &app,
        Method::POST,
        &format!("{ag}/keys"),
        k,
        Some(json!({ "name": "rt", "bundles": ["agent.runtime"] })),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let agent_key = created["key"].as_str().unwrap();
    let (s, me) = call(&app, Method::GET, "/api/v1/agent", Some(agent_key), None).await;
    assert_eq!((s, me["external_id"].clone()), (200, json!("agent:helix")));
    let (s, e) = call(
        &app,
        Method::POST,
        &format!("{ag}/keys"),
        k,
        Some(json!({ "name": "x", "capabilities": ["bridge.admin"] })),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    let id = created["id"].as_str().unwrap();
    let (s, _) = call(&app, Method::DELETE, &format!("{a}/keys/{id}"), k, None).await;
    assert_eq!(s, 200);
    let (s, _) = call(&app, Method::GET, "/api/v1/agent", Some(agent_key), None).await;
    assert_eq!(s, 401);

    // Listings.
    let (s, ch) = call(
        &app,
        Method::GET,
        &format!("{a}/channels?microdao=microdao:demo"),
        k,
        None,
    )
    .await;
    assert_eq!(
        (s, ch["items"][0]["id"].clone()),
        (200, json!(channel)),
        "{ch}"
    );
    let (_, ch) = call(&app, Method::GET, &format!("{a}/channels?limit=1"), k, None).await;
    let (_, after) = call(
        &app,
        Method::GET,
        &format!("{a}/channels?after={}", ch["next"].as_str().unwrap()),
        k,
        None,
    )
    .await;
    assert_eq!(after["items"], json!([]));
    let (s, e) = call(
        &app,
        Method::GET,
        &format!("{a}/channels?after=bogus"),
        k,
        None,
    )
    .await;
    assert_eq!((s, e["errcode"].clone()), (400, json!("M_INVALID_PARAM")));
    let (_, members) = call(
        &app,
        Method::GET,
        &format!("{a}/channels/{channel}/members"),
        k,
        None,
    )
    .await;
    let who: Vec<Value> = members["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].clone().or_agent(m))
        .collect();
    assert!(
        who.contains(&json!("@alice:localhost")) && who.contains(&json!("agent:sofia")),
        "{members}"
    );
    let (s, sessions) = call(
        &app,
        Method::GET,
        &format!("{a}/sessions?agent=agent:sofia"),
        k,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        sessions["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["agent"] == "agent:sofia")
    );
    let (s, _) = call(
        &app,
        Method::GET,
        &format!("{a}/sessions?status=asleep"),
        k,
        None,
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = call(
        &app,
        Method::GET,
        &format!("{a}/runs?status=completed"),
        k,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, status) = call(&app, Method::GET, &format!("{a}/status"), k, None).await;
    assert_eq!(s, 200);
    assert_eq!(status["homeserver"]["reachable"], true, "{status}");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    let (_, audit) = call(
        &app,
        Method::GET,
        &format!("{a}/audit?action=agent.put"),
        k,
        None,
    )
    .await;
    let items = audit["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{audit}");
    assert!(
        items[0]["actor_id"]
            .as_str()
            .unwrap()
            .starts_with("admin-key:")
    );
    let (s, export) = call(
        &app,
        Method::GET,
        &format!("{a}/channels/{channel}/export"),
        k,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let first: Value =
        serde_json::from_str(export.as_str().unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "channel", "{first}");

    // Deleting: a microDAO with channels is refused; an agent goes.
    let (s, e) = call(
        &app,
        Method::DELETE,
        &format!("{a}/microdaos/microdao:demo"),
        k,
        None,
    )
    .await;
    assert_eq!(s, 409, "{e}");
    let (s, _) = call(
        &app,
        Method::DELETE,
        &format!("{a}/microdaos/microdao:garden"),
        k,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = call(&app, Method::DELETE, &ag, k, None).await;
    assert_eq!(s, 200);
    let (s, _) = call(&app, Method::GET, &ag, k, None).await;
    assert_eq!(s, 404);
    app.hs
        .wait_for("the deleted agent leaves", |c| {
            c.path.ends_with("/leave") && c.query.contains("agent_helix")
        })
        .await;
}

trait OrAgent {
    fn or_agent(self, m: &Value) -> Value;
}

impl OrAgent for Value {
    fn or_agent(self, m: &Value) -> Value {
        if self.is_null() {
            m["agent"].clone()
        } else {
            self
        }
    }
}
