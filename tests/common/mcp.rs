#![allow(dead_code)] // each suite uses part of it
//! A real MCP server for tests (the official SDK's server side, Streamable HTTP at `/mcp`),
//! shared by the suites through `#[path]`. Its tools: `read_file {path}`, `list_dir {}`,
//! `delete_file {path}` (there so a test can show a tool the agent may not use is never
//! called), `fail {}` (an `isError` result), `slow {}` (5 s), `report {}` (structured content
//! and an image, no text). It records every `tools/call`, counts `tools/list` requests and
//! sessions, and can be stopped and started again on the same port.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::Request,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::any,
};
use rmcp::{
    ErrorData, ServerHandler,
    model::{
        CallToolRequestParams, CallToolResult, Content, ListToolsResult, PaginatedRequestParams,
        ServerCapabilities, ServerInfo, Tool,
    },
    service::{RequestContext, RoleServer},
    transport::{
        StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::session::local::LocalSessionManager,
    },
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// What the server saw, across restarts.
#[derive(Default)]
struct Seen {
    calls: Mutex<Vec<(String, Value)>>,
    lists: AtomicUsize,
    sessions: AtomicUsize,
}

/// A running MCP server (see the module doc).
pub struct McpServer {
    seen: Arc<Seen>,
    addr: SocketAddr,
    bearer: Option<String>,
    running: Mutex<Option<Running>>,
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    sessions: Arc<LocalSessionManager>,
}

impl McpServer {
    /// Serves on 127.0.0.1 (a free port); the URL is `http://…/mcp`. With `bearer`, a request
    /// without `Authorization: Bearer <bearer>` gets 401.
    pub async fn spawn(bearer: Option<&str>) -> (Self, String) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await;
        let addr = listener.local_addr().unwrap();
        let server = McpServer {
            seen: Arc::default(),
            addr,
            bearer: bearer.map(str::to_owned),
            running: Mutex::new(None),
        };
        server.serve(listener);
        (server, format!("http://{addr}/mcp"))
    }

    /// The `tools/call` requests so far: tool name and arguments.
    pub fn calls(&self) -> Vec<(String, Value)> {
        self.seen.calls.lock().unwrap().clone()
    }

    /// The `tools/list` requests so far.
    pub fn lists(&self) -> usize {
        self.seen.lists.load(Ordering::SeqCst)
    }

    /// The sessions opened so far (one per `initialize`).
    pub fn sessions(&self) -> usize {
        self.seen.sessions.load(Ordering::SeqCst)
    }

    /// Forgets every session, as a server does when they expire: a request naming one is
    /// refused from now on.
    pub async fn expire_sessions(&self) {
        let sessions = self
            .running
            .lock()
            .unwrap()
            .as_ref()
            .map(|r| r.sessions.clone());
        if let Some(sessions) = sessions {
            sessions.sessions.write().await.clear();
        }
    }

    /// Stops serving: the port refuses connections, open streams end.
    pub async fn stop(&self) {
        let running = self.running.lock().unwrap().take();
        if let Some(Running { stop, mut task, .. }) = running {
            stop.cancel();
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }

    /// Serves again on the same port, with no sessions (as a restarted server).
    pub async fn restart(&self) {
        self.stop().await;
        let listener = bind(self.addr).await;
        self.serve(listener);
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let stop = CancellationToken::new();
        let sessions = Arc::new(LocalSessionManager::default());
        let seen = self.seen.clone();
        let mcp = StreamableHttpService::new(
            move || {
                seen.sessions.fetch_add(1, Ordering::SeqCst);
                Ok(Tools { seen: seen.clone() })
            },
            sessions.clone(),
            StreamableHttpServerConfig {
                cancellation_token: stop.child_token(),
                ..Default::default()
            },
        );
        let bearer = self.bearer.clone().map(|b| format!("Bearer {b}"));
        let app = Router::new().route(
            "/mcp",
            any(move |req: Request| {
                let (mcp, bearer) = (mcp.clone(), bearer.clone());
                async move {
                    if let Some(bearer) = bearer {
                        let sent = req.headers().get(header::AUTHORIZATION);
                        if sent.and_then(|v| v.to_str().ok()) != Some(bearer.as_str()) {
                            return (
                                StatusCode::UNAUTHORIZED,
                                [(header::WWW_AUTHENTICATE, "Bearer")],
                            )
                                .into_response();
                        }
                    }
                    let response: Response = mcp.handle(req).await.map(Body::new);
                    response
                }
            }),
        );
        let shutdown = stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
        });
        *self.running.lock().unwrap() = Some(Running {
            stop,
            task,
            sessions,
        });
    }
}

/// Binds `addr`, reusing it at once after a stop (its old connections linger in TIME_WAIT).
async fn bind(addr: SocketAddr) -> tokio::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    socket.listen(64).unwrap()
}

/// The tools, one instance per session.
struct Tools {
    seen: Arc<Seen>,
}

fn tool(name: &'static str, description: &'static str, schema: Value) -> Tool {
    let Value::Object(schema) = schema else {
        unreachable!()
    };
    Tool::new(name, description, Arc::new(schema))
}

impl ServerHandler for Tools {
    fn get_info(&self) -> ServerInfo {
        ServerInfo {
            capabilities: ServerCapabilities::builder().enable_tools().build(),
            ..Default::default()
        }
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.seen.lists.fetch_add(1, Ordering::SeqCst);
        let path = json!({
            "type": "object",
            "properties": { "path": { "type": "string" } },
            "required": ["path"],
        });
        let none = json!({ "type": "object", "properties": {} });
        Ok(ListToolsResult::with_all_items(vec![
            tool("read_file", "Reads a file.", path.clone()),
            tool("list_dir", "Lists the directory.", none.clone()),
            tool("delete_file", "Deletes a file.", path),
            tool("fail", "Always fails.", none.clone()),
            tool("slow", "Answers after 5 s.", none.clone()),
            tool("report", "A chart and its numbers.", none),
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let arguments = request.arguments.unwrap_or_default();
        self.seen
            .calls
            .lock()
            .unwrap()
            .push((request.name.to_string(), Value::Object(arguments.clone())));
        let path = arguments.get("path").and_then(Value::as_str).unwrap_or("?");
        let text = |t: String| Ok(CallToolResult::success(vec![Content::text(t)]));
        match request.name.as_ref() {
            "read_file" => text(format!("contents of {path}")),
            "delete_file" => text(format!("deleted {path}")),
            "list_dir" => Ok(CallToolResult::success(
                ["a.txt", "b.txt", "notes"].map(Content::text).to_vec(),
            )),
            "fail" => Ok(CallToolResult::error(vec![Content::text("disk on fire")])),
            "slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                text("finally".into())
            }
            "report" => Ok(CallToolResult {
                structured_content: Some(json!({ "files": 3 })),
                ..CallToolResult::success(vec![Content::image("iVBORw0KGgo=", "image/png")])
            }),
            other => Err(ErrorData::invalid_params(
                format!("no tool `{other}`"),
                None,
            )),
        }
    }
}
