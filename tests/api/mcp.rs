//! MCP servers as agent tools: `runs::tools::mcp::McpClients` against a real MCP server (the
//! SDK's server side over Streamable HTTP, `tests/common/mcp.rs`). No database.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use daarion_bridge::{
    model::tools::McpServer,
    runs::tools::{ToolError, mcp::McpClients},
};
use serde_json::{Map, Value, json};

use crate::fake_mcp::McpServer as FakeMcp;

fn clients(list_ttl: Duration) -> McpClients {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    McpClients::new(list_ttl, http)
}

fn server(url: &str, secret: Option<&str>, timeout: Duration) -> McpServer {
    McpServer {
        name: "files".into(),
        url: url.into(),
        header_secret_ref: secret.map(|_| "files_token".into()),
        header_secret: secret.map(str::to_owned),
        allow: vec!["*".into()],
        timeout,
    }
}

fn args(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

const TTL: Duration = Duration::from_secs(600);
const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn lists_the_servers_tools() {
    let (fake, url) = FakeMcp::spawn(None).await;
    let tools = clients(TTL).tools(&server(&url, None, T)).await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "delete_file",
            "fail",
            "list_dir",
            "read_file",
            "report",
            "slow"
        ]
    );
    let read = tools.iter().find(|t| t.name == "read_file").unwrap();
    assert_eq!(read.description, "Reads a file.");
    assert_eq!(read.input_schema["properties"]["path"]["type"], "string");
    assert_eq!(read.input_schema["required"], json!(["path"]));
    assert_eq!(fake.lists(), 1);
    assert!(fake.calls().is_empty(), "listing calls nothing");
}

#[tokio::test]
async fn the_list_is_cached_within_its_ttl_and_asked_again_after() {
    let (fake, url) = FakeMcp::spawn(None).await;
    let ttl = Duration::from_millis(600);
    let (mcp, files) = (clients(ttl), server(&url, None, T));
    let first = mcp.tools(&files).await.unwrap();
    let again = mcp.tools(&files).await.unwrap();
    assert_eq!(fake.lists(), 1, "within the TTL the server is not asked");
    assert!(Arc::ptr_eq(&first, &again));
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let later = mcp.tools(&files).await.unwrap();
    assert_eq!(fake.lists(), 2, "after the TTL the server is asked again");
    assert!(!Arc::ptr_eq(&first, &later));
    assert_eq!(*first, *later);
    assert_eq!(fake.sessions(), 1, "one session for all of it");
}

#[tokio::test]
async fn a_call_returns_the_text() {
    let (fake, url) = FakeMcp::spawn(None).await;
    let (mcp, files) = (clients(TTL), server(&url, None, T));
    let text = mcp
        .call(&files, "read_file", args(json!({"path": "notes.txt"})))
        .await
        .unwrap();
    assert_eq!(text, "contents of notes.txt");
    // Several text parts: one a line.
    let text = mcp.call(&files, "list_dir", Map::new()).await.unwrap();
    assert_eq!(text, "a.txt\nb.txt\nnotes");
    // No text: the structured content as JSON, the image named.
    let text = mcp.call(&files, "report", Map::new()).await.unwrap();
    assert_eq!(text, "{\"files\":3}\n[image: image/png]");
    assert_eq!(
        fake.calls(),
        [
            ("read_file".to_owned(), json!({"path": "notes.txt"})),
            ("list_dir".to_owned(), json!({})),
            ("report".to_owned(), json!({})),
        ]
    );
    assert_eq!(fake.sessions(), 1, "the calls share one session");
}

#[tokio::test]
async fn an_error_result_is_a_tool_error_with_its_text() {
    let (fake, url) = FakeMcp::spawn(None).await;
    let (mcp, files) = (clients(TTL), server(&url, None, T));
    let err = mcp.call(&files, "fail", Map::new()).await.unwrap_err();
    assert!(
        matches!(&err, ToolError::Tool(t) if t == "disk on fire"),
        "{err:?}"
    );
    // A JSON-RPC error (no such tool) is the server's protocol answer, not a tool's.
    let err = mcp.call(&files, "nope", Map::new()).await.unwrap_err();
    assert!(
        matches!(&err, ToolError::Protocol(m) if m.contains("no tool `nope`")),
        "{err:?}"
    );
    assert_eq!(fake.calls().len(), 2);
    // Neither broke the session.
    mcp.call(&files, "list_dir", Map::new()).await.unwrap();
    assert_eq!(fake.sessions(), 1);
}

#[tokio::test]
async fn a_slow_tool_times_out() {
    let (fake, url) = FakeMcp::spawn(None).await;
    let mcp = clients(TTL);
    let started = Instant::now();
    let err = mcp
        .call(
            &server(&url, None, Duration::from_secs(1)),
            "slow",
            Map::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ToolError::Timeout(t) if t == Duration::from_secs(1)),
        "{err:?}"
    );
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1800), "{took:?}");
    assert_eq!(fake.calls()[0].0, "slow", "the call did reach the server");
    // The session outlives the timeout.
    let text = mcp
        .call(
            &server(&url, None, T),
            "read_file",
            args(json!({"path": "a"})),
        )
        .await
        .unwrap();
    assert_eq!(text, "contents of a");
    assert_eq!(fake.sessions(), 1);
}

#[tokio::test]
async fn a_slow_call_does_not_hold_up_the_others() {
    let (fake, url) = FakeMcp::spawn(None).await;
    let mcp = Arc::new(clients(TTL));
    let files = server(&url, None, T);
    mcp.tools(&files).await.unwrap();
    // `tokio::spawn`: the calls' futures are `Send`, as the runs need.
    let slow = tokio::spawn({
        let (mcp, files) = (mcp.clone(), files.clone());
        async move { mcp.call(&files, "slow", Map::new()).await }
    });
    while fake.calls().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // `slow` runs for 5 s: a call on the same session queued behind it would wait that long.
    let started = Instant::now();
    let text = mcp
        .call(&files, "read_file", args(json!({"path": "a"})))
        .await
        .unwrap();
    assert_eq!(text, "contents of a");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(!slow.is_finished());
    assert_eq!(fake.sessions(), 1, "both on one session");
    slow.abort();
}

#[tokio::test]
async fn a_server_that_is_down_is_unreachable_quickly() {
    let (fake, url) = FakeMcp::spawn(None).await;
    fake.stop().await;
    let started = Instant::now();
    let err = clients(TTL)
        .call(
            &server(&url, None, T),
            "read_file",
            args(json!({"path": "a"})),
        )
        .await
        .unwrap_err();
    assert!(matches!(&err, ToolError::Network(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(!err.to_string().contains("127.0.0.1"), "no URL: {err}");
    let err = clients(TTL)
        .tools(&server(&url, None, T))
        .await
        .unwrap_err();
    assert!(matches!(&err, ToolError::Network(_)), "{err:?}");
}

#[tokio::test]
async fn the_bearer_is_required_and_sent() {
    let (fake, url) = FakeMcp::spawn(Some("s3cret")).await;
    let mcp = clients(TTL);
    for secret in [None, Some("wrong")] {
        let err = mcp
            .call(
                &server(&url, secret, T),
                "read_file",
                args(json!({"path": "a"})),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ToolError::Status { status: 401, .. }),
            "{secret:?}: {err:?}"
        );
        assert!(!format!("{err:?}").contains("wrong"), "never the secret");
    }
    assert_eq!(fake.sessions(), 0);
    let text = mcp
        .call(
            &server(&url, Some("s3cret"), T),
            "read_file",
            args(json!({"path": "a"})),
        )
        .await
        .unwrap();
    assert_eq!(text, "contents of a");
    assert_eq!(fake.calls().len(), 1);
}

#[tokio::test]
async fn a_restarted_server_gets_a_new_session() {
    let (fake, url) = FakeMcp::spawn(None).await;
    let (mcp, files) = (clients(TTL), server(&url, None, T));
    mcp.tools(&files).await.unwrap();
    mcp.call(&files, "read_file", args(json!({"path": "a"})))
        .await
        .unwrap();
    assert_eq!((fake.sessions(), fake.lists()), (1, 1));
    fake.restart().await;
    let text = mcp
        .call(&files, "read_file", args(json!({"path": "b"})))
        .await
        .unwrap();
    assert_eq!(text, "contents of b");
    assert_eq!(fake.sessions(), 2, "the old session is gone: a new one");
    assert_eq!(fake.calls().len(), 2, "the call ran once");
    // The list came from the old session: asked again, though within its TTL.
    mcp.tools(&files).await.unwrap();
    assert_eq!(fake.lists(), 2);
    mcp.tools(&files).await.unwrap();
    assert_eq!(fake.lists(), 2);
}

#[tokio::test]
async fn an_expired_session_is_reopened() {
    let (fake, url) = FakeMcp::spawn(None).await;
    let (mcp, files) = (clients(TTL), server(&url, None, T));
    mcp.call(&files, "list_dir", Map::new()).await.unwrap();
    fake.expire_sessions().await;
    let text = mcp.call(&files, "list_dir", Map::new()).await.unwrap();
    assert_eq!(text, "a.txt\nb.txt\nnotes");
    assert_eq!(fake.sessions(), 2);
    assert_eq!(fake.calls().len(), 2);
}
