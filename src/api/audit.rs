//! Audits every agent API call that was denied (401 or 403), with the reason the caller got:
//! the error body's text travels to here as a response extension ([`DeniedReason`]), so the record is
//! written where the response leaves, whatever handler or extractor refused.

use axum::{
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::Response,
};

use super::ApiState;
use crate::{
    db::audit::NewAudit,
    keys,
    model::{ActorType, AuditOutcome},
    server::error::DeniedReason,
};

/// The key prefix of a bearer token that looks like an access key (never the key itself).
fn key_prefix(request: &Request) -> Option<String> {
    let value = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let key = value.strip_prefix("Bearer ")?.trim();
    (key.starts_with(keys::PREFIX) && key.len() >= 12 && key.is_ascii())
        .then(|| key[..12].to_owned())
}

/// The middleware.
pub async fn audit_denied(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let prefix = key_prefix(&request);
    let method = request.method().as_str().to_owned();
    // The path only (never the query), cut short: it is attacker-controlled.
    let path: String = request.uri().path().chars().take(200).collect();
    let response = next.run(request).await;
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        let reason = response
            .extensions()
            .get::<DeniedReason>()
            .map(|d| d.0.clone())
            .unwrap_or_default();
        let entry = NewAudit::new(
            ActorType::Key,
            prefix.as_deref(),
            "api.denied",
            Some(&path),
            AuditOutcome::Denied,
        )
        .details(serde_json::json!({
            "status": status.as_u16(), "reason": reason, "method": method,
        }));
        // Written before the response leaves: a denial is never lost. Failed authentications are
        // limited per address before this point, so this cannot be used to flood the log.
        if let Err(error) = state.store.audit().record(&[entry]).await {
            tracing::warn!(%error, "could not audit a denied API call");
        }
    }
    response
}
