//! Handlers of the routes the homeserver calls. A transaction is answered `200 {}` only after
//! its effects are committed; only a database that is down gives 5xx (the homeserver retries
//! the transaction), and no content of a transaction can make it fail forever.

use std::{borrow::Cow, sync::Arc, time::Instant};

use axum::{
    body::Bytes,
    extract::{
        OriginalUri, Path, State,
        rejection::{BytesRejection, PathRejection},
    },
    http::{Method, header},
    response::{IntoResponse, Response},
};
use ruma::{
    UserId,
    api::{
        IncomingRequestExt, OutgoingResponse, OutgoingResponseExt,
        appservice::{event::push_events, ping::send_ping, query::query_user_id},
    },
};
use serde_json::value::RawValue;
use tracing::Instrument;

use super::AppState;
use crate::{
    bridge::mirror::Applied,
    db::StoreError,
    server::{body::body_error, error::MatrixError},
};

/// A path parameter that is not valid UTF-8 (say) is a Matrix error, not axum's plain text.
fn path_param(p: Result<Path<String>, PathRejection>) -> Result<String, MatrixError> {
    p.map(|Path(v)| v)
        .map_err(|e| MatrixError::invalid_param(format!("bad path parameter: {}", e.body_text())))
}

/// Reads the body, mapping the size limit to `M_TOO_LARGE`.
fn body(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, MatrixError> {
    body.map_err(|rejection| body_error(rejection, state.max_body_bytes))
}

/// A ruma response as an axum response.
fn respond<R: OutgoingResponse>(response: R) -> Result<Response, MatrixError> {
    let http = response
        .try_into_http_response::<Vec<u8>>()
        .map_err(|e| MatrixError::internal(e.to_string()))?;
    Ok(http.map(axum::body::Body::from).into_response())
}

/// The txnId as sent: the last path segment, still percent-encoded when it does not decode
/// (a txnId is opaque; only its hash is stored, so any bytes are acceptable).
fn txn_id(decoded: Result<Path<String>, PathRejection>, uri: &axum::http::Uri) -> String {
    match decoded {
        Ok(Path(id)) => id,
        Err(_) => uri.path().rsplit('/').next().unwrap_or_default().to_owned(),
    }
}

/// The to-device events of a transaction under MSC4203's stable field name, `to_device`
/// (none when it is absent or not a list of objects).
fn stable_to_device(
    text: &str,
) -> Vec<ruma::serde::Raw<push_events::v1::AnyAppserviceToDeviceEvent>> {
    #[derive(serde::Deserialize)]
    struct Stable {
        #[serde(default)]
        to_device: Vec<ruma::serde::Raw<push_events::v1::AnyAppserviceToDeviceEvent>>,
    }
    serde_json::from_str::<Stable>(text)
        .map(|s| s.to_device)
        .unwrap_or_default()
}

/// A transaction body as ruma reads it.
fn parse_transaction(text: &str) -> Result<push_events::v1::Request, String> {
    let http_request = axum::http::Request::builder()
        .method(Method::PUT)
        .uri("/_matrix/app/v1/transactions/txn")
        .header(header::CONTENT_TYPE, "application/json")
        .body(text.as_bytes())
        .map_err(|e| e.to_string())?;
    push_events::v1::Request::try_from_http_request(http_request, &["txn"])
        .map_err(|e| e.to_string())
}

/// `PUT /_matrix/app/v1/transactions/{txnId}`.
///
/// Invalid UTF-8 inside an event is decoded lossily (each bad sequence becomes U+FFFD) rather
/// than refusing the whole transaction, which the homeserver would resend forever: JSON must
/// be UTF-8, so only a broken sender produces it, and its other events still deserve mirroring.
pub async fn transaction(
    State(state): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    txn: Result<Path<String>, PathRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, MatrixError> {
    let started = Instant::now();
    let txn_id = txn_id(txn, &uri);
    if !state.store.fence().leads() {
        // A standby (or a leader that just lost its lease) stores nothing: the homeserver
        // retries the same txnId, and the load balancer sends it to the leader (docs/deployment.md).
        state.metrics.transaction("standby");
        return Err(MatrixError::unavailable(
            "this bridge replica is a standby; the leader takes transactions (retry)",
        ));
    }
    let bytes = body(&state, raw)?;
    // Valid UTF-8 (every real homeserver) is checked at SIMD speed; lossy decoding only otherwise.
    let text: Cow<'_, str> = match std::str::from_utf8(&bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(&bytes),
    };
    if matches!(text, Cow::Owned(_)) {
        tracing::warn!("transaction body is not valid UTF-8; decoding it lossily");
        state.metrics.transaction("invalid_utf8");
    }
    let mut request = match parse_transaction(&text) {
        Ok(request) => request,
        Err(error) => {
            // A malformed envelope part (ephemeral, to-device, device lists, key counts) is
            // dropped and counted; the events are still mirrored.
            let salvaged = super::envelope::salvage(&text);
            match salvaged.as_ref().map(|s| (s, parse_transaction(&s.body))) {
                Some((salvaged, Ok(request))) => {
                    for (kind, n) in &salvaged.dropped {
                        state.metrics.events_n(kind, "malformed", *n);
                    }
                    tracing::warn!(dropped = ?salvaged.dropped, "malformed parts of a transaction's envelope dropped");
                    request
                }
                _ => {
                    state.metrics.transaction("rejected");
                    return Err(
                        if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_err() {
                            MatrixError::not_json("request body is not JSON")
                        } else {
                            MatrixError::bad_json(format!("not a transaction: {error}"))
                        },
                    );
                }
            }
        }
    };
    if request.to_device.is_empty() && state.crypto.is_some() && text.contains("\"to_device\"") {
        // The stable name of MSC4203's field (ruma reads the unstable one).
        request.to_device = stable_to_device(&text);
    }
    let span = tracing::info_span!("transaction", txn_id = %txn_id.escape_debug(), events = request.events.len());
    // Encryption first: to-device room keys, then decryption of the encrypted events.
    let prepared = match &state.crypto {
        Some(crypto) => match crypto
            .prepare(&request, &state.metrics)
            .instrument(span.clone())
            .await
        {
            Ok(prepared) => prepared,
            Err(error) if error.is_transient() => {
                state.metrics.transaction("error");
                span.in_scope(|| tracing::error!(%error, "crypto state not stored; the homeserver will retry"));
                return Err(MatrixError::unavailable(
                    "the bridge could not store this transaction's keys; retry later",
                ));
            }
            Err(error) => {
                // Not the database: never fail the transaction for it; mirror it as received.
                span.in_scope(
                    || tracing::warn!(%error, "cannot process this transaction's encryption"),
                );
                None
            }
        },
        None => None,
    };
    let events: Vec<&RawValue> = match &prepared {
        Some(prepared) => prepared.events.iter().map(AsRef::as_ref).collect(),
        None => request.events.iter().map(|r| r.json()).collect(),
    };
    let result = state
        .mirror
        .apply_transaction(&txn_id, &events)
        .instrument(span.clone())
        .await;
    if let (Ok(Applied::Committed), Some(prepared)) = (&result, &prepared) {
        // The late events are committed with this transaction: they wait no more.
        for event_id in &prepared.late {
            if let Err(error) = state.store.crypto().pending_remove(event_id).await {
                tracing::warn!(%error, "cannot forget a decrypted pending event; a replay of it changes nothing");
            }
        }
    }
    state
        .metrics
        .transaction_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(applied) => {
            let outcome = match applied {
                Applied::Committed => "committed",
                Applied::Replay => "replay",
            };
            state.metrics.transaction(outcome);
            // Ephemeral events are counted once their transaction is (replays count nothing).
            if applied == Applied::Committed {
                for _ in &request.ephemeral {
                    state.metrics.event("ephemeral", "ignored_type");
                }
            }
            span.in_scope(|| {
                tracing::debug!(
                    outcome,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "transaction done"
                )
            });
            respond(push_events::v1::Response::new())
        }
        Err(error) => {
            state.metrics.transaction("error");
            state.metrics.db_errors.inc();
            span.in_scope(
                || tracing::error!(%error, "transaction not applied; the homeserver will retry"),
            );
            Err(match error {
                StoreError::Unavailable(_) | StoreError::Fenced => MatrixError::unavailable(
                    "the bridge could not store this transaction; retry later",
                ),
                other => MatrixError::internal(format!(
                    "the bridge could not store this transaction: {other}"
                )),
            })
        }
    }
}

/// `GET /_matrix/app/v1/users/{userId}`: exists only for known agents, registered on demand.
pub async fn query_user(
    State(state): State<Arc<AppState>>,
    user_id: Result<Path<String>, PathRejection>,
) -> Result<Response, MatrixError> {
    let user_id = path_param(user_id)?;
    let Ok(user_id) = UserId::parse(&user_id) else {
        return Err(MatrixError::not_found("not a valid user id"));
    };
    if !state.registry.namespace().is_puppet(&user_id) {
        return Err(MatrixError::not_found("not in this bridge's namespace"));
    }
    let agent = match state.registry.get(&user_id) {
        Some(agent) => agent,
        None => {
            // Agents may have been added by another service since the last reload.
            state.registry.reload().await?;
            state
                .registry
                .get(&user_id)
                .ok_or_else(|| MatrixError::not_found("no such agent"))?
        }
    };
    state
        .puppets
        .intent(agent)
        .ensure_registered()
        .await
        .map_err(|error| {
            tracing::warn!(user_id = %user_id, %error, "cannot register agent puppet");
            MatrixError::unavailable("cannot register the agent on the homeserver")
        })?;
    respond(query_user_id::v1::Response::new())
}

/// `GET /_matrix/app/v1/rooms/{roomAlias}`: the bridge creates no rooms on alias queries.
pub async fn query_room(_alias: Result<Path<String>, PathRejection>) -> MatrixError {
    MatrixError::not_found("this bridge does not provide rooms by alias")
}

/// `POST /_matrix/app/v1/ping`.
pub async fn ping(
    State(state): State<Arc<AppState>>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, MatrixError> {
    let bytes = body(&state, raw)?;
    let bytes = if bytes.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        bytes
    };
    let http_request = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/_matrix/app/v1/ping")
        .header(header::CONTENT_TYPE, "application/json")
        .body(bytes.as_ref())
        .map_err(|e| MatrixError::internal(e.to_string()))?;
    let request = send_ping::v1::Request::try_from_http_request(http_request, &[] as &[&str])
        .map_err(|_| {
            if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
                MatrixError::not_json("request body is not JSON")
            } else {
                MatrixError::bad_json("body must be an object")
            }
        })?;
    tracing::info!(transaction_id = ?request.transaction_id, "pinged by the homeserver");
    respond(send_ping::v1::Response::new())
}

/// Third-party lookups: no protocol is bridged.
pub async fn no_protocols() -> MatrixError {
    MatrixError::not_found("no third-party protocols are provided by this bridge")
}
