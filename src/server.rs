//! The HTTP listener: hyper over each accepted connection, with what keeps slow, idle and
//! hostile clients from holding it: a header read timeout (which also closes idle keep-alive
//! connections), a body read timeout, a connection limit (connections beyond it are closed at
//! once), and a graceful shutdown with a deadline after which connections are dropped.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::timeout::RequestBodyTimeoutLayer;

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
    let router = router.layer(RequestBodyTimeoutLayer::new(limits.body_timeout));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
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
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    metrics.connections_refused.inc();
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let router = router.clone();
                let graceful = graceful.clone();
                let metrics = metrics.clone();
                let header_timeout = limits.header_timeout;
                connections.spawn(async move {
                    let _permit = permit;
                    metrics.connections.inc();
                    serve_connection(stream, peer, router, header_timeout, graceful).await;
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

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    header_timeout: Duration,
    graceful: CancellationToken,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            let response = router
                .oneshot(request.map(axum::body::Body::new))
                .await
                .unwrap_or_else(|never: Infallible| match never {});
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Also bounds how long an idle keep-alive connection waits for its next request.
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        }
        _ = graceful.cancelled() => {
            // Finish the request in flight (if any), then close.
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
