//! Handlers of the appservice and operator routes.

use std::time::Instant;

use axum::{
    Json,
    body::Bytes,
    extract::{
        Path, State,
        rejection::{BytesRejection, PathRejection},
    },
    http::{Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use ruma::{
    UserId,
    api::{IncomingRequestExt, appservice::event::push_events},
};
use serde_json::json;
use tracing::Instrument;

use super::{AppState, error::ApiError};
use crate::mirror::Applied;

/// A path parameter that is not valid UTF-8 (say) is a Matrix error, not axum's plain text.
fn path_param(p: Result<Path<String>, PathRejection>) -> Result<Path<String>, ApiError> {
    p.map_err(|e| ApiError::invalid_param(format!("bad path parameter: {}", e.body_text())))
}

/// Reads the body, mapping the size limit to `M_TOO_LARGE`.
fn body(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(state.config.appservice.max_body_bytes)
        } else {
            ApiError::bad_json(rejection.body_text())
        }
    })
}

/// `PUT /_matrix/app/v1/transactions/{txnId}`: answered only after its effects are committed.
pub async fn transaction(
    State(state): State<AppState>,
    txn_id: Result<Path<String>, PathRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let started = Instant::now();
    let Path(txn_id) = path_param(txn_id)?;
    let bytes = body(&state, raw)?;
    let http_request = axum::http::Request::builder()
        .method(Method::PUT)
        .uri("/_matrix/app/v1/transactions/txn")
        .header(header::CONTENT_TYPE, "application/json")
        .body(bytes.as_ref())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let request = push_events::v1::Request::try_from_http_request(http_request, &[txn_id.as_str()])
        .map_err(|error| {
            state.metrics.transaction("rejected");
            if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
                ApiError::not_json("request body is not JSON")
            } else {
                ApiError::bad_json(format!("not a transaction: {error}"))
            }
        })?;
    for _ in &request.ephemeral {
        state.metrics.event("ephemeral", "ignored_type");
    }
    let span = tracing::info_span!("transaction", txn_id = %txn_id, events = request.events.len());
    let result = state
        .mirror
        .apply_transaction(&txn_id, &request.events)
        .instrument(span.clone())
        .await;
    state
        .metrics
        .transaction_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(Applied::Committed) => {
            state.metrics.transaction("committed");
            span.in_scope(|| {
                tracing::debug!(
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "transaction committed"
                )
            });
            Ok(Json(json!({})))
        }
        Ok(Applied::Replay) => {
            state.metrics.transaction("replay");
            span.in_scope(|| tracing::info!("transaction already applied; replay acknowledged"));
            Ok(Json(json!({})))
        }
        Err(error) => {
            state.metrics.transaction("error");
            state.metrics.db_errors.inc();
            span.in_scope(
                || tracing::error!(%error, "transaction not applied; the homeserver will retry"),
            );
            Err(ApiError::unavailable(
                "the bridge could not store this transaction; retry later",
            ))
        }
    }
}

/// `GET /_matrix/app/v1/users/{userId}`: exists only for known agents, registered on demand.
pub async fn query_user(
    State(state): State<AppState>,
    user_id: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(user_id) = path_param(user_id)?;
    let Ok(user_id) = UserId::parse(&user_id) else {
        return Err(ApiError::not_found("not a valid user id"));
    };
    if !state.config.is_puppet(&user_id) {
        return Err(ApiError::not_found("not in this bridge's namespace"));
    }
    if state.mirror.agent(user_id.as_str()).is_none() {
        // Agents may have been added by another service since start-up.
        if let Err(error) = state.mirror.reload_agents().await {
            tracing::error!(%error, "cannot reload agents");
            return Err(ApiError::unavailable("database unavailable"));
        }
        if state.mirror.agent(user_id.as_str()).is_none() {
            return Err(ApiError::not_found("no such agent"));
        }
    }
    state
        .hs
        .ensure_registered(user_id.localpart())
        .await
        .map_err(|error| {
            tracing::warn!(user_id = %user_id, %error, "cannot register agent puppet");
            ApiError::unavailable("cannot register the agent on the homeserver")
        })?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/app/v1/rooms/{roomAlias}`: the bridge creates no rooms on alias queries.
pub async fn query_room(_alias: Result<Path<String>, PathRejection>) -> ApiError {
    ApiError::not_found("this bridge does not provide rooms by alias")
}

/// `POST /_matrix/app/v1/ping`.
pub async fn ping(raw: Result<Bytes, BytesRejection>) -> Result<Json<serde_json::Value>, ApiError> {
    let bytes = raw.map_err(|r| ApiError::bad_json(r.body_text()))?;
    if !bytes.is_empty() {
        let body: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|_| ApiError::not_json("request body is not JSON"))?;
        if !body.is_object() {
            return Err(ApiError::bad_json("body must be an object"));
        }
        tracing::info!(
            transaction_id = body.get("transaction_id").and_then(|t| t.as_str()),
            "pinged by the homeserver"
        );
    }
    Ok(Json(json!({})))
}

/// Third-party lookups: no protocol is bridged.
pub async fn no_protocols() -> ApiError {
    ApiError::not_found("no third-party protocols are provided by this bridge")
}

pub async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn ready(State(state): State<AppState>) -> Response {
    match state.mirror.store().ready().await {
        Ok(true) => Json(json!({ "status": "ok", "database": "ok", "migrations": "applied" }))
            .into_response(),
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "database": "ok", "migrations": "pending" })),
        )
            .into_response(),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "database": "unreachable" })),
            )
                .into_response()
        }
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
