//! Slow and hostile clients cannot lock the homeserver out (issue #21): request deadlines that
//! a dripping body cannot stretch, refusals before a body is read, the homeserver's lane under
//! a thousand dripping connections, Matrix errors for malformed HTTP, and the envelope and NUL
//! paths that used to refuse or fail a transaction.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use rstest::rstest;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::support::{Backend, HS_TOKEN, TestApp, ev};

/// Short deadlines, so that a drip outlasts them quickly.
fn deadlines(c: String) -> String {
    c.replace(
        "[bridge]\n",
        "[server]\nheader_timeout = \"2s\"\nbody_timeout = \"2s\"\nshutdown_grace = \"2s\"\n\n[bridge]\n",
    )
}

/// Sends `head` and then one byte of `drip` every `every`, until the server answers or closes;
/// returns what it answered and when (from the first byte).
fn drip(addr: SocketAddr, head: &[u8], drip: u8, every: Duration) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(every)).unwrap();
    let started = Instant::now();
    s.write_all(head).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(20) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                if s.write_all(&[drip]).is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

/// The JSON body of a raw HTTP response.
fn json_body(response: &str) -> Value {
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dripped_requests_meet_their_deadline(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, deadlines).await;
    let addr = app.addr;
    let head = format!(
        "PUT /_matrix/app/v1/transactions/drip HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {HS_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
    );
    let (body_answer, body_took, head_answer, head_took) = tokio::task::spawn_blocking(move || {
        // One space every 300 ms: never idle long enough for an idle timer, so only a deadline
        // counted from the start can end it.
        let (a, t) = drip(addr, head.as_bytes(), b' ', Duration::from_millis(300));
        // Headers that drip one byte at a time never end either.
        let (h, u) = drip(
            addr,
            b"PUT /_matrix/app/v1/transactions/x HTTP/1.1\r\nX-Slow: ",
            b'a',
            Duration::from_millis(300),
        );
        (a, t, h, u)
    })
    .await
    .unwrap();
    assert!(body_answer.starts_with("HTTP/1.1 408"), "{body_answer}");
    assert_eq!(
        json_body(&body_answer)["errcode"],
        "M_UNKNOWN",
        "{body_answer}"
    );
    assert!(
        body_answer
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{body_answer}"
    );
    assert!(
        body_took >= Duration::from_millis(1800) && body_took < Duration::from_secs(5),
        "the body deadline is 2 s from the headers: {body_took:?}"
    );
    assert!(head_answer.starts_with("HTTP/1.1 408"), "{head_answer}");
    assert_eq!(
        json_body(&head_answer)["errcode"],
        "M_UNKNOWN",
        "{head_answer}"
    );
    assert!(
        head_took >= Duration::from_millis(1800) && head_took < Duration::from_secs(5),
        "the header deadline is 2 s: {head_took:?}"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("daarion_bridge_http_requests_timed_out_total 2"),
        "{metrics}"
    );
    // The bridge still serves.
    let (s, _) = app.put_txn("after", vec![]).await;
    assert_eq!(s, 200);
}

/// Sends `head` and at most `partial` of its body; returns the answer and how long it took.
fn answer_to_partial(addr: SocketAddr, head: String) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    s.write_all(head.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

/// Sends `head`, then uploads `total` bytes of body in 32 KiB chunks (as a client does that
/// looks for an answer only once its request is sent) and only then reads; returns the first
/// write error, if any, and the answer.
fn upload_past_the_answer(
    addr: SocketAddr,
    head: String,
    total: usize,
) -> (Option<std::io::Error>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'x'; 32 << 10];
    let mut failed = None;
    for _ in 0..total.div_ceil(chunk.len()) {
        if let Err(error) = s.write_all(&chunk[..chunk.len().min(total)]) {
            failed = Some(error);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (failed, String::from_utf8_lossy(&out).into_owned())
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_uploading_reads_its_refusal(#[case] b: Backend) {
    // Closing a socket with unread bytes answers the client's next bytes with a reset, and the
    // reset can destroy the refusal before the client reads it ("broken pipe" in place of 413).
    // The lingering close reads on after the answer: the upload completes, then the client
    // reads the answer, every time.
    let app = TestApp::spawn(b).await;
    let addr = app.addr;
    let cases = [
        (
            "a 50 MiB transaction",
            format!(
                "PUT /_matrix/app/v1/transactions/big HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {HS_TOKEN}\r\nContent-Length: {}\r\n\r\n",
                50u64 << 20
            ),
            1 << 20,
            413,
        ),
        (
            "a 60 KB transaction without the token",
            "PUT /_matrix/app/v1/transactions/t HTTP/1.1\r\nHost: a\r\nContent-Length: 61440\r\n\r\n"
                .to_owned(),
            61440,
            401,
        ),
    ];
    for (what, head, total, status) in cases {
        for round in 0..3 {
            let head = head.clone();
            let (failed, answer) =
                tokio::task::spawn_blocking(move || upload_past_the_answer(addr, head, total))
                    .await
                    .unwrap();
            // Without the lingering close the upload fails ("broken pipe", "connection reset"),
            // which is all many HTTP clients report.
            assert!(failed.is_none(), "{what}, round {round}: {failed:?}");
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}")),
                "{what}, round {round}: {answer:?}"
            );
            assert!(
                json_body(&answer)["errcode"].is_string(),
                "{what}: {answer}"
            );
        }
    }
    // The bridge still serves.
    assert_eq!(app.put_txn("after", vec![]).await.0, 200);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_are_answered_before_their_body(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let (channel, _) = crate::agents::setup(&app).await;
    let create =
        |agent: &'static str, caps: &'static [&'static str], bundles: &'static [&'static str]| {
            let store = app.store.clone();
            async move {
                let caps: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
                let bundles: Vec<String> = bundles.iter().map(|c| c.to_string()).collect();
                daarion_bridge::keys::create(
                    &store,
                    agent,
                    "t",
                    &caps,
                    &bundles,
                    None,
                    &daarion_bridge::db::audit::Actor::cli(),
                )
                .await
                .unwrap()
                .1
            }
        };
    let read_only = create("agent:sofia", &["chat.message.read"], &[]).await;
    let outsider = create("agent:free", &[], &["agent.runtime"]).await;
    let addr = app.addr;
    let post = |key: String, length: u64| {
        format!(
            "POST /api/v1/channels/{channel}/messages HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{\"text\": "
        )
    };
    let cases = vec![
        ("a key without chat.message.send", post(read_only, 1000), 403, "M_FORBIDDEN"),
        ("an agent outside the channel", post(outsider.clone(), 1000), 403, "M_FORBIDDEN"),
        ("an unknown key", post("dab_nope".into(), 1000), 401, "M_UNKNOWN_TOKEN"),
        ("a 50 MiB agent API body", post(outsider, 50 << 20), 413, "M_TOO_LARGE"),
        (
            "a 50 MiB transaction",
            format!(
                "PUT /_matrix/app/v1/transactions/big HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {HS_TOKEN}\r\nContent-Length: {}\r\n\r\n{{",
                50u64 << 20
            ),
            413,
            "M_TOO_LARGE",
        ),
        (
            "a transaction without the token",
            "PUT /_matrix/app/v1/transactions/t HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n{".to_owned(),
            401,
            "M_UNAUTHORIZED",
        ),
    ];
    for (what, head, status, errcode) in cases {
        // The body never comes: an answer within the 5 s read timeout (the body deadline is 30 s)
        // shows that nothing waited for it.
        let (answer, took) = tokio::task::spawn_blocking(move || answer_to_partial(addr, head))
            .await
            .unwrap();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {answer}"
        );
        assert_eq!(json_body(&answer)["errcode"], errcode, "{what}: {answer}");
        assert!(
            took < Duration::from_secs(2),
            "{what}: answered after {took:?}"
        );
        // read_to_end returned: the connection was closed after the answer, the body unread.
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{what}: {answer}"
        );
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_homeserver_gets_through_a_thousand_dripping_connections(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.replace(
            "[bridge]\n",
            "[server]\nbody_timeout = \"4s\"\nmax_connections = 200\n\n[api]\nrate_limit_per_minute = 100000\n\n[bridge]\n",
        )
    })
    .await;
    let (channel, key) = crate::agents::setup(&app).await;
    let addr = app.addr;
    let head = format!(
        "POST /api/v1/channels/{channel}/messages HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"text\": \""
    );
    // A thousand connections with a valid key and a body that drips, reopened as they close.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let head = head.clone();
        let stop = stop.clone();
        attackers.spawn(async move {
            let mut opened = 0u32;
            while !stop.is_cancelled() {
                let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                opened += 1;
                if s.write_all(head.as_bytes()).await.is_err() {
                    continue;
                }
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return opened,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    if s.write_all(b"a").await.is_err() {
                        break;
                    }
                }
            }
            opened
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The homeserver: its pooled connection, and fresh connections each time.
    for round in 0..6 {
        for fresh in [false, true] {
            let client = if fresh {
                reqwest::Client::new()
            } else {
                app.http.clone()
            };
            let started = Instant::now();
            let r = client
                .put(app.url(&format!("/_matrix/app/v1/transactions/lane-{round}-{fresh}")))
                .bearer_auth(HS_TOKEN)
                .json(&json!({ "events": [ev::text(&format!("m{round}{fresh}"), "@alice:localhost", "through")] }))
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let status = r.map(|r| r.status().as_u16());
            assert_eq!(
                status.as_ref().ok(),
                Some(&200),
                "round {round} (fresh connection: {fresh}): {status:?}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "round {round}: {:?}",
                started.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    stop.cancel();
    let mut opened = 0;
    while let Some(n) = attackers.join_next().await {
        opened += n.unwrap();
    }
    assert!(opened >= 1000, "{opened}");
    assert_eq!(
        app.count("messages").await,
        12,
        "every transaction's message, and none of the dripping sends"
    );
    let metrics = app.metrics().await;
    let evicted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("daarion_bridge_http_connections_evicted_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(evicted > 0, "the flood filled the budget: {metrics}");
}

/// Sends raw `bytes` and reads the answer until the server closes.
fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http_gets_matrix_errors(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let addr = app.addr;
    let many_headers: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("negative Content-Length", b"PUT /_matrix/app/v1/transactions/n HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n".to_vec(), 400),
        ("non-numeric Content-Length", b"PUT /_matrix/app/v1/transactions/n HTTP/1.1\r\nHost: a\r\nContent-Length: ten\r\n\r\n".to_vec(), 400),
        ("doubled Content-Length", b"PUT /_matrix/app/v1/transactions/n HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello".to_vec(), 400),
        ("500 headers", format!("GET /health/live HTTP/1.1\r\nHost: a\r\n{many_headers}\r\n").into_bytes(), 431),
        ("a garbage request line", b"HELLO THERE\r\n\r\n".to_vec(), 400),
        ("binary noise", vec![0x16, 0x03, 0x01, 0x00, 0xff, 0x01, 0x00, 0x00, b'\r', b'\n', b'\r', b'\n'], 400),
        ("the HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), 505),
    ];
    for (what, bytes, status) in cases {
        let answer = tokio::task::spawn_blocking(move || raw(addr, &bytes))
            .await
            .unwrap();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: {answer}"
        );
        let body = json_body(&answer);
        assert!(
            body["errcode"]
                .as_str()
                .is_some_and(|e| e.starts_with("M_"))
                && body["error"].is_string(),
            "{what}: a Matrix error body, got {answer}"
        );
    }
    // The listener is unharmed.
    let r = app.http.get(app.url("/health/live")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_envelopes_keep_their_events(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    let body = json!({
        "events": [ev::text("env1", "@alice:localhost", "still mirrored")],
        "ephemeral": {"not": "a list"},
        "de.sorunome.msc2409.to_device": 7,
        "org.matrix.msc3202.device_lists": {"changed": ["@alice:localhost", "not a user id"]},
        "org.matrix.msc3202.device_one_time_keys_count": {"@agent_sofia:localhost": {"DEV": {"signed_curve25519": -3}}},
        "org.matrix.msc3202.device_unused_fallback_key_types": "none",
    });
    let (s, answer) = app.put_raw("env", serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(
        app.col("SELECT content_preview FROM messages").await,
        vec!["still mirrored".to_owned()]
    );
    let metrics = app.metrics().await;
    for (kind, n) in [
        ("ephemeral", 1),
        ("to_device", 1),
        ("device_lists", 1),
        ("one_time_keys", 2),
    ] {
        let line =
            format!("daarion_bridge_events_total{{type=\"{kind}\",outcome=\"malformed\"}} {n}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    // A body whose events are not a list is still refused whole.
    let (s, answer) = app.put_raw("env2", br#"{"events": {}}"#.to_vec()).await;
    assert_eq!(
        (s, answer["errcode"].as_str()),
        (400, Some("M_BAD_JSON")),
        "{answer}"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_the_channel_state_is_not_a_database_error(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    let placed = ev::in_room(
        ev::state(
            "city.daarion.channel",
            "nul-state",
            "@alice:localhost",
            "",
            json!({ "microdao": "microdao:\u{0}7", "slug": "s\u{0}lug" }),
        ),
        "!other:localhost",
    );
    let (s, _) = app
        .put_txn(
            "nul",
            vec![placed, ev::text("after-nul", "@alice:localhost", "next")],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        app.col("SELECT content_preview FROM messages").await,
        vec!["next".to_owned()]
    );
    let metrics = app.metrics().await;
    // Not refused by the database (which would count as rejected after the per-event retry):
    // the unknown microDAO just places nothing.
    assert!(!metrics.contains("outcome=\"rejected\""), "{metrics}");
    assert!(
        !metrics.contains("daarion_bridge_db_errors_total 1"),
        "{metrics}"
    );
}
