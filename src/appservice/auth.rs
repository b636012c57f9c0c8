//! Homeserver authentication of appservice routes: `Authorization: Bearer <hs_token>` or the
//! legacy `access_token` query parameter (both must agree when both are sent), compared in
//! constant time. Tokens are never logged.

use std::sync::Arc;

use axum::{
    extract::{Query, Request, State},
    http::header::AUTHORIZATION,
    middleware::Next,
    response::Response,
};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::AppState;
use crate::server::{error::MatrixError as ApiError, lanes::ConnectionTag};

/// Lets the request through only with the homeserver's token.
pub async fn require_hs_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = match request.headers().get(AUTHORIZATION) {
        None => None,
        Some(value) => {
            let value = value
                .to_str()
                .map_err(|_| ApiError::forbidden("malformed Authorization header"))?;
            let token = value
                .strip_prefix("Bearer ")
                .ok_or_else(|| ApiError::forbidden("Authorization must use the Bearer scheme"))?;
            Some(token.trim().to_owned())
        }
    };
    let query = Query::<TokenQuery>::try_from_uri(request.uri())
        .map_err(|_| ApiError::forbidden("malformed query string"))?
        .0
        .access_token;
    let token = match (header, query) {
        (None, None) => return Err(ApiError::unauthorized()),
        (Some(h), Some(q)) if !ct_eq(&h, &q) => {
            return Err(ApiError::forbidden(
                "Authorization header and access_token disagree",
            ));
        }
        (Some(t), _) | (None, Some(t)) => t,
    };
    if !ct_eq(&token, &state.hs_token) {
        return Err(ApiError::forbidden("invalid homeserver token"));
    }
    // The homeserver's connection: never evicted to make room for others.
    if let Some(tag) = request.extensions().get::<ConnectionTag>() {
        tag.mark_homeserver();
    }
    Ok(next.run(request).await)
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[derive(Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}
