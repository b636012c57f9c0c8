//! Agents that use tools, against a scripted OpenAI-compatible model and an HTTP tool written
//! here (signature checked): the loop (streamed and plain tool calls), the allow-list, the
//! record of every call and its audit, the round limit, the time budget, oversize results, a
//! tool that is down, malformed arguments, a restart mid-call, webhooks that call tools, the
//! built-ins; on SQLite and PostgreSQL.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::Request, http::StatusCode, response::IntoResponse};
use hmac::{Hmac, Mac};
use rstest::rstest;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::{
    agents::setup,
    model::FakeModel,
    runs::{mention, runtime_config, wait_runs},
    support::{Backend, TestApp, ev},
};

pub(crate) const TOOL_SECRET: &str = "tool-test-secret-0123456789";

/// An HTTP tool server: `/weather` answers a forecast for the `city` it was given, `/big` 100
/// KB, `/slow` after `slow_ms`, `/fail` 500, `/hang` never. Records (path, valid signature,
/// body) of every call.
#[derive(Clone, Default)]
pub(crate) struct FakeTool {
    pub calls: Arc<Mutex<Vec<(String, bool, Value)>>>,
    /// Requests being answered now, and the most there ever were at once.
    pub inflight: Arc<Mutex<(usize, usize)>>,
}

impl FakeTool {
    pub(crate) async fn spawn(slow_ms: u64) -> (Self, String) {
        let tool = FakeTool::default();
        let t = tool.clone();
        let app = Router::new().fallback(move |req: Request| {
            let t = t.clone();
            async move {
                let path = req.uri().path().to_owned();
                let (ts, sig) = {
                    // Scoped: a borrow of the request must not live across the awaits below.
                    let header = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    (header("x-daarion-timestamp"), header("x-daarion-signature"))
                };
                let bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
                    .await
                    .unwrap();
                let mut mac = Hmac::<Sha256>::new_from_slice(TOOL_SECRET.as_bytes()).unwrap();
                mac.update(format!("{ts}.").as_bytes());
                mac.update(&bytes);
                let hex: String = mac
                    .finalize()
                    .into_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                let valid = sig == format!("sha256={hex}");
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                t.calls
                    .lock()
                    .unwrap()
                    .push((path.clone(), valid, body.clone()));
                match path.as_str() {
                    "/weather" => {
                        Json(json!({ "forecast": "sunny", "city": body["city"] })).into_response()
                    }
                    "/big" => "x".repeat(100_000).into_response(),
                    "/slow" => {
                        {
                            let mut n = t.inflight.lock().unwrap();
                            n.0 += 1;
                            n.1 = n.1.max(n.0);
                        }
                        tokio::time::sleep(Duration::from_millis(slow_ms)).await;
                        t.inflight.lock().unwrap().0 -= 1;
                        Json(json!({ "done": true })).into_response()
                    }
                    "/hang" => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        StatusCode::OK.into_response()
                    }
                    "/redirect" => {
                        (StatusCode::FOUND, [("location", "/weather")], "").into_response()
                    }
                    _ => (StatusCode::INTERNAL_SERVER_ERROR, "tool exploded").into_response(),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (tool, url)
    }

    pub(crate) fn paths(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.0.clone())
            .collect()
    }
}

/// A config whose `echo` blueprint is the scripted model with `tools` (TOML of
/// `[[blueprints.tools]]` tables), `keys` before them (`max_tool_rounds = 2`), and `[tools]`
/// settings.
pub(crate) fn tools_config(
    model: &str,
    stream: bool,
    keys: &str,
    tools: &str,
    settings: &str,
) -> impl FnOnce(String) -> String {
    let extra = format!(
        "{keys}\n[blueprints.openai]\nbase_url = \"{model}\"\nstream = {stream}\n{tools}\n"
    );
    let settings = settings.to_owned();
    move |c: String| {
        let c = runtime_config("openai", &extra)(c);
        format!("{c}\n[secrets]\nweather_tool = \"{TOOL_SECRET}\"\n\n[tools]\n{settings}\n")
    }
}

/// The `[[blueprints.tools]]` of an HTTP tool `name` at `url`.
pub(crate) fn http_tool(name: &str, url: &str) -> String {
    http_tool_within(name, url, "2s")
}

/// The same with another timeout.
pub(crate) fn http_tool_within(name: &str, url: &str, timeout: &str) -> String {
    format!(
        "[[blueprints.tools]]\ntype = \"http\"\nname = \"{name}\"\ndescription = \"The weather of a city\"\nurl = \"{url}\"\nsecret_ref = \"weather_tool\"\ntimeout = \"{timeout}\"\nparameters = {{ type = \"object\", properties = {{ city = {{ type = \"string\" }} }}, required = [\"city\"] }}\n"
    )
}

/// An assistant message calling tools: (id, function name, arguments text).
pub(crate) fn calls(list: &[(&str, &str, &str)]) -> Value {
    let calls: Vec<Value> = list
        .iter()
        .map(|(id, name, args)| {
            json!({ "id": id, "type": "function", "function": { "name": name, "arguments": args } })
        })
        .collect();
    json!({ "role": "assistant", "content": null, "tool_calls": calls })
}

pub(crate) fn says(text: &str) -> Value {
    json!({ "role": "assistant", "content": text })
}

/// Asks Sofia something and waits for the run to end with `status`.
pub(crate) async fn ask(app: &TestApp, status: &str) -> Vec<Vec<Option<String>>> {
    setup(app).await;
    let (s, _) = app
        .put_txn(
            "ask",
            vec![mention(
                "q",
                "Sofia, what is the weather in Kyiv?",
                &[ev::SOFIA],
            )],
        )
        .await;
    assert_eq!(s, 200);
    wait_runs(app, 1, status).await
}

/// The last edit's (or the only message's) content.
pub(crate) fn final_content(app: &TestApp) -> Value {
    let sent = app.hs.sent_messages();
    let last = sent.last().expect("the agent answered").1.body.clone();
    if last["m.new_content"].is_object() {
        last
    } else {
        json!({ "m.new_content": last.clone(), "io.daarion.tool_calls": last["io.daarion.tool_calls"] })
    }
}

/// The final answer's text.
pub(crate) fn final_body(app: &TestApp) -> String {
    final_content(app)["m.new_content"]["body"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The function names the model's `n`th request offered.
pub(crate) fn offered(model: &FakeModel, n: usize) -> Vec<String> {
    model.requests.lock().unwrap()[n]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
        .collect()
}

/// `tool` messages of the model's `n`th request.
pub(crate) fn tool_messages(model: &FakeModel, n: usize) -> Vec<Value> {
    model.requests.lock().unwrap()[n]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .cloned()
        .collect()
}

const STEPS: &str = "SELECT tool, status, CAST(round AS TEXT), call_id, result, error FROM agent_run_steps ORDER BY round, position";

#[rstest]
#[case::sqlite_streamed(Backend::Sqlite, true)]
#[case::postgres_streamed(Backend::Postgres, true)]
#[case::sqlite_plain(Backend::Sqlite, false)]
#[case::postgres_plain(Backend::Postgres, false)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_calls_an_allowed_tool_and_answers_with_its_result(
    #[case] b: Backend,
    #[case] stream: bool,
) {
    let (model, model_url) = FakeModel::spawn("script").await;
    let (tool, tool_url) = FakeTool::spawn(0).await;
    model.script.lock().unwrap().extend([
        calls(&[
            ("c1", "weather", r#"{"city": "Kyiv"}"#),
            ("c2", "files__delete_file", r#"{"path": "/"}"#),
        ]),
        says("It is sunny in Kyiv."),
    ]);
    let app = TestApp::spawn_with(
        b,
        tools_config(
            &model_url,
            stream,
            "",
            &http_tool("weather", &format!("{tool_url}/weather")),
            "",
        ),
    )
    .await;
    ask(&app, "completed").await;
    // The first request offered exactly the allowed tool.
    let first = model.requests.lock().unwrap()[0].clone();
    assert_eq!(offered(&model, 0), ["weather"]);
    assert_eq!(
        first["tools"][0]["function"]["parameters"]["required"],
        json!(["city"])
    );
    // The tool got the arguments as the model gave them, signed; the disallowed one nothing.
    let tool_calls = tool.calls.lock().unwrap().clone();
    assert_eq!(tool_calls.len(), 1, "{tool_calls:?}");
    assert_eq!(tool_calls[0].0, "/weather");
    assert!(tool_calls[0].1, "the call is signed with the tool's secret");
    assert_eq!(tool_calls[0].2, json!({ "city": "Kyiv" }));
    // The second request carries the calls and their results, the denial as an error.
    let second = model.requests.lock().unwrap()[1].clone();
    let assistant = second["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "assistant" && m["tool_calls"].is_array())
        .cloned()
        .expect("the calls are in the conversation");
    assert_eq!(
        assistant["tool_calls"][0]["function"]["arguments"],
        r#"{"city": "Kyiv"}"#
    );
    let results = tool_messages(&model, 1);
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["tool_call_id"], "c1");
    let weather: Value = serde_json::from_str(results[0]["content"].as_str().unwrap()).unwrap();
    assert_eq!(weather, json!({ "forecast": "sunny", "city": "Kyiv" }));
    assert_eq!(results[1]["tool_call_id"], "c2");
    assert!(
        results[1]["content"]
            .as_str()
            .unwrap()
            .contains("not allowed"),
        "{results:?}"
    );
    // The person reads the answer and what was used; the content carries the calls.
    let content = final_content(&app);
    let body = content["m.new_content"]["body"].as_str().unwrap();
    assert!(body.starts_with("It is sunny in Kyiv."), "{body}");
    assert!(
        body.contains("_Tools: weather ✓, files.delete_file ✗ not allowed_"),
        "{body}"
    );
    let notes = &content["io.daarion.tool_calls"];
    assert_eq!(notes[0]["name"], "weather");
    assert_eq!(notes[0]["status"], "ok");
    assert_eq!(notes[0]["arguments"], r#"{"city":"Kyiv"}"#);
    assert_eq!(notes[1]["name"], "files.delete_file");
    assert_eq!(notes[1]["status"], "denied");
    assert_eq!(content["m.new_content"]["io.daarion.tool_calls"], *notes);
    // The database holds both calls with their outcomes, and the audit log the denial.
    let steps = app.rows(STEPS).await;
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_eq!(steps[0][0].as_deref(), Some("weather"));
    assert_eq!(steps[0][1].as_deref(), Some("ok"));
    assert!(steps[0][4].as_deref().unwrap().contains("sunny"));
    assert_eq!(steps[1][0].as_deref(), Some("files.delete_file"));
    assert_eq!(steps[1][1].as_deref(), Some("denied"));
    assert!(steps[1][4].is_none(), "a denied call has no result");
    let audit = app
        .rows("SELECT action, target, outcome FROM audit_log WHERE action LIKE 'tool.%' ORDER BY action")
        .await;
    assert_eq!(
        audit,
        vec![
            vec![
                Some("tool.called".into()),
                Some("weather".into()),
                Some("allowed".into())
            ],
            vec![
                Some("tool.denied".into()),
                Some("files.delete_file".into()),
                Some("denied".into())
            ],
        ]
    );
    let all_audit = app
        .col("SELECT CAST(details AS TEXT) FROM audit_log")
        .await
        .join("\n");
    assert!(
        !all_audit.contains(TOOL_SECRET),
        "no secret in the audit log"
    );
    let output: Value =
        serde_json::from_str(&app.col("SELECT CAST(output AS TEXT) FROM agent_runs").await[0])
            .unwrap();
    assert_eq!(
        output["tool_calls"], *notes,
        "the run's output names its calls"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("daarion_bridge_tool_calls_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("daarion_bridge_tool_calls_total{outcome=\"denied\"} 1"));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_are_bounded_and_the_answer_says_it_stopped(#[case] b: Backend) {
    let (model, model_url) = FakeModel::spawn("script").await;
    let (tool, tool_url) = FakeTool::spawn(0).await;
    let again = || calls(&[("c", "weather", r#"{"city": "Kyiv"}"#)]);
    model.script.lock().unwrap().extend([
        again(),
        again(),
        again(),
        says("Sunny, as far as I got."),
    ]);
    let app = TestApp::spawn_with(
        b,
        tools_config(
            &model_url,
            true,
            "max_tool_rounds = 2",
            &http_tool("weather", &format!("{tool_url}/weather")),
            "",
        ),
    )
    .await;
    ask(&app, "completed").await;
    assert_eq!(tool.paths().len(), 2, "two rounds, then no more calls");
    let requests = model.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 4);
    assert!(requests[2].get("tool_choice").is_none());
    // The last request lists the tools (the calls before must make sense) but forbids them.
    assert_eq!(requests[3]["tool_choice"], "none");
    assert!(requests[3]["tools"].is_array());
    let body = final_body(&app);
    assert!(body.starts_with("Sunny, as far as I got."), "{body}");
    assert!(
        body.contains("I stopped using tools after 2 rounds."),
        "{body}"
    );
    assert_eq!(app.count("agent_run_steps").await, 2);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_budget_stops_tool_rounds(#[case] b: Backend) {
    let (model, model_url) = FakeModel::spawn("script").await;
    let (tool, tool_url) = FakeTool::spawn(1200).await;
    let slow = || calls(&[("s", "slow", "{}")]);
    model
        .script
        .lock()
        .unwrap()
        .extend([slow(), slow(), says("Partly done.")]);
    let app = TestApp::spawn_with(
        b,
        tools_config(
            &model_url,
            false,
            "",
            &http_tool("slow", &format!("{tool_url}/slow")),
            "run_budget = \"1s\"",
        ),
    )
    .await;
    ask(&app, "completed").await;
    assert_eq!(
        tool.paths(),
        ["/slow"],
        "one round fits the budget, not two"
    );
    let requests = model.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[2]["tool_choice"], "none");
    let body = final_body(&app);
    assert!(body.starts_with("Partly done."), "{body}");
    assert!(body.contains("the time for them ran out"), "{body}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_result_is_cut_and_the_model_told(#[case] b: Backend) {
    let (model, model_url) = FakeModel::spawn("script").await;
    let (_tool, tool_url) = FakeTool::spawn(0).await;
    model
        .script
        .lock()
        .unwrap()
        .extend([calls(&[("b", "big", "{}")]), says("It is long.")]);
    let app = TestApp::spawn_with(
        b,
        tools_config(
            &model_url,
            false,
            "show_tools = \"none\"",
            &http_tool("big", &format!("{tool_url}/big")),
            "max_result_bytes = 1024",
        ),
    )
    .await;
    ask(&app, "completed").await;
    let results = tool_messages(&model, 1);
    let content = results[0]["content"].as_str().unwrap();
    assert!(
        content.starts_with(&"x".repeat(1024)),
        "the first 1024 bytes"
    );
    assert!(!content.contains(&"x".repeat(1025)), "and no more");
    assert!(content.ends_with("[result cut at 1024 bytes]"), "{content}");
    let steps = app.rows(STEPS).await;
    assert_eq!(steps[0][1].as_deref(), Some("ok"));
    assert!(steps[0][4].as_deref().unwrap().len() <= 1024 + 40);
    // show_tools = none: the answer is the model's text alone; the content still names the call.
    let content = final_content(&app);
    assert_eq!(content["m.new_content"]["body"], "It is long.");
    assert_eq!(content["io.daarion.tool_calls"][0]["name"], "big");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_that_is_down_makes_the_agent_say_so(#[case] b: Backend) {
    let (model, model_url) = FakeModel::spawn("script").await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (tool, tool_url) = FakeTool::spawn(0).await;
    model.script.lock().unwrap().extend([
        calls(&[
            ("d", "weather", r#"{"city": "Kyiv"}"#),
            ("f", "broken", "{}"),
        ]),
        // The model says nothing after: the agent must not go silent.
        says(""),
    ]);
    let tools = format!(
        "{}{}",
        http_tool("weather", &format!("http://{closed}/weather")),
        http_tool("broken", &format!("{tool_url}/fail"))
    );
    let app = TestApp::spawn_with(b, tools_config(&model_url, true, "", &tools, "")).await;
    ask(&app, "completed").await;
    assert_eq!(tool.paths(), ["/fail"]);
    let results = tool_messages(&model, 1);
    assert!(
        results[0]["content"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{results:?}"
    );
    assert!(
        results[1]["content"]
            .as_str()
            .unwrap()
            .contains("the tool answered 500: tool exploded"),
        "{results:?}"
    );
    let body = final_body(&app);
    assert!(
        body.starts_with("I could not finish: weather (unreachable"),
        "{body}"
    );
    assert!(body.contains("broken (the tool answered 500"), "{body}");
    assert!(
        body.contains("_Tools: weather ✗ failed, broken ✗ failed_"),
        "{body}"
    );
    let steps = app.rows(STEPS).await;
    assert_eq!(steps[0][1].as_deref(), Some("failed"));
    assert!(steps[0][5].as_deref().unwrap().contains("unreachable"));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_arguments_get_a_clear_error_and_no_call(#[case] b: Backend) {
    let (model, model_url) = FakeModel::spawn("script").await;
    let (tool, tool_url) = FakeTool::spawn(0).await;
    model.script.lock().unwrap().extend([
        calls(&[
            ("m1", "weather", r#"{"city": "Kyi"#),
            ("m2", "weather", "[1, 2]"),
            ("m3", "weather\u{0}", "{}"),
        ]),
        says("Sorry, I got that wrong."),
    ]);
    let app = TestApp::spawn_with(
        b,
        tools_config(
            &model_url,
            false,
            "",
            &http_tool("weather", &format!("{tool_url}/weather")),
            "",
        ),
    )
    .await;
    ask(&app, "completed").await;
    assert!(tool.paths().is_empty(), "a malformed call is never sent");
    let results = tool_messages(&model, 1);
    assert!(
        results[0]["content"]
            .as_str()
            .unwrap()
            .contains("bad arguments: not valid JSON")
    );
    assert!(
        results[1]["content"]
            .as_str()
            .unwrap()
            .contains("bad arguments: must be a JSON object")
    );
    assert!(
        results[2]["content"]
            .as_str()
            .unwrap()
            .contains("not allowed")
    );
    let statuses = app
        .col("SELECT status FROM agent_run_steps ORDER BY position")
        .await;
    assert_eq!(statuses, ["failed", "failed", "denied"]);
    let body = final_body(&app);
    assert!(body.starts_with("Sorry, I got that wrong."), "{body}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_at_a_crash_is_reported_interrupted_not_repeated(#[case] b: Backend) {
    let (model, model_url) = FakeModel::spawn("script").await;
    let (tool, tool_url) = FakeTool::spawn(0).await;
    model.script.lock().unwrap().extend([
        calls(&[("h", "hang", "{}")]),
        says("The lookup was cut off; ask me again."),
    ]);
    let app = TestApp::prepare(
        b,
        tools_config(
            &model_url,
            false,
            "",
            &http_tool_within("hang", &format!("{tool_url}/hang"), "5m"),
            "",
        ),
    )
    .await;
    let mut bridge = app.spawn_process(|c| c).await;
    let setup = vec![
        ev::invite_bot("inv", "@alice:localhost", "Town Square"),
        ev::member("aj", "@alice:localhost", "@alice:localhost", "join"),
        ev::now(ev::member("sj", ev::SOFIA, ev::SOFIA, "join")),
    ];
    assert_eq!(bridge.put_txn("setup", setup).await.0, 200);
    let q = mention("q", "Sofia, what is the weather?", &[ev::SOFIA]);
    assert_eq!(bridge.put_txn("ask", vec![q]).await.0, 200);
    // The call is recorded and on its way to the tool: then the bridge dies.
    app.eventually("the tool is called", Duration::from_secs(15), || async {
        !tool.paths().is_empty()
    })
    .await;
    assert_eq!(
        app.col("SELECT status FROM agent_run_steps").await,
        ["running"],
        "recorded before it was executed"
    );
    bridge.kill9();
    let restarted = app.spawn_process(|c| c).await;
    wait_runs(&restarted, 1, "completed").await;
    assert_eq!(tool.paths(), ["/hang"], "never executed a second time");
    assert_eq!(
        app.col("SELECT status FROM agent_run_steps").await,
        ["interrupted"]
    );
    let results = tool_messages(&model, 1);
    assert_eq!(results[0]["tool_call_id"], "h");
    assert!(
        results[0]["content"]
            .as_str()
            .unwrap()
            .contains("interrupted"),
        "{results:?}"
    );
    let body = final_body(&app);
    assert!(body.starts_with("The lookup was cut off"), "{body}");
    assert!(body.contains("hang ✗ interrupted"), "{body}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_ins_read_history_and_list_channels(#[case] b: Backend) {
    let (model, model_url) = FakeModel::spawn("script").await;
    model.script.lock().unwrap().extend([
        calls(&[
            ("l", "daarion__list_channels", "{}"),
            ("r", "matrix__read_history", r#"{"limit": 5}"#),
            ("x", "matrix__read_history", r#"{"limit": 500}"#),
        ]),
        says("You are in Town Square."),
    ]);
    let tools = "[[blueprints.tools]]\ntype = \"builtin\"\nname = \"daarion.list_channels\"\n\
                 [[blueprints.tools]]\ntype = \"builtin\"\nname = \"matrix.read_history\"\n";
    let app = TestApp::spawn_with(b, tools_config(&model_url, false, "", tools, "")).await;
    app.hs.history.lock().unwrap().extend([ev::now(ev::text(
        "old",
        "@alice:localhost",
        "The picnic is on Saturday.",
    ))]);
    ask(&app, "completed").await;
    assert_eq!(
        offered(&model, 0),
        ["daarion__list_channels", "matrix__read_history"]
    );
    let results = tool_messages(&model, 1);
    let channels: Value = serde_json::from_str(results[0]["content"].as_str().unwrap()).unwrap();
    assert_eq!(channels.as_array().unwrap().len(), 1, "{channels}");
    assert_eq!(channels[0]["name"], "Town Square");
    assert_eq!(channels[0]["microdao"], "microdao:demo");
    let history = results[1]["content"].as_str().unwrap();
    assert!(history.contains("The picnic is on Saturday."), "{history}");
    assert!(
        results[2]["content"]
            .as_str()
            .unwrap()
            .contains("`limit` must be an integer 1 to 100"),
        "{results:?}"
    );
    let statuses = app
        .col("SELECT status FROM agent_run_steps ORDER BY position")
        .await;
    assert_eq!(statuses, ["ok", "ok", "failed"]);
}

/// A webhook runtime that first asks for the weather, then answers with what it got.
async fn tool_calling_webhook() -> (Arc<Mutex<Vec<Value>>>, String) {
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let s = seen.clone();
    let app = Router::new().fallback(move |req: Request| {
        let s = s.clone();
        async move {
            let bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            s.lock().unwrap().push(body.clone());
            match body["tool_rounds"].as_array() {
                None => Json(json!({ "tool_calls": [
                    { "id": "w1", "name": "weather", "arguments": { "city": "Lviv" } },
                ] })),
                Some(rounds) => {
                    let result = rounds[0]["results"][0]["content"].as_str().unwrap_or("");
                    Json(json!({ "reply": format!("Lviv: {result}") }))
                }
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (seen, url)
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_runtime_calls_tools_and_gets_the_results(#[case] b: Backend) {
    let (seen, hook) = tool_calling_webhook().await;
    let (tool, tool_url) = FakeTool::spawn(0).await;
    let extra = format!(
        "[blueprints.webhook]\nurl = \"{hook}\"\nsecret = \"hook-secret\"\n{}",
        http_tool("weather", &format!("{tool_url}/weather"))
    );
    let app = TestApp::spawn_with(b, move |c| {
        let c = runtime_config("webhook", &extra)(c);
        format!("{c}\n[secrets]\nweather_tool = \"{TOOL_SECRET}\"\n")
    })
    .await;
    ask(&app, "completed").await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0]["tools"][0]["name"], "weather");
    assert!(seen[0].get("tool_rounds").is_none());
    assert_eq!(seen[1]["tool_rounds"][0]["calls"][0]["id"], "w1");
    assert_eq!(seen[1]["tool_rounds"][0]["results"][0]["status"], "ok");
    assert_eq!(tool.calls.lock().unwrap()[0].2, json!({ "city": "Lviv" }));
    let body = final_body(&app);
    assert!(
        body.starts_with("Lviv: {\"city\":\"Lviv\",\"forecast\":\"sunny\"}"),
        "{body}"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_the_platform_writes_take_effect_without_a_restart(#[case] b: Backend) {
    let (model, model_url) = FakeModel::spawn("script").await;
    model.script.lock().unwrap().push_back(says("Noted."));
    let app = TestApp::spawn_with(b, tools_config(&model_url, false, "", "", "")).await;
    let registry = app.registry.clone().unwrap();
    let sofia = || {
        registry
            .get(&ruma::UserId::parse(ev::SOFIA).unwrap())
            .unwrap()
    };
    assert!(sofia().behaviour.tools.is_empty());
    // As the platform would: the blueprint's tools, and Sofia narrowed to one of them.
    let json = |v: &str| match b {
        Backend::Postgres => format!("CAST('{v}' AS jsonb)"),
        Backend::Sqlite => format!("'{v}'"),
    };
    let tools = json(
        r#"[{"type": "builtin", "name": "daarion.list_channels"}, {"type": "builtin", "name": "matrix.read_history"}]"#,
    );
    app.exec(&format!(
        "UPDATE bridge_blueprints SET tools = {tools}, show_tools = 'full', max_tool_rounds = 3"
    ))
    .await;
    app.exec(&format!(
        "UPDATE bridge_agents SET tools = {} WHERE agent_id = (SELECT id FROM agents WHERE external_id = 'agent:sofia')",
        json(r#"["daarion.*"]"#)
    ))
    .await;
    app.eventually("the tools are loaded", Duration::from_secs(3), || async {
        sofia().behaviour.tools.tools.len() == 2
    })
    .await;
    let set = sofia().behaviour.tools.clone();
    assert_eq!(set.max_rounds, 3);
    assert_eq!(set.show, daarion_bridge::model::tools::ShowTools::Full);
    ask(&app, "completed").await;
    assert_eq!(
        offered(&model, 0),
        ["daarion__list_channels"],
        "narrowed by the agent's own list"
    );
    // A row the bridge cannot use makes the runs fail saying why, never run without its rules.
    app.exec(&format!(
        "UPDATE bridge_blueprints SET tools = {}",
        json(r#"[{"type": "builtin", "name": "shell.exec"}]"#)
    ))
    .await;
    app.eventually("the bad row is loaded", Duration::from_secs(3), || async {
        matches!(
            &sofia().behaviour.runtime,
            daarion_bridge::model::RuntimeSpec::Misconfigured(why) if why.contains("tools[0].name") && why.contains("shell.exec")
        )
    })
    .await;
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_one_round_run_concurrently_within_the_bound(#[case] b: Backend) {
    let (model, model_url) = FakeModel::spawn("script").await;
    let (tool, tool_url) = FakeTool::spawn(500).await;
    model.script.lock().unwrap().extend([
        calls(&[
            ("a", "slow", "{}"),
            ("b", "slow", "{}"),
            ("c", "slow", "{}"),
        ]),
        says("All three done."),
    ]);
    let app = TestApp::spawn_with(
        b,
        tools_config(
            &model_url,
            false,
            "",
            &http_tool("slow", &format!("{tool_url}/slow")),
            "max_parallel = 2",
        ),
    )
    .await;
    ask(&app, "completed").await;
    assert_eq!(tool.paths().len(), 3);
    assert_eq!(
        tool.inflight.lock().unwrap().1,
        2,
        "two at once (concurrent), never three (bounded)"
    );
    // Results come back in the calls' order, whatever order they finished in.
    let ids: Vec<Value> = tool_messages(&model, 1)
        .iter()
        .map(|m| m["tool_call_id"].clone())
        .collect();
    assert_eq!(ids, [json!("a"), json!("b"), json!("c")]);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_allow_list_holds_at_every_call_and_redirects_are_not_followed(
    #[case] b: Backend,
) {
    let (model, model_url) = FakeModel::spawn("script").await;
    let (tool, tool_url) = FakeTool::spawn(0).await;
    let port = tool_url.rsplit(':').next().unwrap().to_owned();
    model.script.lock().unwrap().extend([
        calls(&[
            ("r", "moved", "{}"),
            ("o", "elsewhere", r#"{"city": "Kyiv"}"#),
        ]),
        says("Neither worked."),
    ]);
    let app = TestApp::spawn_with(
        b,
        tools_config(
            &model_url,
            false,
            "",
            &http_tool("moved", &format!("{tool_url}/redirect")),
            "allowed_hosts = [\"127.0.0.1\"]",
        ),
    )
    .await;
    // A row the platform wrote names a host outside the list (the same server, by another
    // name): the registry takes the row, and the call is still refused.
    let tools = format!(
        r#"[{{"type": "http", "name": "moved", "url": "{tool_url}/redirect", "secret_ref": "weather_tool"}}, {{"type": "http", "name": "elsewhere", "url": "http://localhost:{port}/weather", "secret_ref": "weather_tool"}}]"#
    );
    let tools = match b {
        Backend::Postgres => format!("CAST('{tools}' AS jsonb)"),
        Backend::Sqlite => format!("'{tools}'"),
    };
    app.exec(&format!("UPDATE bridge_blueprints SET tools = {tools}"))
        .await;
    let registry = app.registry.clone().unwrap();
    app.eventually("the row is loaded", Duration::from_secs(3), || async {
        registry
            .get(&ruma::UserId::parse(ev::SOFIA).unwrap())
            .is_some_and(|a| a.behaviour.tools.tools.len() == 2)
    })
    .await;
    ask(&app, "completed").await;
    assert_eq!(
        tool.paths(),
        ["/redirect"],
        "the redirect is not followed; localhost never called"
    );
    let results = tool_messages(&model, 1);
    assert!(
        results[0]["content"]
            .as_str()
            .unwrap()
            .contains("the tool answered 302"),
        "{results:?}"
    );
    assert!(
        results[1]["content"]
            .as_str()
            .unwrap()
            .contains("the host `localhost` is not in the bridge's tools.allowed_hosts"),
        "{results:?}"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_server_s_allowed_tools_are_offered_and_called(#[case] b: Backend) {
    let (model, model_url) = FakeModel::spawn("script").await;
    let (server, mcp_url) =
        crate::fake_mcp::McpServer::spawn(Some("mcp-bearer-secret-0123456789")).await;
    model.script.lock().unwrap().extend([
        calls(&[
            ("r", "files__read_file", r#"{"path": "notes.txt"}"#),
            ("d", "files__delete_file", r#"{"path": "notes.txt"}"#),
            ("f", "files__fail", "{}"),
        ]),
        says("The notes say hello."),
    ]);
    let tools = format!(
        "[[blueprints.tools]]\ntype = \"mcp\"\nname = \"files\"\nurl = \"{mcp_url}\"\nheader_secret_ref = \"files_mcp\"\nallow = [\"read_*\", \"list_dir\", \"fail\"]\n"
    );
    let app = TestApp::spawn_with(b, move |c| {
        let c = tools_config(&model_url, true, "show_tools = \"full\"", &tools, "")(c);
        c.replace(
            "[secrets]\n",
            "[secrets]\nfiles_mcp = \"mcp-bearer-secret-0123456789\"\n",
        )
    })
    .await;
    ask(&app, "completed").await;
    // Offered: what `allow` lets through, named `{server}.{tool}` with dots as `__`.
    let mut offered = offered(&model, 0);
    offered.sort_unstable();
    assert_eq!(
        offered,
        ["files__fail", "files__list_dir", "files__read_file"]
    );
    // Called: the allowed ones only (concurrently: in any order), with the model's arguments.
    let mut called = server.calls();
    called.sort_by(|a, b| b.0.cmp(&a.0));
    assert_eq!(
        called,
        [
            ("read_file".to_owned(), json!({ "path": "notes.txt" })),
            ("fail".to_owned(), json!({}))
        ]
    );
    let results = tool_messages(&model, 1);
    assert!(
        results[0]["content"]
            .as_str()
            .unwrap()
            .contains("contents of notes.txt")
    );
    assert!(
        results[1]["content"]
            .as_str()
            .unwrap()
            .contains("not allowed")
    );
    assert!(
        results[2]["content"]
            .as_str()
            .unwrap()
            .contains("disk on fire")
    );
    let statuses = app
        .col("SELECT status FROM agent_run_steps ORDER BY position")
        .await;
    assert_eq!(statuses, ["ok", "denied", "failed"]);
    let body = final_body(&app);
    assert!(body.starts_with("The notes say hello."), "{body}");
    assert!(
        body.contains("- `files.read_file` `{\"path\":\"notes.txt\"}` ✓"),
        "{body}"
    );
    assert!(body.contains("- `files.delete_file`"), "{body}");
    let logged = app
        .col("SELECT CAST(details AS TEXT) FROM audit_log")
        .await
        .join("\n");
    assert!(
        !logged.contains("mcp-bearer-secret"),
        "no secret in the audit log"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_while_a_tool_runs_leaves_the_call_interrupted(#[case] b: Backend) {
    let (model, model_url) = FakeModel::spawn("script").await;
    let (tool, tool_url) = FakeTool::spawn(0).await;
    model
        .script
        .lock()
        .unwrap()
        .push_back(calls(&[("h", "hang", "{}")]));
    let app = TestApp::spawn_with(
        b,
        tools_config(
            &model_url,
            false,
            "",
            &http_tool_within("hang", &format!("{tool_url}/hang"), "5m"),
            "",
        ),
    )
    .await;
    setup(&app).await;
    let q = mention("q", "Sofia, look it up?", &[ev::SOFIA]);
    assert_eq!(app.put_txn("ask", vec![q]).await.0, 200);
    app.eventually("the tool is called", Duration::from_secs(10), || async {
        !tool.paths().is_empty()
    })
    .await;
    // The status shows in the answer while the tool runs (it hangs for minutes; the status
    // goes out through the outbox, which may deliver it just after the call began).
    app.eventually("the status is shown", Duration::from_secs(10), || async {
        app.hs
            .sent_messages()
            .iter()
            .any(|(_, c)| c.body["body"].as_str() == Some("_Using hang…_"))
    })
    .await;
    let stop = ev::now(ev::text("s", "@alice:localhost", "stop"));
    assert_eq!(app.put_txn("stop", vec![stop]).await.0, 200);
    wait_runs(&app, 1, "cancelled").await;
    assert_eq!(
        app.col("SELECT status FROM agent_run_steps").await,
        ["interrupted"]
    );
    assert_eq!(tool.paths(), ["/hang"]);
}
