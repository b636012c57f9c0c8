//! The conversation a runtime is given (issue #23), on SQLite and PostgreSQL: read from the
//! (fake) homeserver's `/messages` as the agent, with edits applied (the agent's own streamed
//! answers whole, people's edits, nobody else's), redacted messages left out and thread replies
//! kept out of the main timeline; and a long streamed answer's edits bounded.

use rstest::rstest;
use serde_json::{Value, json};

use crate::{
    agents::setup,
    model::FakeModel,
    runs::{mention, runtime_config, wait_runs},
    support::{Backend, TestApp, ev},
};

const A: &str = "@alice:localhost";
const B: &str = "@bob:localhost";

fn edit(id: &str, sender: &str, target: &str, body: &str) -> Value {
    ev::edit(id, sender, &format!("${target}"), body)
}

/// The contents of a model request's messages after the system prompt.
fn contents(req: &Value) -> Vec<&str> {
    req["messages"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|m| m["content"].as_str().unwrap())
        .collect()
}

/// A bridge whose agent runs on a fake OpenAI-compatible model (`mode`), and the model.
async fn with_model(b: Backend, mode: &'static str, bridge: &str) -> (FakeModel, TestApp) {
    let (model, url) = FakeModel::spawn(mode).await;
    let bridge = bridge.to_owned();
    let app = TestApp::spawn_with(b, move |c| {
        let c = runtime_config(
            "openai",
            &format!("[blueprints.openai]\nbase_url = \"{url}\"\n"),
        )(c);
        if bridge.is_empty() {
            c
        } else {
            c.replace("stream_edit_interval = \"250ms\"\n", &bridge)
        }
    })
    .await;
    setup(&app).await;
    (model, app)
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_gets_the_conversation_a_person_sees(#[case] b: Backend) {
    let (model, app) = with_model(b, "plain", "").await;
    let at = |e: Value, ts: u64| ev::at(e, 1_700_000_000_000 + ts);
    // Newest first, as /messages answers.
    app.hs.history.lock().unwrap().extend([
        at(ev::text("q3", A, "Sofia, which words did I give you?"), 90),
        at(edit("e3", B, "q1", "HACKED"), 85),
        at(
            edit("e2", ev::SOFIA, "a2", "TURQUOISE noted, whole answer."),
            80,
        ),
        at(edit("e1", ev::SOFIA, "a2", "TURQUOISE noted"), 75),
        at(
            ev::base("m.room.redaction", "r", A, json!({ "redacts": "$secret" })),
            70,
        ),
        at(
            ev::base(
                "m.room.message",
                "t1",
                B,
                json!({ "msgtype": "m.text", "body": "a thread reply",
                    "m.relates_to": { "rel_type": "m.thread", "event_id": "$q1" } }),
            ),
            65,
        ),
        at(ev::text("a2", ev::SOFIA, "TURQ"), 60),
        // Another agent of the bridge, and a bot's notice: both marked as agents.
        at(
            ev::base(
                "m.room.message",
                "n2",
                "@helper-bot:localhost",
                json!({ "msgtype": "m.notice", "body": "Reminder set." }),
            ),
            57,
        ),
        at(
            ev::text("n1", "@agent_marko:localhost", "Marko thinks so too."),
            55,
        ),
        at(ev::text("q2", A, "and the colour word TURQUOISE"), 50),
        at(edit("e0", A, "q1", "remember the fruit word PAPAYA"), 45),
        at(ev::text("a1", ev::SOFIA, "PAPAYA noted."), 40),
        at(ev::text("q1", A, "remember the fruit word PAPYA"), 30),
        at(ev::text("secret", A, "my password is hunter2"), 20),
    ]);
    let (status, _) = app
        .put_txn(
            "1",
            vec![mention(
                "q3",
                "Sofia, which words did I give you?",
                &[ev::SOFIA],
            )],
        )
        .await;
    assert_eq!(status, 200);
    wait_runs(&app, 1, "completed").await;
    let req = model.requests.lock().unwrap()[0].clone();
    let turns: Vec<(String, String)> = req["messages"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("user", "Alice Liddell: remember the fruit word PAPAYA"),
        ("assistant", "PAPAYA noted."),
        ("user", "Alice Liddell: and the colour word TURQUOISE"),
        ("user", "agent_marko (agent): Marko thinks so too."),
        ("user", "helper-bot (agent): Reminder set."),
        ("assistant", "TURQUOISE noted, whole answer."),
        ("user", "Alice Liddell: Sofia, which words did I give you?"),
    ];
    assert_eq!(
        turns,
        expected.map(|(r, c)| (r.to_owned(), c.to_owned())),
        "{req}"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_carries_the_message_it_answers_from_beyond_the_window(#[case] b: Backend) {
    let (model, app) = with_model(b, "plain", "").await;
    // The window holds only the newest messages; the old one is read on its own.
    app.hs
        .history
        .lock()
        .unwrap()
        .extend([ev::text("recent", A, "something recent")]);
    app.hs
        .events
        .lock()
        .unwrap()
        .insert("$old".into(), ev::text("old", A, "the plan from last week"));
    let reply = ev::now(ev::base(
        "m.room.message",
        "q",
        A,
        json!({
            "msgtype": "m.text", "body": "Sofia, is this still right?",
            "m.mentions": { "user_ids": [ev::SOFIA] },
            "m.relates_to": { "m.in_reply_to": { "event_id": "$old" } },
        }),
    ));
    assert_eq!(app.put_txn("1", vec![reply]).await.0, 200);
    wait_runs(&app, 1, "completed").await;
    let req = model.requests.lock().unwrap()[0].clone();
    let contents = contents(&req);
    assert_eq!(
        contents.first(),
        Some(&"Alice Liddell: the plan from last week"),
        "{req}"
    );
    assert!(
        contents.contains(&"Alice Liddell: something recent"),
        "{req}"
    );
    assert_eq!(
        contents.last(),
        Some(&"Alice Liddell: Sofia, is this still right?"),
        "{req}"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_streamed_answer_makes_a_bounded_number_of_edits(#[case] b: Backend) {
    // Five pieces 150 ms apart with an edit allowed every millisecond: four growing edits and
    // a final one, were they not bounded. Two in all: one growing, then the final text.
    let (_model, app) = with_model(
        b,
        "stream",
        "stream_edit_interval = \"1ms\"\nmax_stream_edits = 2\n",
    )
    .await;
    let (status, _) = app
        .put_txn("1", vec![mention("q", "Sofia, how much?", &[ev::SOFIA])])
        .await;
    assert_eq!(status, 200);
    wait_runs(&app, 1, "completed").await;
    let sent = app.hs.sent_messages();
    let edits: Vec<&Value> = sent[1..].iter().map(|(_, c)| &c.body).collect();
    assert_eq!(edits.len(), 2, "{edits:?}");
    assert_eq!(
        edits.last().unwrap()["m.new_content"]["body"],
        "The answer is forty-two."
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_keeps_within_its_character_budget(#[case] b: Backend) {
    // 60 characters at most (the blueprint's `context_chars`, seeded from the config): the
    // oldest turns go first, never the question itself (which alone is longer than the
    // budget), and the run records how many went.
    let (model, url) = FakeModel::spawn("plain").await;
    let app = TestApp::spawn_with(
        b,
        runtime_config(
            "openai",
            &format!("context_chars = 60\n[blueprints.openai]\nbase_url = \"{url}\"\n"),
        ),
    )
    .await;
    setup(&app).await;
    app.hs.history.lock().unwrap().extend([
        ev::text(
            "q",
            A,
            "Sofia, a question longer than the whole budget of sixty characters?",
        ),
        ev::text("newer", A, "twenty characters!!!"),
        ev::text("older", A, "an older message, thirty chars"),
        ev::text("oldest", A, "the oldest message of them all"),
    ]);
    let question = "Sofia, a question longer than the whole budget of sixty characters?";
    assert_eq!(
        app.put_txn("1", vec![mention("q", question, &[ev::SOFIA])])
            .await
            .0,
        200
    );
    wait_runs(&app, 1, "completed").await;
    let req = model.requests.lock().unwrap()[0].clone();
    let contents = contents(&req);
    assert_eq!(
        contents,
        [format!("Alice Liddell: {question}").as_str()],
        "{req}"
    );
    let cut = app
        .rows("SELECT CAST(context_cut AS TEXT) FROM agent_runs")
        .await;
    assert_eq!(cut[0][0].as_deref(), Some("3"));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_starts_the_conversation_over(#[case] b: Backend) {
    let (model, app) = with_model(b, "plain", "").await;
    let answer = crate::platform::command(&app, "f", A, "!daarion forget").await;
    assert!(answer.contains("forget everything"), "{answer}");
    // Stored durably, and audited.
    let mark = app.rows("SELECT event_id FROM bridge_forget_marks").await;
    assert_eq!(mark[0][0].as_deref(), Some("$f"));
    let audited = app
        .rows("SELECT action, outcome FROM audit_log WHERE CAST(details AS TEXT) LIKE '%forget%'")
        .await;
    assert_eq!(
        audited[0],
        [Some("command.run".to_owned()), Some("allowed".to_owned())]
    );
    // Newest first: what came after the command is the conversation; nothing before it.
    app.hs.history.lock().unwrap().extend([
        ev::text("q", A, "Sofia, what do you know?"),
        ev::text("after", A, "a fresh start"),
        ev::text("f", A, "!daarion forget"),
        ev::text("before", A, "my old secret"),
    ]);
    let (status, _) = app
        .put_txn(
            "1",
            vec![mention("q", "Sofia, what do you know?", &[ev::SOFIA])],
        )
        .await;
    assert_eq!(status, 200);
    wait_runs(&app, 1, "completed").await;
    let req = model.requests.lock().unwrap()[0].clone();
    assert_eq!(
        contents(&req),
        [
            "Alice Liddell: a fresh start",
            "Alice Liddell: Sofia, what do you know?"
        ],
        "{req}"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_while_the_agent_answers_get_one_follow_up_run(#[case] b: Backend) {
    // The policy: while a run of an agent is going on in a room, what addresses it there
    // waits (durably, as pending triggers); when the run ends, one follow-up run takes all of
    // it and sees every message.
    let (model, app) = with_model(b, "stream", "").await;
    let send = |id: &'static str, text: &'static str| {
        let app = &app;
        async move {
            let (status, _) = app.put_txn(id, vec![mention(id, text, &[ev::SOFIA])]).await;
            assert_eq!(status, 200);
        }
    };
    send("q1", "Sofia, first question?").await;
    // The first run is answering (its answer streams over ~600 ms) when two more arrive.
    for _ in 0..200 {
        if !model.requests.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    send("q2", "Sofia, and a second one?").await;
    send("q3", "Sofia, and a third?").await;
    wait_runs(&app, 2, "completed").await;
    // And no third run follows (a debounce and more).
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(app.count("agent_runs").await, 2);
    let requests = model.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    let second = contents(&requests[1]);
    assert!(
        second.contains(&"Alice Liddell: Sofia, and a second one?")
            && second.contains(&"Alice Liddell: Sofia, and a third?"),
        "{second:?}"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_cuts_an_answer_short(#[case] b: Backend) {
    let (_model, app) = with_model(b, "long", "").await;
    let (status, _) = app
        .put_txn(
            "1",
            vec![mention("q", "Sofia, tell a long story?", &[ev::SOFIA])],
        )
        .await;
    assert_eq!(status, 200);
    // The answer is being written (posted, then edited as it grows) when a person says stop.
    for _ in 0..300 {
        if !app.hs.sent_messages().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (status, _) = app
        .put_txn("2", vec![ev::now(ev::text("s", A, "stop"))])
        .await;
    assert_eq!(status, 200);
    let runs = wait_runs(&app, 1, "cancelled").await;
    assert!(
        runs[0][2].is_some(),
        "the cut answer is the run's reply: {runs:?}"
    );
    // What was streamed stays, marked; the rest never comes.
    // Sofia's last send (the bot's "Stopped." may come before or after it).
    let sent = app.hs.sent_messages();
    let last = &sent
        .iter()
        .rev()
        .find(|(user, _)| user == ev::SOFIA)
        .unwrap()
        .1
        .body;
    let text = last["m.new_content"]["body"].as_str().unwrap();
    assert!(text.ends_with("_(stopped)_"), "{last}");
    assert!(!text.contains("the end."), "{last}");
    let notices = app.hs.bot_notices();
    assert!(
        notices.iter().any(|n| n["body"] == "Stopped."),
        "{notices:?}"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_created_while_running_has_its_device_before_it_joins(#[case] b: Backend) {
    // A client encrypts only for the devices it sees when it sends: an agent that joined a DM
    // before its device existed missed the room key of the first message, which then was never
    // answered (#23's "one run in four"). Its device is made before it joins.
    let app = crate::crypto::encrypted_bridge(b, "").await;
    app.exec(
        "INSERT INTO agents (id, external_id, name, kind, matrix_id, blueprint_id) VALUES \
         ('00000000-0000-4000-8000-0000000000a2', 'agent:new', 'New', 'assistant', '@agent_new:localhost', \
         (SELECT id FROM agent_blueprints WHERE code = 'echo'))",
    )
    .await;
    let room = "!new:localhost";
    let invite = ev::in_room(ev::member("in", A, "@agent_new:localhost", "invite"), room);
    assert_eq!(app.put_txn("1", vec![invite]).await.0, 200);
    app.hs
        .wait_for("the new agent's join", |c| {
            c.path == format!("/_matrix/client/v3/rooms/{room}/join")
        })
        .await;
    let calls = app.hs.calls.lock().unwrap().clone();
    let position = |what: &dyn Fn(&crate::fake_hs::HsCall) -> bool| {
        calls
            .iter()
            .position(|c| what(c) && c.query.contains("agent_new"))
    };
    // Its device is made (MSC4190 `PUT /devices/{id}` as the agent, then its keys) first.
    let device =
        position(&|c| c.method == "PUT" && c.path.starts_with("/_matrix/client/v3/devices/"));
    let join = position(&|c| c.path.ends_with("/join"));
    assert!(
        matches!((device, join), (Some(d), Some(j)) if d < j),
        "the device ({device:?}) before the join ({join:?})"
    );
}

/// A direct chat between Carol and Sofia (the bot is not in it), `room`.
async fn agent_dm(app: &TestApp, room: &str) {
    let carol = "@carol:localhost";
    let mut invite = ev::in_room(ev::member("di", carol, ev::SOFIA, "invite"), room);
    invite["content"]["is_direct"] = json!(true);
    let joins = vec![
        invite,
        ev::in_room(ev::member("dcj", carol, carol, "join"), room),
        ev::in_room(
            ev::now(ev::member("dsj", ev::SOFIA, ev::SOFIA, "join")),
            room,
        ),
    ];
    assert_eq!(app.put_txn("dm-joins", joins).await.0, 200);
}

/// What Sofia sent, as message bodies, in order.
fn sofia_said(app: &TestApp) -> Vec<String> {
    app.hs
        .sent_messages()
        .into_iter()
        .filter(|(user, _)| user == ev::SOFIA)
        .filter_map(|(_, c)| c.body["body"].as_str().map(str::to_owned))
        .collect()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_direct_chat_the_agent_answers_forget_and_stop(#[case] b: Backend) {
    // The bot is not in a direct chat with an agent: a bare `forget` or `stop` there is a
    // command all the same, and the agent itself answers it.
    let (model, app) = with_model(b, "plain", "").await;
    let dm = "!sofia-dm:localhost";
    agent_dm(&app, dm).await;
    let say = |id: &'static str, text: &'static str| {
        let app = &app;
        async move {
            let msg = ev::in_room(ev::now(ev::text(id, "@carol:localhost", text)), dm);
            assert_eq!(app.put_txn(id, vec![msg]).await.0, 200);
        }
    };
    say("f1", "Forget").await;
    let mut answered = Vec::new();
    for _ in 0..300 {
        answered = sofia_said(&app);
        if !answered.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        answered,
        ["Done: I forget everything said before this point."]
    );
    let mark = app.rows("SELECT event_id FROM bridge_forget_marks").await;
    assert_eq!(mark[0][0].as_deref(), Some("$f1"));
    say("s1", "stop").await;
    for _ in 0..300 {
        answered = sofia_said(&app);
        if answered.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(answered[1], "No agent is answering here right now.");
    // Neither was a question for the model, and the bot never tried to speak there.
    assert!(model.requests.lock().unwrap().is_empty());
    assert_eq!(app.count("agent_runs").await, 0);
    assert!(
        app.hs.bot_notices().is_empty(),
        "{:?}",
        app.hs.bot_notices()
    );
    let commands = app
        .rows("SELECT outcome FROM audit_log WHERE action = 'command.run'")
        .await;
    assert_eq!(commands.len(), 2, "{commands:?}");
}
