//! Agents that answer: trigger rules (mentions, DMs, replies, threads, edits), debounce,
//! cancellation, the agent→agent chain limit and the run lifecycle with the echo runtime, on
//! SQLite and PostgreSQL.

use std::time::Duration;

use rstest::rstest;
use serde_json::{Value, json};

use crate::{
    agents::{api, setup},
    model::FakeModel,
    support::{Backend, TestApp, ev},
};

/// Blueprint `echo` of the base config switched to another runtime.
pub(crate) fn runtime_config(runtime: &str, extra: &str) -> impl FnOnce(String) -> String {
    let runtime = runtime.to_owned();
    let extra = extra.to_owned();
    move |c: String| {
        let c = c.replace(
            "[bridge]\n",
            "[bridge]\ndebounce = \"200ms\"\nstream_edit_interval = \"250ms\"\n",
        );
        c.replace(
            "[[blueprints]]\ncode = \"echo\"\nmodel = \"echo\"\n",
            &format!("[[blueprints]]\ncode = \"echo\"\nmodel = \"test-model\"\nruntime = \"{runtime}\"\ninstructions = \"Be brief.\"\n{extra}\n"),
        )
    }
}

pub(crate) fn mention(id: &str, body: &str, who: &[&str]) -> Value {
    ev::now(ev::base(
        "m.room.message",
        id,
        "@alice:localhost",
        json!({
            "msgtype": "m.text", "body": body, "m.mentions": { "user_ids": who },
        }),
    ))
}

pub(crate) fn plain(id: &str, body: &str) -> Value {
    ev::now(ev::base(
        "m.room.message",
        id,
        "@alice:localhost",
        json!({ "msgtype": "m.text", "body": body, "m.mentions": {} }),
    ))
}

pub(crate) async fn wait_runs(app: &TestApp, n: usize, status: &str) -> Vec<Vec<Option<String>>> {
    let q = "SELECT status, trigger_event_id, reply_event_id, runtime, CAST(chain_depth AS TEXT), error, CAST(input AS TEXT) FROM agent_runs ORDER BY queued_at, id";
    let mut rows = Vec::new();
    for _ in 0..150 {
        rows = app.rows(q).await;
        if rows.len() == n && rows.iter().all(|r| r[0].as_deref() == Some(status)) {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    panic!("expected {n} {status} runs, got {rows:?}");
}

/// Runs stay as they are for a while (nothing else gets triggered).
pub(crate) async fn settle(app: &TestApp, n: usize) {
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        app.count("agent_runs").await,
        n,
        "{:?}",
        app.rows("SELECT status, trigger_event_id FROM agent_runs")
            .await
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_answers_mentions_and_dms(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.replace("[bridge]\n", "[bridge]\ndebounce = \"100ms\"\n")
    })
    .await;
    setup(&app).await;
    // A group room (alice + sofia + bob): no mention, no answer.
    assert_eq!(
        app.put_txn(
            "b",
            vec![ev::member("bj", "@bob:localhost", "@bob:localhost", "join")]
        )
        .await
        .0,
        200
    );
    assert_eq!(
        app.put_txn("1", vec![plain("p1", "just chatting")]).await.0,
        200
    );
    settle(&app, 0).await;
    // Mentioned: answered, as a reply to the trigger that mentions the asker.
    assert_eq!(
        app.put_txn("2", vec![mention("m1", "Sofia, ping?", &[ev::SOFIA])])
            .await
            .0,
        200
    );
    let runs = wait_runs(&app, 1, "completed").await;
    assert_eq!(runs[0][1].as_deref(), Some("$m1"));
    assert_eq!(runs[0][3].as_deref(), Some("echo"));
    let (sender, call) = app.hs.sent_messages().pop().unwrap();
    assert_eq!(sender, ev::SOFIA);
    assert!(
        call.body["body"].as_str().unwrap().contains("Sofia, ping?"),
        "the trigger verbatim: {}",
        call.body
    );
    assert_eq!(
        call.body["m.relates_to"]["m.in_reply_to"]["event_id"],
        "$m1"
    );
    assert_eq!(
        call.body["m.mentions"]["user_ids"],
        json!(["@alice:localhost"])
    );
    assert_eq!(
        runs[0][2].as_deref(),
        Some(format!("$sent-{}", call.path.rsplit('/').next().unwrap()).as_str())
    );
    // Typing was shown first.
    assert!(
        app.hs
            .calls_to("/typing/")
            .iter()
            .any(|c| c.body["typing"] == true)
    );
    // The agent's own echo never triggers it.
    let echo = ev::now(ev::base(
        "m.room.message",
        "sofia-echo",
        ev::SOFIA,
        call.body.clone(),
    ));
    assert_eq!(app.put_txn("3", vec![echo]).await.0, 200);
    // A reply to Sofia's message addresses her; an edit does not; a stale message does not.
    let reply = ev::now(ev::base(
        "m.room.message",
        "r1",
        "@alice:localhost",
        json!({
            "msgtype": "m.text", "body": "thanks", "m.mentions": {}, "m.relates_to": { "m.in_reply_to": { "event_id": "$sofia-echo" } },
        }),
    ));
    let edit = ev::now(ev::base(
        "m.room.message",
        "e1",
        "@alice:localhost",
        json!({
            "msgtype": "m.text", "body": "* Sofia?", "m.mentions": { "user_ids": [ev::SOFIA] },
            "m.new_content": { "msgtype": "m.text", "body": "Sofia?" }, "m.relates_to": { "rel_type": "m.replace", "event_id": "$m1" },
        }),
    ));
    let mut stale = mention("old", "Sofia, from before the outage", &[ev::SOFIA]);
    stale["origin_server_ts"] = json!(chrono::Utc::now().timestamp_millis() - 11 * 60 * 1000);
    assert_eq!(app.put_txn("4", vec![reply, edit, stale]).await.0, 200);
    let runs = wait_runs(&app, 2, "completed").await;
    assert_eq!(runs[1][1].as_deref(), Some("$r1"));
    // Old clients: her name at the start of the body.
    let legacy = ev::now(ev::text("l1", "@alice:localhost", "Sofia: are you there?"));
    assert_eq!(app.put_txn("5", vec![legacy]).await.0, 200);
    wait_runs(&app, 3, "completed").await;
    settle(&app, 3).await;
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"daarion_bridge_triggers_total{outcome="stale"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"daarion_bridge_agent_runs_total{status="completed"} 3"#),
        "{metrics}"
    );

    // A DM (invite marked is_direct): every message addresses the agent.
    let dm = "!dm:localhost";
    let mut invite = ev::in_room(
        ev::member("di", "@carol:localhost", ev::SOFIA, "invite"),
        dm,
    );
    invite["content"]["is_direct"] = json!(true);
    let joins = vec![
        invite,
        ev::in_room(
            ev::member("dcj", "@carol:localhost", "@carol:localhost", "join"),
            dm,
        ),
        ev::in_room(ev::now(ev::member("dsj", ev::SOFIA, ev::SOFIA, "join")), dm),
    ];
    assert_eq!(app.put_txn("dm1", joins).await.0, 200);
    let hello = ev::in_room(
        ev::now(ev::base(
            "m.room.message",
            "dmh",
            "@carol:localhost",
            json!({ "msgtype": "m.text", "body": "hello there", "m.mentions": {} }),
        )),
        dm,
    );
    assert_eq!(app.put_txn("dm2", vec![hello]).await.0, 200);
    let runs = wait_runs(&app, 4, "completed").await;
    assert_eq!(runs[3][1].as_deref(), Some("$dmh"));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_debounce_and_cancel(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.replace("[bridge]\n", "[bridge]\ndebounce = \"400ms\"\n")
    })
    .await;
    let (channel, key) = setup(&app).await;
    // respond = never: not even a mention; respond = all: any message.
    let (s, _, _) = api(
        &app,
        reqwest::Method::PUT,
        &format!("/api/v1/channels/{channel}/settings"),
        &key,
        Some(json!({ "respond": "never" })),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        app.put_txn("1", vec![mention("n1", "Sofia?", &[ev::SOFIA])])
            .await
            .0,
        200
    );
    settle(&app, 0).await;
    let (s, _, _) = api(
        &app,
        reqwest::Method::PUT,
        &format!("/api/v1/channels/{channel}/settings"),
        &key,
        Some(json!({ "respond": "sometimes" })),
    )
    .await;
    assert_eq!(s, 400);
    api(
        &app,
        reqwest::Method::PUT,
        &format!("/api/v1/channels/{channel}/settings"),
        &key,
        Some(json!({ "respond": "all" })),
    )
    .await;
    // A burst of three messages within the debounce window: one run, all three in its input.
    for (i, id) in ["a1", "a2", "a3"].iter().enumerate() {
        assert_eq!(
            app.put_txn(&format!("b{i}"), vec![plain(id, &format!("part {i}"))])
                .await
                .0,
            200
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let runs = wait_runs(&app, 1, "completed").await;
    let input: Value = serde_json::from_str(runs[0][6].as_deref().unwrap()).unwrap();
    assert_eq!(input["triggers"].as_array().unwrap().len(), 3, "{input}");
    let sent = app.hs.sent_messages();
    assert_eq!(sent.len(), 1, "one answer for the burst");
    assert!(
        sent[0].1.body["body"]
            .as_str()
            .unwrap()
            .contains("part 0\npart 1\npart 2")
    );
    // A trigger redacted during the debounce: no run at all.
    assert_eq!(
        app.put_txn("c1", vec![plain("gone", "never mind")]).await.0,
        200
    );
    let mut redaction = ev::now(ev::base(
        "m.room.redaction",
        "red",
        "@alice:localhost",
        json!({ "redacts": "$gone" }),
    ));
    redaction["redacts"] = json!("$gone");
    assert_eq!(app.put_txn("c2", vec![redaction]).await.0, 200);
    settle(&app, 1).await;
    // The runs API lists them.
    let (s, body, _) = api(
        &app,
        reqwest::Method::GET,
        "/api/v1/runs?status=completed",
        &key,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(body["runs"].as_array().unwrap().len(), 1);
    assert_eq!(body["runs"][0]["agent"], "agent:sofia");
    let (_, body, _) = api(
        &app,
        reqwest::Method::GET,
        "/api/v1/runs?status=failed",
        &key,
        None,
    )
    .await;
    assert_eq!(body["runs"].as_array().unwrap().len(), 0);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_run_cancelled_by_redaction(#[case] b: Backend) {
    // One run at a time over all agents, and a slow runtime holding the slot.
    let (_model, url) = FakeModel::spawn("stream").await;
    let app = TestApp::spawn_with(b, move |c| {
        runtime_config(
            "openai",
            &format!("[blueprints.openai]\nbase_url = \"{url}\"\n"),
        )(c)
        .replace("[bridge]\n", "[bridge]\nmax_concurrent_runs = 1\n")
    })
    .await;
    setup(&app).await;
    let other = "!other:localhost";
    let joins = vec![
        ev::in_room(
            ev::state(
                "city.daarion.channel",
                "oc",
                "@alice:localhost",
                "",
                json!({ "microdao": "microdao:demo" }),
            ),
            other,
        ),
        ev::in_room(
            ev::member("oaj", "@alice:localhost", "@alice:localhost", "join"),
            other,
        ),
        ev::in_room(
            ev::member("obj", "@bob:localhost", "@bob:localhost", "join"),
            other,
        ),
        ev::in_room(
            ev::now(ev::member("osj", ev::SOFIA, ev::SOFIA, "join")),
            other,
        ),
    ];
    assert_eq!(app.put_txn("o", joins).await.0, 200);
    assert_eq!(
        app.put_txn(
            "1",
            vec![mention("first", "Sofia, long question", &[ev::SOFIA])]
        )
        .await
        .0,
        200
    );
    wait_runs(&app, 1, "running").await;
    let second = ev::in_room(mention("second", "Sofia, other room", &[ev::SOFIA]), other);
    assert_eq!(app.put_txn("2", vec![second]).await.0, 200);
    // Queued behind the running one.
    for _ in 0..100 {
        if app.count("agent_runs").await == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.col("SELECT status FROM agent_runs WHERE trigger_event_id = '$second'")
            .await,
        vec!["queued"]
    );
    let mut redaction = ev::in_room(
        ev::now(ev::base(
            "m.room.redaction",
            "red2",
            "@alice:localhost",
            json!({ "redacts": "$second" }),
        )),
        other,
    );
    redaction["redacts"] = json!("$second");
    assert_eq!(app.put_txn("3", vec![redaction]).await.0, 200);
    for _ in 0..100 {
        if app
            .col("SELECT status FROM agent_runs WHERE trigger_event_id = '$second'")
            .await
            == ["cancelled"]
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.col("SELECT status FROM agent_runs WHERE trigger_event_id = '$second'")
            .await,
        vec!["cancelled"]
    );
    let first = app
        .col("SELECT status FROM agent_runs WHERE trigger_event_id = '$first'")
        .await;
    assert!(first == ["running"] || first == ["completed"], "{first:?}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        app.col("SELECT status FROM agent_runs WHERE trigger_event_id = '$second'")
            .await,
        vec!["cancelled"],
        "never started"
    );
}

/// Replays what puppets sent as the homeserver would: echoes in the next transactions.
async fn echo_sends(app: &TestApp, seen: &mut usize, txn: &mut u32) {
    let sent = app.hs.sent_messages();
    let mut events = Vec::new();
    for (user, call) in &sent[*seen..] {
        let txn_id = call.path.rsplit('/').next().unwrap();
        events.push(ev::now(ev::base(
            "m.room.message",
            &format!("sent-{txn_id}"),
            user,
            call.body.clone(),
        )));
    }
    *seen = sent.len();
    if !events.is_empty() {
        *txn += 1;
        assert_eq!(app.put_txn(&format!("echo{txn}"), events).await.0, 200);
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_chain_stops_at_the_limit(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.replace(
            "[bridge]\n",
            "[bridge]\ndebounce = \"50ms\"\nmax_agent_chain = 3\n",
        )
    })
    .await;
    let (channel, key) = setup(&app).await;
    let free = "@agent_free:localhost";
    assert_eq!(
        app.put_txn(
            "fj",
            vec![
                ev::member("bj", "@bob:localhost", "@bob:localhost", "join"),
                ev::now(ev::member("fj", free, free, "join"))
            ]
        )
        .await
        .0,
        200
    );
    // Sofia speaks to Free through the API; each answer mentions the agent it answers.
    let (s, _, _) = api(
        &app,
        reqwest::Method::POST,
        &format!("/api/v1/channels/{channel}/messages"),
        &key,
        Some(json!({ "text": "Free, your turn", "mentions": [free] })),
    )
    .await;
    assert_eq!(s, 200);
    let (mut seen, mut txn) = (0, 0);
    for _ in 0..60 {
        echo_sends(&app, &mut seen, &mut txn).await;
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    let depths = app
        .col("SELECT CAST(chain_depth AS TEXT) FROM agent_runs ORDER BY queued_at")
        .await;
    assert_eq!(
        depths,
        vec!["1", "2", "3"],
        "three agent→agent turns, then the chain stops"
    );
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"daarion_bridge_triggers_total{outcome="loop_refused"} 1"#),
        "{metrics}"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_participation_addresses_the_agent(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.replace("[bridge]\n", "[bridge]\ndebounce = \"50ms\"\n")
    })
    .await;
    setup(&app).await;
    assert_eq!(
        app.put_txn(
            "b",
            vec![ev::member("bj", "@bob:localhost", "@bob:localhost", "join")]
        )
        .await
        .0,
        200
    );
    // A thread Sofia is not part of: nothing. Once she posted in it: every message there.
    let in_thread = |id: &str, root: &str, sender: &str| {
        ev::now(ev::base(
            "m.room.message",
            id,
            sender,
            json!({
                "msgtype": "m.text", "body": format!("{id} in thread"), "m.mentions": {},
                "m.relates_to": { "rel_type": "m.thread", "event_id": root, "is_falling_back": true, "m.in_reply_to": { "event_id": root } },
            }),
        ))
    };
    assert_eq!(
        app.put_txn(
            "1",
            vec![
                plain("root", "a thread root"),
                in_thread("t1", "$root", "@alice:localhost")
            ]
        )
        .await
        .0,
        200
    );
    settle(&app, 0).await;
    let sofia_in = ev::now(ev::base(
        "m.room.message",
        "s1",
        ev::SOFIA,
        json!({
            "msgtype": "m.notice", "body": "I can help", "m.relates_to": { "rel_type": "m.thread", "event_id": "$root" },
        }),
    ));
    assert_eq!(app.put_txn("2", vec![sofia_in]).await.0, 200);
    assert_eq!(
        app.put_txn("3", vec![in_thread("t2", "$root", "@bob:localhost")])
            .await
            .0,
        200
    );
    let runs = wait_runs(&app, 1, "completed").await;
    assert_eq!(runs[0][1].as_deref(), Some("$t2"));
    // Her answer stays in the thread.
    let (_, call) = app.hs.sent_messages().pop().unwrap();
    assert_eq!(call.body["m.relates_to"]["rel_type"], "m.thread");
    assert_eq!(call.body["m.relates_to"]["event_id"], "$root");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_trigger_only_when_configured(#[case] b: Backend) {
    let edit = |id: &str, target: &str| {
        ev::now(ev::base(
            "m.room.message",
            id,
            "@alice:localhost",
            json!({
                "msgtype": "m.text", "body": "* Sofia, what about this?", "m.mentions": { "user_ids": [ev::SOFIA] },
                "m.new_content": { "msgtype": "m.text", "body": "Sofia, what about this?", "m.mentions": { "user_ids": [ev::SOFIA] } },
                "m.relates_to": { "rel_type": "m.replace", "event_id": target },
            }),
        ))
    };
    for (answer_edits, runs) in [(false, 0), (true, 1)] {
        let app = TestApp::spawn_with(b, move |c| {
            c.replace(
                "[bridge]\n",
                &format!("[bridge]\ndebounce = \"50ms\"\nanswer_edits = {answer_edits}\n"),
            )
        })
        .await;
        setup(&app).await;
        assert_eq!(
            app.put_txn(
                "b",
                vec![ev::member("bj", "@bob:localhost", "@bob:localhost", "join")]
            )
            .await
            .0,
            200
        );
        assert_eq!(
            app.put_txn("1", vec![plain("orig", "what about this?")])
                .await
                .0,
            200
        );
        assert_eq!(app.put_txn("2", vec![edit("e1", "$orig")]).await.0, 200);
        if runs == 1 {
            let r = wait_runs(&app, 1, "completed").await;
            assert_eq!(r[0][1].as_deref(), Some("$e1"));
        }
        settle(&app, runs).await;
    }
}
