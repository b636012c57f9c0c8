//! The platform drives the bridge: agents written into the database by another service answer
//! with their database-defined runtime and instructions, disabled agents fall silent, and bot
//! commands in Matrix (with unprivileged senders too), on SQLite and PostgreSQL.

use std::time::Duration;

use rstest::rstest;
use serde_json::json;

use crate::{
    agents::{api, setup},
    model::FakeModel,
    runs::{mention, settle, wait_runs},
    support::{Backend, TestApp, ev},
};

const HELIX: &str = "@agent_helix:localhost";

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_defined_agent_answers(#[case] b: Backend) {
    let (model, url) = FakeModel::spawn("plain").await;
    let app = TestApp::spawn_with(b, |c| {
        c.replace("[bridge]\n", "[bridge]\ndebounce = \"200ms\"\n")
            + "\n[secrets]\nhelix_key = \"sk-helix-test\"\n"
    })
    .await;
    setup(&app).await;
    // As another DAARION service would: plain SQL, ERD columns plus the bridge's rows.
    app.exec("INSERT INTO agent_blueprints (code, model) VALUES ('helix-v1', 'helix-model')")
        .await;
    let settings =
        format!("'{{\"base_url\": \"{url}\", \"stream\": false, \"api_key_ref\": \"helix_key\"}}'");
    let settings = match b {
        Backend::Postgres => format!("CAST({settings} AS jsonb)"),
        Backend::Sqlite => settings,
    };
    app.exec(&format!(
        "INSERT INTO bridge_blueprints (blueprint_id, runtime, settings, system_instructions) \
         SELECT id, 'openai', {settings}, 'You are Helix, the garden''s botanist.' \
         FROM agent_blueprints WHERE code = 'helix-v1'"
    ))
    .await;
    app.exec(
        "INSERT INTO agents (external_id, name, kind, microdao_id, blueprint_id) VALUES \
         ('agent:helix', 'Helix', 'node', (SELECT id FROM microdaos WHERE external_id = 'microdao:demo'), \
         (SELECT id FROM agent_blueprints WHERE code = 'helix-v1'))",
    )
    .await;
    app.exec(
        "INSERT INTO bridge_agents (agent_id, instructions) SELECT id, 'Answer in one sentence.' \
         FROM agents WHERE external_id = 'agent:helix'",
    )
    .await;
    // Known within a second, without a restart: its Matrix id is written back for others.
    app.eventually("the new agent is known", Duration::from_secs(1), || async {
        app.col("SELECT COALESCE(matrix_id, '') FROM agents WHERE external_id = 'agent:helix'")
            .await
            == vec![HELIX]
    })
    .await;
    // Invited like any agent; it joins.
    let (s, _) = app
        .put_txn(
            "helix-invite",
            vec![ev::now(ev::member(
                "hi",
                "@alice:localhost",
                HELIX,
                "invite",
            ))],
        )
        .await;
    assert_eq!(s, 200);
    app.hs
        .wait_for("helix joins", |c| {
            c.path.ends_with("/join") && c.query.contains("agent_helix")
        })
        .await;
    let (s, _) = app
        .put_txn(
            "helix-join",
            vec![ev::now(ev::member("hj", HELIX, HELIX, "join"))],
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .put_txn(
            "q",
            vec![mention("q", "Helix, which rose for shade?", &[HELIX])],
        )
        .await;
    assert_eq!(s, 200);
    let runs = wait_runs(&app, 1, "completed").await;
    assert_eq!(runs[0][3].as_deref(), Some("openai"), "{runs:?}");
    let req = model.requests.lock().unwrap()[0].clone();
    assert_eq!(req["model"], "helix-model", "{req}");
    let system = req["messages"][0]["content"].as_str().unwrap_or_default();
    assert!(
        system.contains("You are Helix, the garden's botanist.")
            && system.contains("Answer in one sentence."),
        "the database's instructions reach the model: {req}"
    );
    let answer = app
        .hs
        .sent_messages()
        .into_iter()
        .find(|(user, _)| user == HELIX)
        .expect("Helix answered as itself");
    assert!(
        answer.1.body["body"].as_str().unwrap().contains("plain"),
        "{:?}",
        answer.1.body
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_agents_are_silent_and_refused(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.replace("[bridge]\n", "[bridge]\ndebounce = \"200ms\"\n")
    })
    .await;
    let (channel, key) = setup(&app).await;
    // Sofia also accepts an invite into a second room (the homeserver then lists it).
    let (s, _) = app
        .put_txn(
            "second",
            vec![ev::in_room(
                ev::now(ev::member("inv1", "@alice:localhost", ev::SOFIA, "invite")),
                "!second:localhost",
            )],
        )
        .await;
    assert_eq!(s, 200);
    app.hs
        .wait_for("Sofia joins", |c| {
            c.path.ends_with("/join") && c.query.contains("agent_sofia")
        })
        .await;
    app.exec(
        "UPDATE bridge_agents SET active = false WHERE agent_id = \
         (SELECT id FROM agents WHERE external_id = 'agent:sofia')",
    )
    .await;
    app.eventually("Sofia leaves her rooms", Duration::from_secs(2), || async {
        app.hs
            .calls_to("/leave")
            .iter()
            .any(|c| c.query.contains("agent_sofia"))
    })
    .await;
    let leave = app.hs.calls_to("/leave").remove(0);
    assert_eq!(leave.body["reason"], "this agent was disabled");
    app.eventually("her session closes", Duration::from_secs(2), || async {
        app.col(crate::agents::SESSION)
            .await
            .iter()
            .all(|s| s == "closed")
    })
    .await;
    // Silent, even when mentioned.
    let (s, _) = app
        .put_txn(
            "q",
            vec![mention("q", "Sofia, are you there?", &[ev::SOFIA])],
        )
        .await;
    assert_eq!(s, 200);
    settle(&app, 0).await;
    // Her key is refused.
    let (s, body, _) = api(
        &app,
        reqwest::Method::GET,
        &format!("/api/v1/channels/{channel}/messages"),
        &key,
        None,
    )
    .await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert!(body["error"].as_str().unwrap().contains("disabled"));
    // An invite is refused with the reason.
    let (s, _) = app
        .put_txn(
            "again",
            vec![ev::now(ev::member(
                "inv2",
                "@alice:localhost",
                ev::SOFIA,
                "invite",
            ))],
        )
        .await;
    assert_eq!(s, 200);
    let refusal = app
        .hs
        .wait_for("the invite is refused", |c| {
            c.path.ends_with("/leave") && c.body["reason"] == "this agent is disabled"
        })
        .await;
    assert!(refusal.query.contains("agent_sofia"));
    assert_eq!(
        app.col("SELECT action FROM audit_log WHERE action = 'agent.disabled'")
            .await
            .len(),
        1
    );
}

/// Sends `text` as `sender` and returns the bot's answer to it.
pub(crate) async fn command(app: &TestApp, id: &str, sender: &str, text: &str) -> String {
    let before = app.hs.bot_notices().len();
    let (s, _) = app
        .put_txn(
            &format!("cmd-{id}"),
            vec![ev::now(ev::text(id, sender, text))],
        )
        .await;
    assert_eq!(s, 200);
    let start = std::time::Instant::now();
    loop {
        let notices = app.hs.bot_notices();
        if notices.len() > before {
            let n = notices[before].clone();
            assert_eq!(n["msgtype"], "m.notice", "{n}");
            assert_eq!(
                n["m.relates_to"]["m.in_reply_to"]["event_id"],
                format!("${id}")
            );
            return n["body"].as_str().unwrap().to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no answer to {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_commands(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.replace("[bridge]\n", "[bridge]\nadmins = [\"@root:localhost\"]\n")
    })
    .await;
    setup(&app).await;
    let alice = "@alice:localhost";
    let bob = "@bob:localhost";
    // Alice moderates the room; Bob is an ordinary member.
    let (s, _) = app
        .put_txn(
            "power",
            vec![
                ev::now(ev::member("bj", bob, bob, "join")),
                mention("m0", "Sofia, hello", &[ev::SOFIA]),
                ev::now(ev::state(
                    "m.room.power_levels",
                    "pl",
                    alice,
                    "",
                    json!({ "users": { alice: 50 }, "users_default": 0 }),
                )),
            ],
        )
        .await;
    assert_eq!(s, 200);

    let help = command(&app, "c1", bob, "!daarion help").await;
    assert!(help.contains("!daarion invite <agent>"), "{help}");
    let agents = command(&app, "c2", bob, "!daarion agents").await;
    assert!(
        agents.contains("Sofia ✓") && agents.contains("agent:free"),
        "{agents}"
    );
    // Unprivileged: refused with the reason, nothing happens.
    let denied = command(&app, "c3", bob, "!daarion invite free").await;
    assert!(
        denied.contains("power level 50") && denied.contains("yours is 0"),
        "{denied}"
    );
    let denied = command(&app, "c4", bob, "!daarion kick sofia").await;
    assert!(denied.contains("power level 50"), "{denied}");
    let denied = command(&app, "c5", bob, "!daarion respond sofia all").await;
    assert!(denied.contains("power level 50"), "{denied}");
    let denied = command(&app, "c6", alice, "!daarion status").await;
    assert!(denied.contains("Only bridge admins"), "{denied}");
    assert!(app.hs.calls_to("/invite").is_empty());
    // Unknown commands and bad arguments get help, never silence.
    let unknown = command(&app, "c7", bob, "!daarion dance").await;
    assert!(
        unknown.contains("`dance`") && unknown.contains("!daarion help"),
        "{unknown}"
    );
    let usage = command(&app, "c8", alice, "!daarion respond sofia loudly").await;
    assert!(usage.contains("mentions"), "{usage}");
    let nobody = command(&app, "c9", alice, "!daarion invite nobody").await;
    assert!(nobody.contains("no agent called `nobody`"), "{nobody}");
    // A moderator manages agents.
    let invited = command(&app, "c10", alice, "!daarion invite Free").await;
    assert_eq!(invited, "Free joined this room.");
    let invite = app.hs.calls_to("/invite").remove(0);
    assert_eq!(invite.body["user_id"], "@agent_free:localhost");
    assert!(
        app.hs
            .calls_to("/join")
            .iter()
            .any(|c| c.query.contains("agent_free"))
    );
    let set = command(&app, "c11", alice, "!daarion respond sofia never").await;
    assert!(set.contains("Sofia now answers nothing"), "{set}");
    assert_eq!(
        app.col("SELECT respond FROM agent_channel_settings").await,
        vec!["never"]
    );
    let kicked = command(&app, "c12", alice, "!daarion kick agent:sofia").await;
    assert_eq!(kicked, "Sofia left this room.");
    let sessions = command(&app, "c13", bob, "!daarion sessions").await;
    assert!(sessions.contains("Sofia (`agent:sofia`)"), "{sessions}");
    // Bridge admins see the status.
    let status = command(&app, "c14", "@root:localhost", "!daarion status").await;
    assert!(
        status.contains("homeserver: reachable") && status.contains("queues"),
        "{status}"
    );
    // Which replica leads (this one, the only one: named by host and process).
    let replica = app.config.leader.replica_name();
    assert!(
        status.contains(&format!(
            "leader: {replica} (epoch 1); this answer is from {replica}"
        )),
        "{status}"
    );
    // Not commands: a similar word, and plain chat.
    let before = app.hs.bot_notices().len();
    app.put_txn(
        "chat",
        vec![ev::now(ev::text("c15", bob, "!daarionish hello"))],
    )
    .await;
    // A replayed command is answered once.
    app.put_txn(
        "cmd-c14",
        vec![ev::now(ev::text(
            "c14",
            "@root:localhost",
            "!daarion status",
        ))],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(app.hs.bot_notices().len(), before);
    // Every command is audited, refusals as denied.
    let denied: Vec<String> = app
        .col("SELECT actor_id FROM audit_log WHERE action = 'command.run' AND outcome = 'denied'")
        .await;
    assert!(
        denied.iter().filter(|a| *a == bob).count() >= 4,
        "{denied:?}"
    );
}

/// Runs start-up seeding with the base config edited by `tweak`, as a restart would.
async fn reseed(app: &TestApp, tweak: impl FnOnce(String) -> String) {
    let config = daarion_bridge::config::Config::from_toml_str(&tweak(app.toml.clone())).unwrap();
    let declarations = daarion_bridge::db::seed::Declarations {
        microdaos: &config.microdaos,
        blueprints: &config.blueprints,
        agents: &config.agents,
        default_microdao: config.bridge.default_microdao.as_deref(),
    };
    app.store
        .seed(declarations, &config.namespace().unwrap())
        .await
        .unwrap();
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_seeds_but_never_overwrites_others(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    // Rule 1: declared rows that do not exist are created, their bridge rows owned by config.
    assert_eq!(
        app.col("SELECT source FROM bridge_agents x JOIN agents a ON a.id = x.agent_id WHERE a.external_id = 'agent:sofia'")
            .await,
        vec!["config"]
    );
    assert_eq!(
        app.col("SELECT source FROM bridge_blueprints x JOIN agent_blueprints b ON b.id = x.blueprint_id WHERE b.code = 'echo'")
            .await,
        vec!["config"]
    );
    // Rule 3: config-owned rows follow the declaration on every start.
    reseed(&app, |c| {
        c.replace(
            "name = \"Sofia\"",
            "name = \"Sofia II\"\ninstructions = \"Be kind.\"",
        )
    })
    .await;
    assert_eq!(
        app.rows("SELECT a.name, x.instructions FROM agents a JOIN bridge_agents x ON x.agent_id = a.id WHERE a.external_id = 'agent:sofia'")
            .await,
        vec![vec![Some("Sofia II".into()), Some("Be kind.".into())]]
    );
    // Rule 4: rows another service (platform) or the admin API owns are never touched.
    app.exec("UPDATE bridge_agents SET source = 'platform', instructions = 'Platform says.' WHERE agent_id = (SELECT id FROM agents WHERE external_id = 'agent:sofia')").await;
    app.exec("UPDATE agents SET name = 'Sofia (platform)' WHERE external_id = 'agent:sofia'")
        .await;
    app.exec("UPDATE bridge_blueprints SET source = 'admin', system_instructions = 'Admin says.'")
        .await;
    reseed(&app, |c| {
        c.replace(
            "name = \"Sofia\"",
            "name = \"Sofia III\"\ninstructions = \"Config says.\"",
        )
    })
    .await;
    assert_eq!(
        app.rows("SELECT a.name, x.instructions, x.source FROM agents a JOIN bridge_agents x ON x.agent_id = a.id WHERE a.external_id = 'agent:sofia'")
            .await,
        vec![vec![Some("Sofia (platform)".into()), Some("Platform says.".into()), Some("platform".into())]]
    );
    assert_eq!(
        app.col("SELECT system_instructions FROM bridge_blueprints")
            .await,
        vec!["Admin says."]
    );
    // Rule 2: a row another service wrote without a bridge row gets the declared bridge row;
    // its ERD columns stay as the service wrote them.
    app.exec("INSERT INTO agents (external_id, name, kind, blueprint_id) VALUES ('agent:orion', 'Orion (theirs)', 'quest', (SELECT id FROM agent_blueprints WHERE code = 'echo'))")
        .await;
    reseed(&app, |c| {
        c + "\n[[agents]]\nexternal_id = \"agent:orion\"\nname = \"Orion (ours)\"\nkind = \"system\"\ninstructions = \"Declared.\"\n"
    })
    .await;
    assert_eq!(
        app.rows("SELECT a.name, a.kind, x.instructions, x.source FROM agents a JOIN bridge_agents x ON x.agent_id = a.id WHERE a.external_id = 'agent:orion'")
            .await,
        vec![vec![
            Some("Orion (theirs)".into()),
            Some("quest".into()),
            Some("Declared.".into()),
            Some("config".into())
        ]]
    );
    // Rule 5: a declared microDAO is created when missing and otherwise left alone.
    app.exec(
        "UPDATE microdaos SET name = 'Renamed by the console' WHERE external_id = 'microdao:7'",
    )
    .await;
    reseed(&app, |c| {
        c + "\n[[microdaos]]\nexternal_id = \"microdao:new\"\nname = \"New\"\n"
    })
    .await;
    assert_eq!(
        app.col("SELECT name FROM microdaos WHERE external_id IN ('microdao:7', 'microdao:new') ORDER BY external_id")
            .await,
        vec!["Renamed by the console", "New"]
    );
}
