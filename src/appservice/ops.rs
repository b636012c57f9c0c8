//! Operator endpoints: liveness, readiness (database, migrations, background tasks) and
//! metrics.

use std::sync::Arc;

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::AppState;
use crate::db::lease::Role;

/// `GET /health/live`: the process answers.
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /health/ready`: this replica leads (a standby answers 503, so a load balancer sends
/// the homeserver to the leader), the database answers, every migration is applied, and every
/// background task runs; 503 otherwise, with what is wrong.
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.store.fence().role() == Role::Lost {
        // Stepping down: its connections are refused until its leader work has stopped, so
        // the database is not asked (a load balancer's check would wait on the pool).
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "role": "stepping_down" })),
        )
            .into_response();
    }
    let tasks = state.health.failing();
    // Events wait durably in the outbox while NATS is away: reported, but not a reason to take
    // the bridge out of rotation.
    let backlog = state.events.backlog();
    let (status, database, migrations) = match state.store.ready().await {
        Ok(true) => (StatusCode::OK, "ok", "applied"),
        Ok(false) => (StatusCode::SERVICE_UNAVAILABLE, "ok", "pending"),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "unreachable", "unknown")
        }
    };
    let (role, epoch) = match state.store.fence().role() {
        Role::Off => ("single", None),
        Role::Leader(epoch) if state.store.fence().leads() => ("leader", Some(epoch)),
        Role::Leader(epoch) => ("taking_over", Some(epoch)),
        Role::Standby => ("standby", None),
        Role::Lost => ("stepping_down", None),
    };
    let status = if tasks.is_empty() && state.store.fence().leads() {
        status
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = if status == StatusCode::OK {
        "ok"
    } else {
        "unavailable"
    };
    (
        status,
        Json(json!({
            "status": word,
            "role": role,
            "epoch": epoch,
            "database": database,
            "migrations": migrations,
            "tasks_restarting": tasks,
            "events": {
                "publisher": state.events.state(),
                "pending": backlog.pending,
                "oldest_pending_seconds": backlog.oldest_age_seconds,
                "dead": state.events.dead(),
            },
            // Whether room keys can reach the agents (a homeserver without MSC4203 delivery
            // keeps the bridge ready: plaintext rooms work).
            "encryption": state.crypto.as_ref().map(|c| c.delivery().name()).unwrap_or("off"),
        })),
    )
        .into_response()
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
