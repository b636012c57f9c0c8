//! The Application Service API the homeserver calls (spec v1.19: transactions, user and room
//! queries, ping, third-party lookups, legacy unprefixed routes) plus the operator endpoints
//! (health, metrics), as one axum router.

mod auth;
mod envelope;
mod handlers;
mod ops;

use std::sync::Arc;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::{Request, StatusCode},
    middleware,
    routing::{get, post, put},
};
use tower_http::trace::TraceLayer;

use crate::{
    bridge::{agents::AgentRegistry, mirror::Mirror},
    metrics::Metrics,
    server::{
        body::refuse_oversized,
        error::{MatrixError, matrix_error_bodies},
    },
    supervise::Health,
};

/// Shared state of the homeserver-facing handlers.
#[derive(Clone)]
pub struct AppState {
    /// Applies transactions.
    pub mirror: Arc<Mirror>,
    /// The store (readiness; settled pending events).
    pub store: crate::db::Store,
    /// The agents (user queries).
    pub registry: Arc<AgentRegistry>,
    /// The agents' puppets: registered on the homeserver's user queries.
    pub puppets: Arc<crate::puppet::Puppets>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The token the homeserver must present.
    pub hs_token: Arc<str>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Whether the background tasks run (readiness).
    pub health: Arc<Health>,
    /// The events publisher (readiness detail).
    pub events: Arc<crate::events::publisher::PublisherStatus>,
    /// The agents' crypto engines (`None`: encryption off).
    pub crypto: Option<Arc<crate::crypto::Crypto>>,
}

/// The bridge's HTTP surface for the homeserver and operators.
pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    // Shared, not cloned: axum hands every extractor its own copy of the state, twice per
    // request (the token check and the handler), and a cloned `Homeserver` allocates.
    let state = Arc::new(state);
    let appservice = Router::new()
        .route(
            "/_matrix/app/v1/transactions/{txn_id}",
            put(handlers::transaction),
        )
        .route("/_matrix/app/v1/users/{user_id}", get(handlers::query_user))
        .route(
            "/_matrix/app/v1/rooms/{room_alias}",
            get(handlers::query_room),
        )
        .route("/_matrix/app/v1/ping", post(handlers::ping))
        .route(
            "/_matrix/app/v1/thirdparty/protocol/{protocol}",
            get(handlers::no_protocols),
        )
        .route(
            "/_matrix/app/v1/thirdparty/user/{protocol}",
            get(handlers::no_protocols),
        )
        .route(
            "/_matrix/app/v1/thirdparty/location/{protocol}",
            get(handlers::no_protocols),
        )
        .route(
            "/_matrix/app/v1/thirdparty/user",
            get(handlers::no_protocols),
        )
        .route(
            "/_matrix/app/v1/thirdparty/location",
            get(handlers::no_protocols),
        )
        // Legacy routes of homeservers older than the /_matrix/app/v1 prefix.
        .route("/transactions/{txn_id}", put(handlers::transaction))
        .route("/users/{user_id}", get(handlers::query_user))
        .route("/rooms/{room_alias}", get(handlers::query_room))
        .route(
            "/_matrix/app/unstable/thirdparty/protocol/{protocol}",
            get(handlers::no_protocols),
        )
        .route(
            "/_matrix/app/unstable/thirdparty/user/{protocol}",
            get(handlers::no_protocols),
        )
        .route(
            "/_matrix/app/unstable/thirdparty/location/{protocol}",
            get(handlers::no_protocols),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_hs_token,
        ));
    // Health and metrics are polled (a load balancer checks readiness twice a second, and a
    // standby's answer is 503 by design): they stay out of the request log, whose failures
    // are logged as errors.
    let operator = Router::new()
        .route("/health/live", get(ops::live))
        .route("/health/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .layer(middleware::map_response(matrix_error_bodies));
    appservice
        .fallback(|| async { MatrixError::unrecognized(StatusCode::NOT_FOUND, "unrecognized request") })
        .method_not_allowed_fallback(|| async {
            MatrixError::unrecognized(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint")
        })
        .layer(DefaultBodyLimit::max(limit))
        // Before the token check reads nothing either: a declared length over the limit is
        // refused before any of the body is read.
        .layer(middleware::from_fn_with_state(limit, refuse_oversized))
        .layer(middleware::map_response(matrix_error_bodies))
        .layer(
            // Path only: query strings may carry the legacy access_token.
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path())
            }),
        )
        .merge(operator)
        .with_state(state)
}
