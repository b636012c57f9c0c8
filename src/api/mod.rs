//! The agent API (`/api/v1`): how agent runtimes act as their agent. Authenticated by access
//! keys with capabilities; rate limited per agent; documented in `docs/agent-api.openapi.json`,
//! which is also served at `/api/v1/openapi.json`.

mod auth;
mod handlers;
mod ratelimit;

use std::sync::Arc;

use axum::{
    Router,
    routing::{get, post, put},
};

use crate::{config::Config, db::Store, mirror::Mirror, puppet::Puppets};

pub use self::ratelimit::RateLimiter;

/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("../../docs/agent-api.openapi.json");

#[derive(Clone)]
pub struct ApiState {
    pub config: Arc<Config>,
    pub store: Store,
    pub mirror: Arc<Mirror>,
    pub puppets: Arc<Puppets>,
    pub limiter: Arc<RateLimiter>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(handlers::openapi))
        .route("/api/v1/agent", get(handlers::whoami))
        .route("/api/v1/channels", get(handlers::channels))
        .route("/api/v1/sessions", get(handlers::sessions))
        .route(
            "/api/v1/channels/{channel_id}/messages",
            get(handlers::messages).post(handlers::send),
        )
        .route(
            "/api/v1/channels/{channel_id}/messages/{event_id}",
            put(handlers::edit).delete(handlers::redact),
        )
        .route(
            "/api/v1/channels/{channel_id}/messages/{event_id}/reactions",
            post(handlers::react),
        )
        .route(
            "/api/v1/channels/{channel_id}/typing",
            put(handlers::typing),
        )
        .route(
            "/api/v1/channels/{channel_id}/read-marker",
            post(handlers::read_marker),
        )
        .route("/api/v1/outbox/{outbox_id}", get(handlers::outbox))
        .route("/api/v1/runs", get(handlers::runs))
        .route("/api/v1/runs/{run_id}", get(handlers::run))
        .route(
            "/api/v1/channels/{channel_id}/settings",
            put(handlers::settings),
        )
        .layer(axum::middleware::map_response(
            crate::appservice::error::matrix_error_bodies,
        ))
        .with_state(state)
}
