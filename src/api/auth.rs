//! Access-key authentication and capability checks of the agent API. Failed attempts are
//! limited per client address before any database lookup, so guessing keys costs the bridge
//! nothing but a token bucket.

use std::{net::IpAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::request::Parts,
};

use super::ApiState;
use crate::{
    db::{audit::NewAudit, keys::AuthKey},
    keys,
    model::{ActorType, Agent, AuditOutcome, Ts},
    server::error::MatrixError,
};

/// `last_used_at` is written at most this often per key (not on every request).
const TOUCH_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// The authenticated caller: an access key and the agent it acts as.
pub struct Caller {
    /// The key.
    pub key: AuthKey,
    /// Its agent.
    pub agent: Arc<Agent>,
}

impl Caller {
    /// The caller as an audit actor: the agent, by its external id.
    pub fn actor(&self) -> crate::db::audit::Actor {
        crate::db::audit::Actor {
            kind: ActorType::Agent,
            id: Some(self.agent.external_id.clone()),
        }
    }

    /// Fails with 403 unless the key holds `capability`.
    pub fn require(&self, capability: &str) -> Result<(), MatrixError> {
        if self.key.capabilities.iter().any(|c| c == capability) {
            Ok(())
        } else {
            Err(MatrixError::forbidden(format!(
                "this access key lacks the `{capability}` capability"
            )))
        }
    }
}

/// A Bearer key presented to the API, before it is looked up: shared by agent and admin keys,
/// so both are limited per client address the same way.
pub(super) struct Presented<'a> {
    state: &'a ApiState,
    ip: Option<IpAddr>,
    /// SHA-256 (hex) of the key, as keys are stored.
    pub hash: String,
}

impl<'a> Presented<'a> {
    /// Reads `Authorization: Bearer …`; fails with 429 when this address failed too often, and
    /// with 401 (counted against the address) when the header is missing or malformed.
    pub fn read(parts: &Parts, state: &'a ApiState) -> Result<Self, MatrixError> {
        let ip: Option<IpAddr> = parts
            .extensions
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        if let Some(ip) = ip
            && let Err(wait) = state.auth_failures.peek(&ip)
        {
            state
                .metrics
                .auth_failures
                .get_or_create(&crate::metrics::OutcomeLabel { outcome: "limited" })
                .inc();
            return Err(MatrixError::limit_exceeded(wait));
        }
        let mut presented = Presented {
            state,
            ip,
            hash: String::new(),
        };
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| presented.fail(MatrixError::missing_token()))?
            .to_str()
            .map_err(|_| {
                presented.fail(MatrixError::unknown_token("malformed Authorization header"))
            })?;
        let key = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| {
                presented.fail(MatrixError::unknown_token(
                    "Authorization must use the Bearer scheme",
                ))
            })?
            .trim();
        presented.hash = keys::hash(key);
        Ok(presented)
    }

    /// Counts a failed authentication against the client's address and returns `error`.
    pub fn fail(&self, error: MatrixError) -> MatrixError {
        if let Some(ip) = self.ip {
            let _ = self.state.auth_failures.check(&ip);
        }
        self.state
            .metrics
            .auth_failures
            .get_or_create(&crate::metrics::OutcomeLabel { outcome: "denied" })
            .inc();
        error
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = MatrixError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let presented = Presented::read(parts, state)?;
        let fail = |error| presented.fail(error);
        let found = state.store.keys().by_hash(&presented.hash).await?;
        let key = found.ok_or_else(|| fail(MatrixError::unknown_token("unknown access key")))?;
        let now = Ts::now();
        let used = if key.revoked_at.is_some() {
            Some(("access_key.revoked_use", "this access key was revoked"))
        } else if key.expires_at.is_some_and(|e| e <= now) {
            Some(("access_key.expired_use", "this access key has expired"))
        } else {
            None
        };
        if let Some((action, reason)) = used {
            // A real key used after its end: worth more than the generic denial (which the
            // audit layer also records), since whoever holds it may not know it ended.
            let entry = NewAudit::new(
                ActorType::Key,
                Some(&key.key_id.to_string()),
                action,
                Some(&key.agent_external_id),
                AuditOutcome::Denied,
            )
            .details(
                serde_json::json!({ "expires_at": key.expires_at, "revoked_at": key.revoked_at }),
            );
            state.store.audit().record(&[entry]).await?;
            return Err(fail(MatrixError::unknown_token(reason)));
        }
        state
            .limiter
            .check(&key.agent_id)
            .map_err(MatrixError::limit_exceeded)?;
        if key.last_used_at.is_none_or(|t| now.0 - t.0 > TOUCH_EVERY) {
            state.store.keys().touch(key.key_id, now).await?;
        }
        let agent = match state.registry.by_id(key.agent_id) {
            Some(agent) => agent,
            None => {
                // Agents added since the last reload.
                state.registry.reload().await?;
                state.registry.by_id(key.agent_id).ok_or_else(|| {
                    MatrixError::forbidden("this key's agent has no Matrix identity")
                })?
            }
        };
        if !agent.active {
            return Err(MatrixError::forbidden("this key's agent is disabled"));
        }
        Ok(Caller { key, agent })
    }
}
