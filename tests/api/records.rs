//! Records for people and services outside the bridge: the audit log (every action it lists,
//! filters, pagination, the CLI) and channel exports (JSON lines and CSV with edits and
//! redactions marked, members and sessions; 100k messages in bounded memory). On SQLite and
//! PostgreSQL.

use daarion_bridge::{
    db::audit::{Actor, AuditFilter},
    export::{self, Format, Range},
    keys,
    model::{AuditOutcome, Ts},
};
use rstest::rstest;
use serde_json::{Value, json};

use crate::{
    agents::api,
    cli::{bridge, write_config},
    support::{Backend, TestApp, ev},
};

async fn audit(app: &TestApp, action: &str) -> Vec<daarion_bridge::db::audit::AuditRow> {
    app.store
        .audit()
        .list(&AuditFilter {
            action: Some(action.into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_every_action(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    let accepted = audit(&app, "invite.accepted").await;
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].actor_id.as_deref(), Some("@alice:localhost"));
    assert_eq!(accepted[0].target.as_deref(), Some(ev::ROOM));
    assert_eq!(accepted[0].outcome, AuditOutcome::Allowed);
    // An invite of an agent that does not exist is refused, and audited with the reason.
    let (s, _) = app
        .put_txn(
            "ghost",
            vec![ev::in_room(
                ev::member(
                    "gi",
                    "@mallory:localhost",
                    "@agent_ghost:localhost",
                    "invite",
                ),
                "!new:localhost",
            )],
        )
        .await;
    assert_eq!(s, 200);
    let refused = audit(&app, "invite.refused").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].outcome, AuditOutcome::Denied);
    assert_eq!(refused[0].actor_id.as_deref(), Some("@mallory:localhost"));
    assert_eq!(refused[0].details.0["reason"], "this agent does not exist");

    // Keys: created, revoked, used after expiry; denied calls (401, 403) with their reason.
    let (_, key) = keys::create(
        &app.store,
        "agent:sofia",
        "reader",
        &["chat.message.read".into()],
        &[],
        None,
        &Actor::cli(),
    )
    .await
    .unwrap();
    let created = audit(&app, "access_key.created").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].actor_id.as_deref(), Some("cli"));
    assert_eq!(created[0].details.0["prefix"], &key[..12]);
    assert!(
        !created[0].details.0.to_string().contains(&key),
        "never the key itself"
    );
    let (s, _, _) = api(
        &app,
        reqwest::Method::POST,
        "/api/v1/channels/x/messages",
        &key,
        Some(json!({"text": "x"})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _, _) = api(
        &app,
        reqwest::Method::GET,
        "/api/v1/agent",
        "dab_notakeyatall000000000000",
        None,
    )
    .await;
    assert_eq!(s, 401);
    let denied = audit(&app, "api.denied").await;
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert_eq!(denied[0].details.0["status"], 401);
    assert_eq!(denied[0].details.0["reason"], "unknown access key");
    assert_eq!(denied[0].actor_id.as_deref(), Some("dab_notakeya"));
    assert_eq!(denied[1].details.0["status"], 403);
    assert!(
        denied[1].details.0["reason"]
            .as_str()
            .unwrap()
            .contains("chat.message.send")
    );
    assert_eq!(denied[1].actor_id.as_deref(), Some(&key[..12]));
    assert_eq!(
        denied[1].target.as_deref(),
        Some("/api/v1/channels/x/messages")
    );
    let (_, expired) = keys::create(
        &app.store,
        "agent:sofia",
        "old",
        &[],
        &["agent.runtime".into()],
        Some(Ts::now().minus(std::time::Duration::from_secs(60))),
        &Actor::cli(),
    )
    .await
    .unwrap();
    assert_eq!(
        api(&app, reqwest::Method::GET, "/api/v1/agent", &expired, None)
            .await
            .0,
        401
    );
    assert_eq!(audit(&app, "access_key.expired_use").await.len(), 1);
    assert_eq!(
        app.store
            .keys()
            .revoke(&key[..12], &Actor::cli())
            .await
            .unwrap(),
        1
    );
    assert_eq!(audit(&app, "access_key.revoked").await.len(), 1);

    // A settings change through the API, by the agent.
    let (_, runtime) = keys::create(
        &app.store,
        "agent:sofia",
        "rt",
        &[],
        &["agent.runtime".into()],
        None,
        &Actor::cli(),
    )
    .await
    .unwrap();
    assert_eq!(
        app.put_txn(
            "sj",
            vec![ev::now(ev::member("sj", ev::SOFIA, ev::SOFIA, "join"))]
        )
        .await
        .0,
        200
    );
    let channel = app
        .col("SELECT CAST(id AS TEXT) FROM channels")
        .await
        .remove(0);
    let (s, body, _) = api(
        &app,
        reqwest::Method::PUT,
        &format!("/api/v1/channels/{channel}/settings"),
        &runtime,
        Some(json!({ "respond": "all" })),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let set = audit(&app, "agent.respond_set").await;
    assert_eq!(set.len(), 1);
    assert_eq!(set[0].actor_id.as_deref(), Some("agent:sofia"));
    assert_eq!(set[0].target.as_deref(), Some(channel.as_str()));

    // Filters and keyset pagination, newest first.
    let all = app
        .store
        .audit()
        .list(&AuditFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(all.len() >= 9, "{all:?}");
    assert!(all.windows(2).all(|w| w[0].id > w[1].id));
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = app
            .store
            .audit()
            .list(&AuditFilter {
                limit: 2,
                before: before.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        before = page.last().map(|r| r.id.clone());
        paged.extend(page.into_iter().map(|r| r.id));
    }
    assert_eq!(paged, all.iter().map(|r| r.id.clone()).collect::<Vec<_>>());
    let denied_only = app
        .store
        .audit()
        .list(&AuditFilter {
            outcome: Some(AuditOutcome::Denied),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        denied_only
            .iter()
            .all(|r| r.outcome == AuditOutcome::Denied)
    );
    assert!(denied_only.len() >= 4);

    // The CLI reads the same log.
    let (_dir, config) = write_config(&app);
    let out = bridge(&config)
        .args(["audit", "list", "--action", "api.denied", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "403, 401, and the expired key's 401");
    assert!(
        lines
            .iter()
            .all(|l| l["action"] == "api.denied" && l["outcome"] == "denied")
    );
    let out = bridge(&config)
        .args(["audit", "list", "--limit", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("next page: --before "), "{text}");
}

fn edit(id: &str, target: &str, body: &str) -> Value {
    ev::base(
        "m.room.message",
        id,
        "@alice:localhost",
        json!({
            "msgtype": "m.text", "body": format!("* {body}"),
            "m.new_content": { "msgtype": "m.text", "body": body },
            "m.relates_to": { "rel_type": "m.replace", "event_id": target },
        }),
    )
}

/// A conversation with an agent, a thread, an edit and a redaction.
async fn conversation(app: &TestApp) -> String {
    crate::mirrored(app).await;
    let mut r = ev::base(
        "m.room.redaction",
        "r1",
        "@bob:localhost",
        json!({ "redacts": "$m2" }),
    );
    r["redacts"] = json!("$m2");
    for (txn, events) in [
        (
            "c1",
            vec![
                ev::now(ev::member("sj", ev::SOFIA, ev::SOFIA, "join")),
                ev::at(
                    ev::text("m1", "@alice:localhost", "He said \"hi\", then left"),
                    1_700_000_001_000,
                ),
                ev::at(ev::text("m2", "@bob:localhost", "oops"), 1_700_000_002_000),
                ev::at(
                    ev::base(
                        "m.room.message",
                        "m3",
                        ev::SOFIA,
                        json!({ "msgtype": "m.notice", "body": "in a thread",
                                "m.relates_to": { "rel_type": "m.thread", "event_id": "$m1" } }),
                    ),
                    1_700_000_003_000,
                ),
            ],
        ),
        (
            "c2",
            vec![
                ev::at(
                    edit("e1", "$m1", "He said \"hello\", then left"),
                    1_700_000_004_000,
                ),
                r,
            ],
        ),
    ] {
        assert_eq!(app.put_txn(txn, events).await.0, 200);
    }
    app.col("SELECT CAST(id AS TEXT) FROM channels")
        .await
        .remove(0)
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_export_with_edits_and_redactions(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let channel_id = conversation(&app).await;
    let channel = export::resolve(&app.store, ev::ROOM).await.unwrap();
    assert_eq!(channel.to_string(), channel_id);
    assert!(
        export::resolve(&app.store, "!nope:localhost")
            .await
            .is_err()
    );

    let mut out: Vec<u8> = Vec::new();
    let stats = export::write(
        &app.store,
        channel,
        Format::Jsonl,
        Range::default(),
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!((stats.members, stats.sessions, stats.messages), (2, 1, 3));
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "channel", "member", "member", "session", "message", "message", "message"
        ]
    );
    assert_eq!(lines[0]["party"], ev::ROOM);
    assert_eq!(lines[0]["party_name"], "Town Square");
    let sofia = lines
        .iter()
        .find(|l| l["type"] == "member" && l["party_type"] == "agent")
        .unwrap();
    assert_eq!(sofia["party_name"], "Sofia");
    assert_eq!(sofia["party"], ev::SOFIA);
    assert_eq!(lines[3]["status"], "active");
    let (m1, m2, m3) = (&lines[4], &lines[5], &lines[6]);
    assert_eq!(m1["matrix_event_id"], "$m1");
    assert_eq!(m1["party_type"], "human");
    assert_eq!(m1["party_name"], "alice");
    assert_eq!(m1["content_preview"], "He said \"hello\", then left");
    assert!(m1["edited_at"].is_string() && m1["redacted_at"].is_null());
    assert!(m2["redacted_at"].is_string());
    assert_eq!(m2["content_preview"], "");
    assert_eq!(m3["party_type"], "agent");
    assert_eq!(m3["thread_root_event_id"], "$m1");

    // CSV: one header, the same records, quoting that survives commas and quotes.
    let mut out: Vec<u8> = Vec::new();
    export::write(&app.store, channel, Format::Csv, Range::default(), &mut out)
        .await
        .unwrap();
    let mut reader = csv::Reader::from_reader(out.as_slice());
    let headers = reader.headers().unwrap().clone();
    assert_eq!(headers.get(0), Some("record"));
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 7);
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    assert_eq!(
        &rows[4][col("content_preview")],
        "He said \"hello\", then left"
    );
    assert_eq!(&rows[4][col("record")], "message");
    assert!(!rows[5][col("redacted_at")].is_empty());

    // A time range; the CLI writes the same file.
    let mut out: Vec<u8> = Vec::new();
    let since = Ts::from_millis(1_700_000_002_000);
    let stats = export::write(
        &app.store,
        channel,
        Format::Jsonl,
        Range {
            since: Some(since),
            until: None,
        },
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!(stats.messages, 2);
    let (dir, config) = write_config(&app);
    let file = dir.0.join("export.csv");
    let run = bridge(&config)
        .args(["export", "--channel", ev::ROOM, "--format", "csv", "-o"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut expected: Vec<u8> = Vec::new();
    export::write(
        &app.store,
        channel,
        Format::Csv,
        Range::default(),
        &mut expected,
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), expected);
}

/// Peak RSS (KiB) of a child process: its own high-water mark (`VmHWM`), sampled until it
/// exits. Not `wait4`'s `ru_maxrss`: Linux folds the spawning process's high-water mark into the
/// child's at `exec`, so that figure was the test binary's peak (which grows with the tests that
/// ran before this one in the same process), not the export's.
fn run_measured(mut cmd: std::process::Command) -> (std::process::ExitStatus, i64) {
    // `spawn` returns once the child has exec'd: its memory is the bridge's from here on.
    let mut child = cmd.spawn().unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        let hwm = std::fs::read_to_string(&status_file).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        });
        peak = peak.max(hwm.unwrap_or(0));
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_export_runs_in_bounded_memory(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    // 100k messages of 400 characters, straight into the table.
    let sql = match b {
        Backend::Postgres => {
            "INSERT INTO messages (id, channel_id, matrix_event_id, sender_user_id, sender_type, \
             content_preview, created_at) SELECT gen_random_uuid(), c.id, '$bulk' || i, u.id, 'human', repeat('x', 400), \
             timestamptz '2026-01-01' + i * interval '1 second' FROM generate_series(1, 100000) AS i, channels c, users u \
             WHERE u.matrix_id = '@alice:localhost'"
        }
        Backend::Sqlite => {
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) \
             INSERT INTO messages (id, channel_id, matrix_event_id, sender_user_id, sender_type, content_preview, created_at) \
             SELECT printf('00000000-0000-7000-8000-%012d', i), c.id, '$bulk' || i, u.id, 'human', printf('%.400c', 'x'), \
             strftime('%Y-%m-%dT%H:%M:%fZ', '2026-01-01', '+' || i || ' seconds') FROM n, channels c, users u \
             WHERE u.matrix_id = '@alice:localhost'"
        }
    };
    app.exec(sql).await;
    assert_eq!(app.count("messages").await, 100_000);
    let (dir, config) = write_config(&app);
    let file = dir.0.join("big.jsonl");
    let mut cmd = bridge(&config);
    cmd.args(["export", "--channel", ev::ROOM, "-o"]).arg(&file);
    let (status, peak_kib) = tokio::task::spawn_blocking(move || run_measured(cmd))
        .await
        .unwrap();
    assert!(status.success());
    eprintln!("export of 100k messages: peak RSS {peak_kib} KiB");
    let size = std::fs::metadata(&file).unwrap().len();
    let lines = std::fs::read_to_string(&file).unwrap().lines().count();
    assert_eq!(lines, 1 + 1 + 100_000, "channel, alice, every message");
    // The output is far larger than the process ever was: it was streamed, not held.
    assert!(size > 45 * 1024 * 1024, "{size}");
    // The bound is the process's own floor (a debug binary, now with matrix-sdk-crypto mapped)
    // plus little: the export itself adds almost nothing to it.
    assert!(
        peak_kib < 48 * 1024,
        "peak RSS {peak_kib} KiB for a {size}-byte export"
    );
}
