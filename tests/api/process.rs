//! The bridge as a real process, and its HTTP listener under hostile clients: header, body and
//! idle timeouts, the connection limit, SIGTERM with a half-open connection (exit 0 within the
//! shutdown deadline), and SIGKILL while transactions and agent runs are in flight (after a
//! restart every accepted question gets exactly one answer).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use rstest::rstest;
use serde_json::{Value, json};

use crate::support::{Backend, TestApp, ev};

/// Limits small enough to observe.
fn limits(c: String) -> String {
    c.replace(
        "[bridge]\n",
        "[server]\nheader_timeout = \"1s\"\nbody_timeout = \"1s\"\nmax_connections = 20\nshutdown_grace = \"2s\"\n\n[bridge]\n",
    )
}

/// Whether the server closes `stream` within `within` (reads until EOF or a reset).
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_cut_off(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, limits).await;
    let addr = app.addr;
    tokio::task::spawn_blocking(move || {
        // Headers that never end.
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"PUT /_matrix/app/v1/transactions/x HTTP/1.1\r\nHost: a\r\n").unwrap();
        let started = Instant::now();
        assert!(closed_within(&mut slow, Duration::from_secs(4)), "partial headers must be cut off");
        assert!(started.elapsed() >= Duration::from_millis(800), "not before the header timeout");
        // A body shorter than its Content-Length.
        let mut half = TcpStream::connect(addr).unwrap();
        half.write_all(
            b"PUT /_matrix/app/v1/transactions/y HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"events\":",
        )
        .unwrap();
        assert!(closed_within(&mut half, Duration::from_secs(4)), "a stalled body must be cut off");
        // An idle keep-alive connection after a request.
        let mut idle = TcpStream::connect(addr).unwrap();
        idle.write_all(b"GET /health/live HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert!(closed_within(&mut idle, Duration::from_secs(4)), "idle keep-alive connections are closed");
    })
    .await
    .unwrap();
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_holds(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, limits).await;
    let addr = app.addr;
    let mut held: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // At the limit a newcomer is served, and the oldest connection not proven to be the
    // homeserver's is closed to make room.
    let (oldest_closed, served) = tokio::task::spawn_blocking(move || {
        let mut extra = TcpStream::connect(addr).unwrap();
        let closed = closed_within(&mut held[0], Duration::from_millis(500));
        extra
            .write_all(b"GET /health/live HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        extra
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let _ = extra.read_to_string(&mut out);
        (closed, out)
    })
    .await
    .unwrap();
    assert!(oldest_closed, "the oldest idle connection makes room");
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    // Connections proven to be the homeserver's are never evicted: with all 20 of them open,
    // a newcomer is refused at once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refused = tokio::task::spawn_blocking(move || {
        let proven: Vec<TcpStream> = (0..20)
            .map(|i| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(
                    format!(
                        "PUT /_matrix/app/v1/transactions/limit-{i} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{{\"events\": []}}",
                        crate::support::HS_TOKEN
                    )
                    .as_bytes(),
                )
                .unwrap();
                let mut buf = [0u8; 512];
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let n = s.read(&mut buf).unwrap();
                assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
                s
            })
            .collect();
        let mut extra = TcpStream::connect(addr).unwrap();
        let refused = closed_within(&mut extra, Duration::from_millis(500));
        drop(proven);
        refused
    })
    .await
    .unwrap();
    assert!(
        refused,
        "with every slot the homeserver's, a newcomer is refused"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = app.metrics().await;
    for counter in [
        "daarion_bridge_http_connections_refused_total",
        "daarion_bridge_http_connections_evicted_total",
    ] {
        assert!(text.contains(counter), "{text}");
        assert!(
            !text.contains(&format!("{counter} 0\n")),
            "{counter}: {text}"
        );
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_starve_the_homeserver(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(app.addr).unwrap())
        .collect();
    let started = Instant::now();
    let (status, _) = app
        .put_txn("busy", vec![ev::text("b", "@alice:localhost", "through")])
        .await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(idle);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_content_length_is_refused(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let addr = app.addr;
    let response = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(
            b"PUT /_matrix/app/v1/transactions/n HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .await
    .unwrap();
    // hyper refuses an unparsable request head itself (before any handler): a bare 400 and a
    // closed connection, never a crash or a hang.
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_half_open_connection_exits_cleanly(#[case] b: Backend) {
    let app = TestApp::prepare(b, |c| {
        c.replace(
            "[bridge]\n",
            "[server]\nshutdown_grace = \"2s\"\n\n[bridge]\n",
        )
    })
    .await;
    let mut bridge = app.spawn_process(|c| c).await;
    let addr = bridge.addr;
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(
        b"PUT /_matrix/app/v1/transactions/x HTTP/1.1\r\nHost: a\r\nContent-Length: 50\r\n\r\n{",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let status = bridge.terminate(Duration::from_secs(8)).await;
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "exit 0 within the deadline; log:\n{}",
        bridge.process_log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(half);
}

/// A question for Sofia in `room`.
fn question(room: &str, id: &str) -> Value {
    ev::in_room(
        ev::now(ev::base(
            "m.room.message",
            id,
            "@alice:localhost",
            json!({ "msgtype": "m.text", "body": format!("question {id}"), "m.mentions": { "user_ids": [ev::SOFIA] } }),
        )),
        room,
    )
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_and_doubles_no_answer(#[case] b: Backend) {
    const ROOMS: usize = 8;
    let app = TestApp::prepare(b, |c| {
        c.replace("[bridge]\n", "[bridge]\ndebounce = \"50ms\"\n")
    })
    .await;
    let mut bridge = app.spawn_process(|c| c).await;
    let rooms: Vec<String> = (0..ROOMS).map(|i| format!("!r{i}:localhost")).collect();
    for (i, room) in rooms.iter().enumerate() {
        let setup = vec![
            ev::in_room(
                ev::invite_bot(&format!("inv{i}"), "@alice:localhost", "Room"),
                room,
            ),
            ev::in_room(
                ev::member(
                    &format!("aj{i}"),
                    "@alice:localhost",
                    "@alice:localhost",
                    "join",
                ),
                room,
            ),
            ev::in_room(
                ev::now(ev::member(&format!("sj{i}"), ev::SOFIA, ev::SOFIA, "join")),
                room,
            ),
        ];
        assert_eq!(bridge.put_txn(&format!("setup{i}"), setup).await.0, 200);
    }
    // Answers stay in flight: every send waits at the homeserver.
    *app.hs.send_delay.lock().unwrap() = Duration::from_millis(300);
    let mut pending: Vec<(String, Value)> = rooms
        .iter()
        .enumerate()
        .map(|(i, room)| (format!("q{i}"), question(room, &format!("q{i}"))))
        .collect();
    // Half the questions are accepted, then the bridge dies mid-load.
    let mut accepted = BTreeSet::new();
    for (txn, event) in pending.drain(..ROOMS / 2) {
        assert_eq!(bridge.put_txn(&txn, vec![event]).await.0, 200);
        accepted.insert(txn);
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    bridge.kill9();
    // The homeserver retries what was not acknowledged; the restarted bridge gets it all.
    let restarted = app.spawn_process(|c| c).await;
    for (txn, event) in pending {
        assert_eq!(restarted.put_txn(&txn, vec![event]).await.0, 200);
        accepted.insert(txn);
    }
    assert_eq!(accepted.len(), ROOMS);
    // Every accepted question gets exactly one answer (edits aside; a re-send with the same
    // transaction id is the same message for the homeserver).
    let answers = || {
        let mut by_question: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (_, call) in app.hs.sent_messages() {
            if call.body["m.relates_to"]["rel_type"] == "m.replace" {
                continue;
            }
            if let Some(q) = call.body["m.relates_to"]["m.in_reply_to"]["event_id"].as_str() {
                let txn = call.path.rsplit('/').next().unwrap_or_default().to_owned();
                by_question
                    .entry(q.trim_start_matches('$').to_owned())
                    .or_default()
                    .insert(txn);
            }
        }
        by_question
    };
    for _ in 0..300 {
        if answers().len() == ROOMS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let any duplicate show up before judging.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answers = answers();
    assert_eq!(
        answers.len(),
        ROOMS,
        "{answers:?}\nlog:\n{}",
        restarted.process_log()
    );
    for (question, txns) in &answers {
        assert_eq!(
            txns.len(),
            1,
            "question {question} answered {} times",
            txns.len()
        );
    }
    let runs = restarted.col("SELECT status FROM agent_runs").await;
    assert_eq!(runs.len(), ROOMS, "one run per question: {runs:?}");
    assert!(runs.iter().all(|s| s == "completed"), "{runs:?}");
}
