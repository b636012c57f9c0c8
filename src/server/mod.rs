//! The HTTP listener: hyper over each accepted connection, with what keeps slow, idle and
//! hostile clients from holding it:
//!
//! - **deadlines**: a request's headers must arrive within `server.header_timeout` of when
//!   the connection began waiting for them (hyper's header timer, which is not restarted by
//!   each byte) and its body within `server.body_timeout` of its headers ([`body`]); past either
//!   the connection is closed, with 408 where an answer can still be written;
//! - **the homeserver's lane**: a connection budget in which a connection proven to be the
//!   homeserver's is never evicted and a new one always finds room ([`lanes`]);
//! - **Matrix errors for malformed HTTP**: what hyper answers by itself gets a
//!   `{"errcode","error"}` body (`io.rs`);
//! - a graceful shutdown with a deadline after which connections are dropped.

pub mod body;
pub mod error;
mod io;
pub mod lanes;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use self::{
    body::{BodyState, DeadlineBody},
    io::MatrixIo,
    lanes::{Admission, Lanes, Ticket},
};
use crate::{config::ServerConfig, metrics::Metrics};

/// Serves `router` on `listener` until `shutdown` is cancelled, then finishes in-flight
/// requests for up to `limits.shutdown_grace` and drops what remains.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let lanes = Lanes::new(limits.max_connections);
    let graceful = CancellationToken::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors, say: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let ticket = match lanes.admit() {
                    Admission::Admitted(ticket) => ticket,
                    Admission::Evicted(ticket) => {
                        metrics.connections_evicted.inc();
                        ticket
                    }
                    Admission::Refused => {
                        metrics.connections_refused.inc();
                        drop(stream);
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let connection = Connection {
                    peer,
                    router: router.clone(),
                    limits: limits.clone(),
                    metrics: metrics.clone(),
                    graceful: graceful.clone(),
                };
                let metrics = metrics.clone();
                connections.spawn(async move {
                    metrics.connections.inc();
                    connection.serve(stream, ticket).await;
                    metrics.connections.dec();
                });
            }
        }
    }
    drop(listener);
    graceful.cancel();
    let grace = limits.shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !drained {
        tracing::warn!(
            open = connections.len(),
            "connections still open after the shutdown grace; dropping them"
        );
        connections.shutdown().await;
    }
}

/// What one connection's task needs.
struct Connection {
    peer: SocketAddr,
    router: Router,
    limits: ServerConfig,
    metrics: Arc<Metrics>,
    graceful: CancellationToken,
}

impl Connection {
    async fn serve(self, stream: tokio::net::TcpStream, ticket: Ticket) {
        let Connection {
            peer,
            router,
            limits,
            metrics,
            graceful,
        } = self;
        let tag = ticket.tag.clone();
        let body_timeout = limits.body_timeout;
        let timeouts = metrics.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let router = router.clone();
            let tag = tag.clone();
            let metrics = metrics.clone();
            async move {
                // Seen before it is routed: until the hs_token check marks it the homeserver's,
                // it is evicted before connections that have sent nothing yet.
                tag.mark_seen();
                let (mut parts, incoming) = request.into_parts();
                parts.extensions.insert(ConnectInfo(peer));
                parts.extensions.insert(tag);
                // Only a request with a body gets a deadline and its shared state.
                let state = (!hyper::body::Body::is_end_stream(&incoming))
                    .then(|| Arc::new(BodyState::default()));
                let body = match &state {
                    Some(state) => axum::body::Body::new(DeadlineBody::new(
                        incoming,
                        body_timeout,
                        state.clone(),
                    )),
                    None => axum::body::Body::empty(),
                };
                let mut response = router
                    .oneshot(hyper::Request::from_parts(parts, body))
                    .await
                    .unwrap_or_else(|never: Infallible| match never {});
                if state.as_ref().is_some_and(|s| !s.finished()) {
                    // Answered before its body was read (refused, too large, too slow): close
                    // rather than read or buffer the rest.
                    response.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        axum::http::HeaderValue::from_static("close"),
                    );
                    if response.status() == axum::http::StatusCode::REQUEST_TIMEOUT {
                        metrics.requests_timed_out.inc();
                    }
                }
                Ok::<_, Infallible>(response)
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // A deadline from when the connection began waiting for the head, not restarted by
            // each byte; it also bounds how long an idle keep-alive connection waits.
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true);
        let io = MatrixIo::new(stream, timeouts);
        let connection = builder.serve_connection(TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, %peer, "connection ended with an error");
                }
            }
            _ = ticket.close.cancelled() => {
                tracing::debug!(%peer, "connection evicted to make room at the connection limit");
            }
            _ = graceful.cancelled() => {
                // Finish the request in flight (if any), then close.
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    _ = connection.as_mut() => {}
                    _ = ticket.close.cancelled() => {}
                }
            }
        }
    }
}
