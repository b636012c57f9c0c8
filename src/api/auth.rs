//! Access-key authentication and capability checks of the agent API.

use axum::{extract::FromRequestParts, http::request::Parts};

use super::ApiState;
use crate::{
    appservice::error::ApiError,
    db::{agents::AuthKey, types::Ts},
    keys,
};

/// `last_used_at` is written at most this often per key (not on every request).
const TOUCH_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// The authenticated caller: an access key and the agent it acts as.
pub struct Caller(pub AuthKey);

impl Caller {
    /// Fails with 403 unless the key holds `capability`.
    pub fn require(&self, capability: &str) -> Result<(), ApiError> {
        if self.0.capabilities.iter().any(|c| c == capability) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this access key lacks the `{capability}` capability"
            )))
        }
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(ApiError::missing_token)?
            .to_str()
            .map_err(|_| ApiError::unknown_token("malformed Authorization header"))?;
        let key = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| ApiError::unknown_token("Authorization must use the Bearer scheme"))?
            .trim();
        let found = state.store.key_by_hash(&keys::hash(key)).await?;
        let key = found.ok_or_else(|| ApiError::unknown_token("unknown access key"))?;
        let now = Ts::now();
        if key.revoked_at.is_some() {
            return Err(ApiError::unknown_token("this access key was revoked"));
        }
        if key.expires_at.is_some_and(|e| e <= now) {
            return Err(ApiError::unknown_token("this access key has expired"));
        }
        state
            .limiter
            .check(key.agent_id)
            .map_err(ApiError::limit_exceeded)?;
        if key.last_used_at.is_none_or(|t| now.0 - t.0 > TOUCH_EVERY) {
            state.store.touch_key(key.key_id, now).await?;
        }
        Ok(Caller(key))
    }
}
