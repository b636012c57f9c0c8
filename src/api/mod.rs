//! The agent API (`/api/v1`): how agent runtimes act as their agent. Authenticated by access
//! keys with capabilities (`auth`); rate limited per agent; request bodies bounded and
//! checked (`extract`); documented in `docs/agent-api.openapi.json`, also served at
//! `/api/v1/openapi.json`. Handlers: `channels` (who am I, channels, sessions, typing,
//! receipts, settings), `messages` (read, send, edit, redact, react, outbox), `files` (send a
//! file), `runs`, and the
//! admin (provisioning) API under `/api/v1/admin` (`admin`, admin keys only).

pub mod admin;
pub mod audit;
mod auth;
mod channels;
pub(crate) mod extract;
mod files;
mod messages;
mod runs;

use std::{net::IpAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::StatusCode,
    routing::{get, post, put},
};

use crate::{
    bridge::agents::AgentRegistry,
    db::Store,
    metrics::Metrics,
    puppet::Puppets,
    ratelimit::RateLimiter,
    server::error::{MatrixError, matrix_error_bodies},
};

/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("../../docs/agent-api.openapi.json");

/// Shared state of the agent API.
#[derive(Clone)]
pub struct ApiState {
    /// The store.
    pub store: Store,
    /// The agents.
    pub registry: Arc<AgentRegistry>,
    /// Acting as agents.
    pub puppets: Arc<Puppets>,
    /// Requests per agent, or per person for user keys (by their row's UUID).
    pub limiter: Arc<RateLimiter<uuid::Uuid>>,
    /// Failed authentications per client address.
    pub auth_failures: Arc<RateLimiter<IpAddr>>,
    /// How long a send waits for the homeserver before answering 202.
    pub send_wait: Duration,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Largest file an agent may send (the homeserver's limit applies too).
    pub max_upload_bytes: usize,
    /// Checks the media links runtimes were given.
    pub links: crate::links::Links,
    /// Size caps and timeout of media downloads.
    pub media: crate::config::MediaConfig,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Operator operations shared with the bot commands.
    pub control: Arc<crate::bridge::control::Control>,
    /// `[tools]`: the hosts a blueprint's tools may be on, checked when one is put.
    pub tools: Arc<crate::config::ToolsConfig>,
    /// The workers of durable work, woken when the admin API re-queues failed work.
    pub wakers: crate::bridge::mirror::Wakers,
}

/// The agent API on a listener of its own (unknown routes are Matrix errors too).
pub fn router(state: ApiState) -> Router {
    routes(state)
        .fallback(|| async {
            MatrixError::unrecognized(StatusCode::NOT_FOUND, "unrecognized request")
        })
        .method_not_allowed_fallback(|| async {
            MatrixError::unrecognized(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
}

/// The agent API's routes, to merge with the appservice's (which bring the fallbacks).
pub fn routes(state: ApiState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/api/v1/openapi.json", get(channels::openapi))
        .route("/api/v1/agent", get(channels::whoami))
        .route("/api/v1/channels", get(channels::channels))
        .route("/api/v1/sessions", get(channels::sessions))
        .route(
            "/api/v1/channels/{channel_id}/messages",
            get(messages::list).post(messages::send),
        )
        .route(
            "/api/v1/channels/{channel_id}/messages/{event_id}",
            put(messages::edit).delete(messages::redact),
        )
        .route(
            "/api/v1/channels/{channel_id}/messages/{event_id}/reactions",
            post(messages::react),
        )
        .route(
            "/api/v1/channels/{channel_id}/typing",
            put(channels::typing),
        )
        .route(
            "/api/v1/channels/{channel_id}/read-marker",
            post(channels::read_marker),
        )
        .route(
            "/api/v1/channels/{channel_id}/settings",
            put(channels::settings),
        )
        .route("/api/v1/outbox/{outbox_id}", get(messages::outbox))
        .route("/api/v1/media/{token}", get(files::media))
        .route("/api/v1/runs", get(runs::list))
        .route("/api/v1/runs/{run_id}", get(runs::get))
        .merge(admin::routes())
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            limit,
            crate::server::body::refuse_oversized,
        ))
        // Files have their own, larger limit.
        .merge(files::routes(state.max_upload_bytes))
        .layer(axum::middleware::map_response(matrix_error_bodies))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::audit_denied,
        ))
        .with_state(state)
}
