//! MCP servers over Streamable HTTP, through the official SDK's client (`rmcp`): one session
//! per server, opened when first needed and again after it fails; `tools/list` cached for
//! `tools.mcp_list_ttl`; calls bounded by the server's timeout.

use std::{
    collections::HashMap,
    error::Error as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rmcp::{
    ServiceError, ServiceExt as _,
    model::{
        CallToolRequest, CallToolRequestParams, CancelledNotificationParam, ClientInfo,
        ClientRequest, Implementation, ServerResult,
    },
    service::{ClientInitializeError, PeerRequestOptions, RoleClient, RunningService},
    transport::{
        StreamableHttpClientTransport,
        streamable_http_client::{StreamableHttpClientTransportConfig, StreamableHttpError},
    },
};
use serde_json::{Map, Value};
use tokio::time::{Instant, timeout_at};

use super::ToolError;
use crate::model::tools::McpServer;

/// One tool an MCP server offers.
#[derive(Debug, Clone, PartialEq)]
pub struct McpTool {
    /// Its name on the server (`read_file`).
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its arguments (`inputSchema`).
    pub input_schema: Value,
}

/// The bridge's MCP sessions, by server.
pub struct McpClients {
    list_ttl: Duration,
    http: reqwest::Client,
    /// Two declarations of one server with one secret share a session.
    servers: Mutex<HashMap<Key, Arc<Server>>>,
    /// Numbers sessions, so a cached list and a failed call can name the session they came from.
    opened: AtomicU64,
}

/// A server's URL and header secret.
type Key = (String, Option<String>);

/// One server's session and tool list.
#[derive(Default)]
struct Server {
    state: Mutex<State>,
    /// Held while a session opens, so calls arriving meanwhile wait for that one instead of
    /// each opening their own; never held once a session is there.
    opening: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    session: Option<Arc<Session>>,
    listed: Option<Listed>,
}

struct Listed {
    at: Instant,
    session: u64,
    tools: Arc<Vec<McpTool>>,
}

struct Session {
    id: u64,
    /// Dropping it ends the session (the SDK then deletes it on the server).
    client: RunningService<RoleClient, ClientInfo>,
}

impl Session {
    fn usable(&self) -> bool {
        !self.client.is_closed() && !self.client.is_transport_closed()
    }
}

impl McpClients {
    /// No sessions yet; `http` carries the requests (no redirects followed).
    pub fn new(list_ttl: Duration, http: reqwest::Client) -> Self {
        Self {
            list_ttl,
            http,
            servers: Mutex::default(),
            opened: AtomicU64::new(0),
        }
    }

    /// The server's tools (all of them: the caller filters by `allow`), from the cache when
    /// fresh.
    pub async fn tools(&self, server: &McpServer) -> Result<Arc<Vec<McpTool>>, ToolError> {
        let entry = self.server(server);
        {
            let state = entry.state.lock().unwrap();
            // A list from an earlier session is not trusted: the server may have changed.
            let current = state.session.as_ref().filter(|s| s.usable()).map(|s| s.id);
            if let Some(l) = &state.listed
                && l.at.elapsed() < self.list_ttl
                && current == Some(l.session)
            {
                return Ok(l.tools.clone());
            }
        }
        let deadline = Instant::now() + server.timeout;
        let (session, tools) = self
            .with_session(server, &entry, deadline, |s| async move {
                let tools = timeout_at(deadline, s.client.list_all_tools())
                    .await
                    .map_err(|_| Failure::Timeout)??;
                Ok((s.id, tools))
            })
            .await?;
        let tools: Arc<Vec<McpTool>> = Arc::new(
            tools
                .into_iter()
                .map(|t| McpTool {
                    name: t.name.into_owned(),
                    description: t.description.map(|d| d.into_owned()).unwrap_or_default(),
                    input_schema: Value::Object((*t.input_schema).clone()),
                })
                .collect(),
        );
        entry.state.lock().unwrap().listed = Some(Listed {
            at: Instant::now(),
            session,
            tools: tools.clone(),
        });
        Ok(tools)
    }

    /// Calls `tool` with `arguments`; the result's content as text (text parts joined,
    /// structured content as JSON). An `isError` result is [`ToolError::Tool`].
    pub async fn call(
        &self,
        server: &McpServer,
        tool: &str,
        arguments: Map<String, Value>,
    ) -> Result<String, ToolError> {
        let entry = self.server(server);
        let deadline = Instant::now() + server.timeout;
        let result = self
            .with_session(server, &entry, deadline, |s| {
                let params = CallToolRequestParams {
                    meta: None,
                    name: tool.to_owned().into(),
                    arguments: Some(arguments.clone()),
                    task: None,
                };
                async move {
                    let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
                    let handle = timeout_at(
                        deadline,
                        s.client
                            .send_cancellable_request(request, PeerRequestOptions::no_options()),
                    )
                    .await
                    .map_err(|_| Failure::Timeout)??;
                    match timeout_at(deadline, handle.rx).await {
                        Ok(answer) => Ok(answer.map_err(|_| ServiceError::TransportClosed)??),
                        Err(_) => {
                            // Tell the server to stop working on it; nobody waits for the answer.
                            let (peer, id) = (handle.peer, handle.id);
                            tokio::spawn(async move {
                                let cancel = CancelledNotificationParam {
                                    request_id: id,
                                    reason: Some("timed out".into()),
                                };
                                let _ = tokio::time::timeout(
                                    Duration::from_secs(5),
                                    peer.notify_cancelled(cancel),
                                )
                                .await;
                            });
                            Err(Failure::Timeout)
                        }
                    }
                }
            })
            .await?;
        let result = match result {
            ServerResult::CallToolResult(r) => serde_json::to_value(r)
                .map_err(|e| ToolError::Protocol(format!("{}: {e}", server.name)))?,
            // The SDK refuses `{"content": []}` as a tool result; it is one all the same.
            ServerResult::CustomResult(r) if r.0.get("content").is_some_and(Value::is_array) => r.0,
            _ => {
                return Err(ToolError::Protocol(format!(
                    "{}: the answer to tools/call is not a tool result",
                    server.name
                )));
            }
        };
        let text = result_text(&result);
        if result.get("isError").and_then(Value::as_bool) == Some(true) {
            return Err(ToolError::Tool(text));
        }
        Ok(text)
    }

    fn server(&self, server: &McpServer) -> Arc<Server> {
        let key = (server.url.clone(), server.header_secret.clone());
        self.servers.lock().unwrap().entry(key).or_default().clone()
    }

    /// Runs `op` on the server's session, opening one if needed; when `op` fails on a session
    /// opened earlier in a way that says the session is gone, once more on a new session. All
    /// of it by `deadline`. (`op`'s future owns what it needs: one borrowing from the closure,
    /// as an async closure's does, is not `Send` for every lifetime, and the runs spawn calls.)
    async fn with_session<T, F: Future<Output = Result<T, Failure>>>(
        &self,
        server: &McpServer,
        entry: &Server,
        deadline: Instant,
        op: impl Fn(Arc<Session>) -> F,
    ) -> Result<T, ToolError> {
        let attempt = async {
            let (session, fresh) = self.session(server, entry, None).await?;
            let failed = session.id;
            match op(session).await {
                Err(Failure::Service(e)) if !fresh && gone(&e) => {
                    tracing::info!(server = %server.name, "MCP session gone; opening a new one");
                    let (session, _) = self.session(server, entry, Some(failed)).await?;
                    op(session).await
                }
                other => other,
            }
        };
        match timeout_at(deadline, attempt).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(Failure::Service(e))) => Err(service_error(server, e)),
            Ok(Err(Failure::Tool(e))) => Err(e),
            Ok(Err(Failure::Timeout)) | Err(_) => Err(ToolError::Timeout(server.timeout)),
        }
    }

    /// The server's session, opened if there is none, it ended, or it is `stale` (the one a
    /// call just failed on); whether it was opened now.
    async fn session(
        &self,
        server: &McpServer,
        entry: &Server,
        stale: Option<u64>,
    ) -> Result<(Arc<Session>, bool), Failure> {
        let current = || {
            let state = entry.state.lock().unwrap();
            state
                .session
                .clone()
                .filter(|s| s.usable() && Some(s.id) != stale)
        };
        if let Some(s) = current() {
            return Ok((s, false));
        }
        let _opening = entry.opening.lock().await;
        // Another call may have opened one while this one waited.
        if let Some(s) = current() {
            return Ok((s, false));
        }
        let mut config = StreamableHttpClientTransportConfig::with_uri(server.url.as_str());
        if let Some(secret) = &server.header_secret {
            // The SDK sends it as `Authorization: Bearer …`.
            config = config.auth_header(secret.clone());
        }
        let transport = StreamableHttpClientTransport::with_client(self.http.clone(), config);
        let info = ClientInfo {
            client_info: Implementation {
                name: "daarion-bridge".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Implementation::default()
            },
            ..ClientInfo::default()
        };
        let client = info.serve(transport).await.map_err(|e| match e {
            ClientInitializeError::TransportError { error, .. } => {
                Failure::Service(ServiceError::TransportSend(error))
            }
            e => Failure::Tool(ToolError::Protocol(format!("{}: {e}", server.name))),
        })?;
        let id = self.opened.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(server = %server.name, session = id, "MCP session opened");
        let session = Arc::new(Session { id, client });
        // The one replaced, if any, ends when the calls still holding it are done.
        entry.state.lock().unwrap().session = Some(session.clone());
        Ok((session, true))
    }
}

/// Why one attempt failed, before it is told as a [`ToolError`].
enum Failure {
    Service(ServiceError),
    Tool(ToolError),
    Timeout,
}

impl From<ServiceError> for Failure {
    fn from(e: ServiceError) -> Self {
        Failure::Service(e)
    }
}

type HttpError = StreamableHttpError<reqwest::Error>;

/// Whether a failure says the session is gone and the request never ran, so that one more try
/// on a new session is safe. The SDK's HTTP client drops the status of a refused request (an
/// expired session is a 404, or a 401 from `rmcp` servers), so a refusal with no usable answer
/// counts; a broken answer (the server may have run the tool) does not.
fn gone(e: &ServiceError) -> bool {
    let ServiceError::TransportSend(t) = e else {
        return matches!(e, ServiceError::TransportClosed);
    };
    match t.error.downcast_ref::<HttpError>() {
        Some(StreamableHttpError::Client(r)) => r.is_connect(),
        Some(e) => matches!(
            e,
            StreamableHttpError::UnexpectedContentType(_)
                | StreamableHttpError::UnexpectedServerResponse(_)
                | StreamableHttpError::TransportChannelClosed
                | StreamableHttpError::AuthRequired(_)
        ),
        None => false,
    }
}

/// A failure as the model and the audit see it: the server's name, never its URL or secret.
fn service_error(server: &McpServer, e: ServiceError) -> ToolError {
    let name = &server.name;
    let t = match e {
        ServiceError::TransportSend(t) => t,
        ServiceError::McpError(e) => return ToolError::Protocol(format!("{name}: {e}")),
        ServiceError::Timeout { .. } => return ToolError::Timeout(server.timeout),
        ServiceError::TransportClosed => {
            return ToolError::Network(format!("{name}: the session ended"));
        }
        e => return ToolError::Protocol(format!("{name}: {e}")),
    };
    let e = match t.error.downcast::<HttpError>() {
        Ok(e) => *e,
        Err(e) => return ToolError::Protocol(format!("{name}: {e}")),
    };
    match e {
        StreamableHttpError::Client(r) if r.is_timeout() => ToolError::Timeout(server.timeout),
        StreamableHttpError::Client(r) if r.is_connect() || r.is_request() => {
            // reqwest's message is generic and names the URL; its causes say what went wrong.
            let mut why = String::new();
            let mut cause = r.source();
            while let Some(c) = cause {
                why.push_str(": ");
                why.push_str(&c.to_string());
                cause = c.source();
            }
            ToolError::Network(format!("{name}{why}"))
        }
        StreamableHttpError::Client(r) => {
            ToolError::Protocol(format!("{name}: {}", r.without_url()))
        }
        StreamableHttpError::AuthRequired(_) => ToolError::Status {
            status: 401,
            body: format!("{name} refused the credentials"),
        },
        e => ToolError::Protocol(format!("{name}: {e}")),
    }
}

/// A tool result (`{content, structuredContent, isError}`) as text for the model: text parts
/// joined by newlines, other parts named (`[image: image/png]`), the structured content as
/// JSON when no part is text.
fn result_text(result: &Value) -> String {
    let parts = result["content"].as_array().map_or(&[][..], Vec::as_slice);
    let mut lines: Vec<String> = Vec::new();
    for part in parts {
        let kind = part["type"].as_str().unwrap_or("content");
        if kind == "text" {
            lines.push(part["text"].as_str().unwrap_or("").to_owned());
            continue;
        }
        // What names it: an image's type, a resource's URI.
        let what = [&part["mimeType"], &part["uri"], &part["resource"]["uri"]]
            .into_iter()
            .find_map(Value::as_str);
        lines.push(match what {
            Some(w) => format!("[{kind}: {w}]"),
            None => format!("[{kind}]"),
        });
    }
    let any_text = parts.iter().any(|p| p["type"] == "text");
    if !any_text && let Some(s) = result.get("structuredContent").filter(|s| !s.is_null()) {
        lines.insert(0, s.to_string());
    }
    lines.join("\n")
}
