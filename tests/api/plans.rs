//! Lookups by Matrix event id (edits, redactions) stay index lookups however large `messages`
//! grows and whatever plan was cached while it was small: a table prefilled with 200,000
//! messages, plans cached beforehand on the empty table, 20 transactions with edits and
//! redactions through the bridge, then the plan the database uses.

use rstest::rstest;
use serde_json::json;

use crate::support::{Backend, TestApp, ev};

const HISTORY: u64 = 200_000;

/// Transactions of messages, edits of earlier ones and a redaction.
fn traffic(round: u64) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    for i in 0..8 {
        events.push(ev::text(
            &format!("r{round}m{i}"),
            "@alice:localhost",
            &format!("message {round}.{i}"),
        ));
    }
    for i in 0..3 {
        events.push(ev::base(
            "m.room.message",
            &format!("r{round}e{i}"),
            "@alice:localhost",
            json!({
                "msgtype": "m.text", "body": "* fixed",
                "m.new_content": { "msgtype": "m.text", "body": format!("fixed {round}.{i}") },
                "m.relates_to": { "rel_type": "m.replace", "event_id": format!("$r{}m{i}", round.saturating_sub(1)) },
            }),
        ));
    }
    let mut redaction = ev::base(
        "m.room.redaction",
        &format!("r{round}x"),
        "@alice:localhost",
        json!({ "redacts": format!("$r{}m7", round.saturating_sub(1)) }),
    );
    redaction["redacts"] = json!(format!("$r{}m7", round.saturating_sub(1)));
    events.push(redaction);
    events
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_by_event_id_use_the_index_at_any_size(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    // Plans cached while the table is empty.
    for round in 0..6 {
        assert_eq!(
            app.put_txn(&format!("early{round}"), traffic(round))
                .await
                .0,
            200
        );
    }
    let prefill = match b {
        Backend::Postgres => format!(
            "INSERT INTO messages (id, channel_id, matrix_event_id, sender_type, content_preview, created_at) \
             SELECT gen_random_uuid(), (SELECT id FROM channels LIMIT 1), '$hist' || g, 'human', 'old ' || g, now() \
             FROM generate_series(1, {HISTORY}) g"
        ),
        Backend::Sqlite => format!(
            "INSERT INTO messages (id, channel_id, matrix_event_id, sender_type, content_preview, created_at) \
             WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {HISTORY}) \
             SELECT lower(hex(randomblob(16))), (SELECT id FROM channels LIMIT 1), '$hist' || n, 'human', 'old ' || n, \
             '2026-01-01T00:00:00.000Z' FROM g"
        ),
    };
    app.exec(&prefill).await;
    // What the database actually executes, not only what EXPLAIN says now: PostgreSQL counts
    // sequential and index scans per table. A backend flushes its counts to the shared stats at
    // most every 10 s while it is idle (PostgreSQL 15+), so the reads wait past that.
    let scans = || async {
        if b != Backend::Postgres {
            return (0, 0);
        }
        tokio::time::sleep(std::time::Duration::from_secs(11)).await;
        app.exec("SELECT pg_stat_clear_snapshot()").await;
        let r = app
            .rows("SELECT CAST(seq_scan AS TEXT), CAST(idx_scan AS TEXT) FROM pg_stat_user_tables WHERE relname = 'messages'")
            .await;
        let n = |i: usize| r[0][i].as_deref().unwrap_or("0").parse::<i64>().unwrap();
        (n(0), n(1))
    };
    let before = scans().await;
    for round in 6..26 {
        assert_eq!(
            app.put_txn(&format!("late{round}"), traffic(round)).await.0,
            200
        );
    }
    // The edits and redactions were applied.
    assert_eq!(
        app.col("SELECT content_preview FROM messages WHERE matrix_event_id = '$r24m1'")
            .await,
        vec!["fixed 25.1"]
    );
    assert_eq!(
        app.col("SELECT CAST(redacted_at IS NOT NULL AS TEXT) FROM messages WHERE matrix_event_id = '$r24m7'").await.len(),
        1
    );
    let after = scans().await;
    assert_eq!(
        after.0, before.0,
        "no sequential scan of messages while applying edits and redactions ({before:?} → {after:?})"
    );
    if b == Backend::Postgres {
        assert!(
            after.1 >= before.1 + 20 * 4,
            "index lookups: {before:?} → {after:?}"
        );
    }
    // The plan of a batch with edits and redactions, as the write path runs it.
    let batch = daarion_bridge::db::Batch {
        edits: vec![daarion_bridge::db::Edit {
            target: "$r24m2".try_into().unwrap(),
            sender: daarion_bridge::db::Party::User(daarion_bridge::model::ids::UserRowId::new()),
            preview: "x".into(),
            at: daarion_bridge::model::Ts::now(),
        }],
        redactions: vec![daarion_bridge::db::Redaction {
            target: "$r24m3".try_into().unwrap(),
            at: daarion_bridge::model::Ts::now(),
        }],
        ..Default::default()
    };
    let plan = app.store.explain_apply(&batch).await.unwrap();
    match b {
        Backend::Postgres => {
            assert!(
                plan.matches("messages_matrix_event_id_key").count() >= 2,
                "{plan}"
            );
            assert!(!plan.contains("Seq Scan on messages"), "{plan}");
        }
        Backend::Sqlite => {
            assert!(plan.matches("USING INDEX").count() >= 2, "{plan}");
            assert!(!plan.contains("SCAN messages"), "{plan}");
        }
    }
}

/// Edits of messages on full pages are HOT updates on PostgreSQL: `messages` leaves a tenth of
/// each new page free (fillfactor 90), so an edit's new row version stays on its page and none of
/// the table's six indexes gets a new entry. With PostgreSQL's default (fillfactor 100) the
/// pages below are full and every edit moves its row. On SQLite the edits apply in place.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_of_full_pages_stay_on_their_page(#[case] b: Backend) {
    // Previews of up to 500 characters (the default), so the rows are as large as real ones.
    let app = TestApp::spawn_with(b, |c| {
        c.replace("preview_chars = 40", "preview_chars = 500")
    })
    .await;
    crate::mirrored(&app).await;
    // Long, equal-length bodies: a page holds about a dozen such rows.
    let body = |i: usize, what: &str| format!("{what} {i:03} {}", "x".repeat(470));
    let messages = (0..40)
        .map(|i| ev::text(&format!("full{i}"), "@alice:localhost", &body(i, "message")))
        .collect();
    assert_eq!(app.put_txn("full", messages).await.0, 200);
    let pages = || async {
        match b {
            Backend::Postgres => app
                .rows(
                    "SELECT matrix_event_id, CAST((ctid::text::point)[0] AS TEXT) FROM messages \
                     WHERE matrix_event_id LIKE '$full%' ORDER BY matrix_event_id",
                )
                .await
                .into_iter()
                .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
                .collect::<Vec<_>>(),
            Backend::Sqlite => Vec::new(),
        }
    };
    let before = pages().await;
    // One edit per page but the last (which may not be full), each the original's length.
    let mut targets: Vec<usize> = Vec::new();
    match b {
        Backend::Postgres => {
            let last = before.iter().map(|(_, p)| p.clone()).max().unwrap();
            let mut seen = std::collections::HashSet::new();
            for (id, page) in &before {
                if *page != last && seen.insert(page.clone()) {
                    targets.push(id.trim_start_matches("$full").parse().unwrap());
                }
            }
            assert!(
                targets.len() >= 2,
                "the messages span several pages: {before:?}"
            );
        }
        Backend::Sqlite => targets.extend([0, 13, 26]),
    }
    let edits = targets
        .iter()
        .map(|&i| {
            ev::base(
                "m.room.message",
                &format!("fix{i}"),
                "@alice:localhost",
                json!({
                    "msgtype": "m.text", "body": format!("* {}", body(i, "edited!")),
                    "m.new_content": { "msgtype": "m.text", "body": body(i, "edited!") },
                    "m.relates_to": { "rel_type": "m.replace", "event_id": format!("$full{i}") },
                }),
            )
        })
        .collect();
    assert_eq!(app.put_txn("fixes", edits).await.0, 200);
    for &i in &targets {
        assert_eq!(
            app.col(&format!(
                "SELECT content_preview FROM messages WHERE matrix_event_id = '$full{i}'"
            ))
            .await,
            vec![body(i, "edited!")]
        );
    }
    if b == Backend::Postgres {
        let after = pages().await;
        for &i in &targets {
            let id = format!("$full{i}");
            let page =
                |v: &Vec<(String, String)>| v.iter().find(|(e, _)| *e == id).unwrap().1.clone();
            assert_eq!(
                page(&after),
                page(&before),
                "the edit of {id} stayed on its page (a HOT update)"
            );
        }
        assert_eq!(
            app.col("SELECT CAST(reloptions AS TEXT) FROM pg_class WHERE relname = 'messages'")
                .await,
            vec!["{fillfactor=90}"]
        );
    }
}
