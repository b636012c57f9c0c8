//! Tools through the admin API (issue #25): a blueprint's `tools`, `show_tools` and
//! `max_tool_rounds` and an agent's narrowing round-trip through PUT and GET, are stored as
//! references (never secret values), reach the registry at once, and every bad one is refused
//! with `M_INVALID_PARAM` naming the field, leaving what was stored untouched. On SQLite and
//! PostgreSQL.

use daarion_bridge::{db::audit::Actor, keys, model::tools::ToolSpec};
use reqwest::Method;
use rstest::rstest;
use serde_json::{Value, json};

use crate::support::{Backend, TestApp};

const A: &str = "/api/v1/admin";

/// Secret values the config defines: none may reach a response, a row or the audit log.
const WEATHER_SECRET: &str = "weather-s3cret-value";
const FILES_SECRET: &str = "files-s3cret-value";

async fn app(b: Backend) -> (TestApp, String) {
    let app = TestApp::spawn_with(b, |c| {
        c + &format!(
            "\n[tools]\nallowed_hosts = [\"*.example.org\"]\n\
             [secrets]\nweather_key = \"{WEATHER_SECRET}\"\nfiles_token = \"{FILES_SECRET}\"\n"
        )
    })
    .await;
    let (_, key) = keys::create_admin(&app.store, "ops", None, &Actor::cli())
        .await
        .unwrap();
    (app, key)
}

async fn call(
    app: &TestApp,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app
        .http
        .request(method, app.url(&format!("{A}{path}")))
        .bearer_auth(key);
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

/// One tool of each kind, as a body gives them.
fn three_tools() -> Value {
    json!([
        {"type": "http", "name": "weather", "description": "The weather in a city",
         "url": "https://tools.example.org/weather", "secret_ref": "weather_key", "timeout": "5s",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
        {"type": "mcp", "name": "files", "url": "https://mcp.example.org/mcp",
         "header_secret_ref": "files_token", "allow": ["read_*", "list_dir"]},
        {"type": "builtin", "name": "matrix.read_history"}
    ])
}

/// The same tools as the bridge stores and returns them: defaults filled in, the timeout in
/// milliseconds, secrets named only.
fn three_tools_stored() -> Value {
    json!([
        {"type": "http", "name": "weather", "description": "The weather in a city",
         "url": "https://tools.example.org/weather", "secret_ref": "weather_key", "timeout": "5000ms",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
        {"type": "mcp", "name": "files", "url": "https://mcp.example.org/mcp",
         "header_secret_ref": "files_token", "allow": ["read_*", "list_dir"]},
        {"type": "builtin", "name": "matrix.read_history"}
    ])
}

fn no_secrets(what: &str, text: &str) {
    assert!(
        !text.contains(WEATHER_SECRET) && !text.contains(FILES_SECRET),
        "{what} holds a secret value: {text}"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blueprint_tools_round_trip(#[case] b: Backend) {
    let (app, key) = app(b).await;
    let body = json!({
        "runtime": "echo", "tools": three_tools(), "show_tools": "full", "max_tool_rounds": 3
    });
    let (s, row) = call(
        &app,
        &key,
        Method::PUT,
        "/blueprints/botanist",
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, 201, "{row}");
    assert_eq!(row["tools"], three_tools_stored(), "{row}");
    assert_eq!(
        (row["show_tools"].clone(), row["max_tool_rounds"].clone()),
        (json!("full"), json!(3))
    );
    no_secrets("the PUT response", &row.to_string());
    let (s, again) = call(&app, &key, Method::PUT, "/blueprints/botanist", Some(body)).await;
    assert_eq!((s, &again), (200, &row), "idempotent");

    let (s, got) = call(&app, &key, Method::GET, "/blueprints/botanist", None).await;
    assert_eq!((s, &got), (200, &row));
    let (_, list) = call(&app, &key, Method::GET, "/blueprints", None).await;
    let listed = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["code"] == "botanist")
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(listed, &row);

    // The row holds the same references, and no secret value.
    let stored = app
        .rows(
            "SELECT CAST(x.tools AS TEXT), x.show_tools, CAST(x.max_tool_rounds AS TEXT) \
             FROM bridge_blueprints x JOIN agent_blueprints b ON b.id = x.blueprint_id \
             WHERE b.code = 'botanist'",
        )
        .await
        .remove(0);
    let tools_text = stored[0].clone().unwrap();
    no_secrets("bridge_blueprints.tools", &tools_text);
    let tools: Value = serde_json::from_str(&tools_text).unwrap();
    assert_eq!(tools, three_tools_stored());
    assert_eq!(stored[1..], [Some("full".into()), Some("3".into())]);

    // The audit log names the tools, nothing more.
    let details = app
        .col("SELECT CAST(details AS TEXT) FROM audit_log WHERE action = 'blueprint.put'")
        .await;
    assert_eq!(details.len(), 2);
    let d: Value = serde_json::from_str(&details[0]).unwrap();
    assert_eq!(
        d["tools"],
        json!(["weather", "files", "matrix.read_history"])
    );
    no_secrets("the audit log", &details.concat());

    // An agent of the blueprint gets its tools at once, secrets resolved in memory only.
    let (s, agent) = call(
        &app,
        &key,
        Method::PUT,
        "/agents/agent:helix",
        Some(json!({ "name": "Helix", "blueprint": "botanist" })),
    )
    .await;
    assert_eq!(s, 201, "{agent}");
    assert_eq!(agent["tools"], Value::Null);
    let registry = app.registry.clone().unwrap();
    let toolset = registry
        .find("agent:helix")
        .unwrap()
        .behaviour
        .tools
        .clone();
    assert_eq!(toolset.max_rounds, 3);
    assert_eq!(toolset.show.as_str(), "full");
    assert!(toolset.allows("weather") && toolset.allows("files.read_file"));
    assert!(toolset.allows("matrix.read_history"));
    assert!(!toolset.allows("files.delete_file"));
    let ToolSpec::Http(weather) = &toolset.tools[0] else {
        panic!("{:?}", toolset.tools)
    };
    assert_eq!(weather.secret.as_deref(), Some(WEATHER_SECRET));

    // Replaced without tools: none, with the defaults.
    let (s, row) = call(
        &app,
        &key,
        Method::PUT,
        "/blueprints/botanist",
        Some(json!({ "runtime": "echo" })),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        (
            row["tools"].clone(),
            row["show_tools"].clone(),
            row["max_tool_rounds"].clone()
        ),
        (Value::Null, Value::Null, Value::Null),
        "{row}"
    );
    let toolset = registry
        .find("agent:helix")
        .unwrap()
        .behaviour
        .tools
        .clone();
    assert!(toolset.is_empty());
    assert_eq!(toolset.max_rounds, 5);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_blueprint_tools_are_refused_naming_the_field(#[case] b: Backend) {
    let (app, key) = app(b).await;
    let good = json!({ "tools": three_tools(), "show_tools": "summary", "max_tool_rounds": 2 });
    let (s, before) = call(&app, &key, Method::PUT, "/blueprints/botanist", Some(good)).await;
    assert_eq!(s, 201, "{before}");
    let http = |extra: Value| {
        let mut t = json!({"type": "http", "name": "w", "url": "https://tools.example.org/w",
                           "secret_ref": "weather_key"});
        t.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        t
    };
    let builtin = json!({"type": "builtin", "name": "matrix.read_history"});
    let cases = [
        (
            json!({ "tools": [{"type": "builtin", "name": "matrix.send_everything"}] }),
            "`tools[0].name`: unknown built-in tool",
        ),
        (
            json!({ "tools": [builtin.clone(), http(json!({"parameters": {"type": "string"}}))] }),
            "`tools[1].parameters`",
        ),
        (
            json!({ "tools": [http(json!({"url": "https://evil.test/w"}))] }),
            "`tools[0].url`: the host `evil.test` is not in the bridge's tools.allowed_hosts",
        ),
        (
            json!({ "tools": [http(json!({"secret_ref": "nope"}))] }),
            "`tools[0].secret_ref`: the secret `nope` is not defined",
        ),
        (
            json!({ "tools": [{"type": "mcp", "name": "files", "url": "https://mcp.example.org/mcp", "allow": []}] }),
            "`tools[0].allow`",
        ),
        (
            json!({ "tools": [builtin.clone(), {"type": "ftp", "name": "x"}] }),
            "`tools[1]`: unknown variant `ftp`",
        ),
        (
            json!({ "tools": [http(json!({"surprise": 1}))] }),
            "`tools[0]`: unknown field `surprise`",
        ),
        (
            json!({ "tools": [{"type": "http", "name": "w", "secret_ref": "weather_key"}] }),
            "`tools[0]`: missing field `url`",
        ),
        (
            json!({ "tools": [http(json!({"secret": WEATHER_SECRET}))] }),
            "`tools[0].secret`: secrets are never stored",
        ),
        (
            json!({ "tools": [{"type": "mcp", "name": "files", "url": "https://mcp.example.org/mcp",
                               "allow": ["*"], "header_secret": FILES_SECRET}] }),
            "`tools[0].header_secret`: secrets are never stored",
        ),
        (
            json!({ "tools": [builtin.clone(), builtin.clone()] }),
            "`tools[1].name`: `matrix.read_history` is named twice",
        ),
        (
            json!({ "tools": builtin.clone() }),
            "`tools` must be a list",
        ),
        (
            json!({ "show_tools": "loud" }),
            "`show_tools` must be one of none, summary, full",
        ),
        (
            json!({ "max_tool_rounds": 21 }),
            "`max_tool_rounds` must be 0 to 20",
        ),
        (
            json!({ "max_tool_rounds": -1 }),
            "`max_tool_rounds` must be 0 to 20",
        ),
    ];
    for (body, field) in cases {
        let (s, e) = call(
            &app,
            &key,
            Method::PUT,
            "/blueprints/botanist",
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (s, e["errcode"].clone()),
            (400, json!("M_INVALID_PARAM")),
            "{body} → {e}"
        );
        let message = e["error"].as_str().unwrap();
        assert!(message.contains(field), "{body} → {message}");
        no_secrets("an error", message);
    }
    // The bounds themselves are accepted.
    for (code, body) in [
        ("most", json!({ "max_tool_rounds": 20 })),
        ("least", json!({ "max_tool_rounds": 0, "tools": [] })),
    ] {
        let path = format!("/blueprints/{code}");
        let (s, row) = call(&app, &key, Method::PUT, &path, Some(body.clone())).await;
        assert_eq!(s, 201, "{body} → {row}");
        assert_eq!(row["max_tool_rounds"], body["max_tool_rounds"]);
    }
    // Nothing refused was stored: the blueprint is as it was.
    let (_, after) = call(&app, &key, Method::GET, "/blueprints/botanist", None).await;
    assert_eq!(after, before);
    let puts = app
        .col("SELECT action FROM audit_log WHERE action = 'blueprint.put'")
        .await;
    assert_eq!(
        puts.len(),
        3,
        "the first PUT and the two at the bounds only"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_narrowing_round_trips(#[case] b: Backend) {
    let (app, key) = app(b).await;
    let (s, _) = call(
        &app,
        &key,
        Method::PUT,
        "/blueprints/botanist",
        Some(json!({ "tools": three_tools() })),
    )
    .await;
    assert_eq!(s, 201);
    let narrow = json!(["weather", "files.read_*"]);
    let body = json!({ "name": "Helix", "blueprint": "botanist", "tools": narrow });
    let (s, row) = call(&app, &key, Method::PUT, "/agents/agent:helix", Some(body)).await;
    assert_eq!((s, row["tools"].clone()), (201, narrow.clone()), "{row}");
    let (_, got) = call(&app, &key, Method::GET, "/agents/agent:helix", None).await;
    assert_eq!(got["tools"], narrow);
    let (_, list) = call(&app, &key, Method::GET, "/agents", None).await;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["external_id"] == "agent:helix" && a["tools"] == narrow),
        "{list}"
    );
    let stored = app
        .col(
            "SELECT CAST(x.tools AS TEXT) FROM bridge_agents x JOIN agents a ON a.id = x.agent_id \
             WHERE a.external_id = 'agent:helix'",
        )
        .await;
    assert_eq!(serde_json::from_str::<Value>(&stored[0]).unwrap(), narrow);
    let details = app
        .col("SELECT CAST(details AS TEXT) FROM audit_log WHERE action = 'agent.put'")
        .await;
    assert_eq!(
        serde_json::from_str::<Value>(&details[0]).unwrap()["tools"],
        narrow
    );

    // The registry narrows at once: the built-in and other MCP tools are out.
    let registry = app.registry.clone().unwrap();
    let toolset = registry
        .find("agent:helix")
        .unwrap()
        .behaviour
        .tools
        .clone();
    assert!(toolset.allows("weather") && toolset.allows("files.read_file"));
    assert!(!toolset.allows("files.list_dir") && !toolset.allows("matrix.read_history"));

    // Bad narrowings are refused naming the entry, and change nothing.
    let long = "x".repeat(65);
    let many: Vec<String> = (0..101).map(|i| format!("t{i}")).collect();
    for (tools, field) in [
        (json!([""]), "`tools[0]`"),
        (json!(["weather", "files read"]), "`tools[1]`"),
        (json!([long]), "`tools[0]`"),
        (json!(many), "`tools`: at most 100"),
        (json!("weather"), "`tools` must be a list"),
        (json!([1]), "`tools` must be a list"),
    ] {
        let body = json!({ "name": "Helix", "blueprint": "botanist", "tools": tools });
        let (s, e) = call(
            &app,
            &key,
            Method::PUT,
            "/agents/agent:helix",
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (s, e["errcode"].clone()),
            (400, json!("M_INVALID_PARAM")),
            "{body} → {e}"
        );
        assert!(e["error"].as_str().unwrap().contains(field), "{body} → {e}");
    }
    let (_, got) = call(&app, &key, Method::GET, "/agents/agent:helix", None).await;
    assert_eq!(got["tools"], narrow);

    // 100 entries of 64 characters are within bounds; null gives back all the blueprint's.
    let most: Vec<String> = (0..100).map(|i| format!("{i:0>64}")).collect();
    let body = json!({ "name": "Helix", "blueprint": "botanist", "tools": most });
    let (s, e) = call(&app, &key, Method::PUT, "/agents/agent:helix", Some(body)).await;
    assert_eq!(s, 200, "{e}");
    let body = json!({ "name": "Helix", "blueprint": "botanist", "tools": null });
    let (s, row) = call(&app, &key, Method::PUT, "/agents/agent:helix", Some(body)).await;
    assert_eq!((s, row["tools"].clone()), (200, Value::Null), "{row}");
    let toolset = registry
        .find("agent:helix")
        .unwrap()
        .behaviour
        .tools
        .clone();
    assert!(toolset.narrow.is_none() && toolset.allows("matrix.read_history"));
}
