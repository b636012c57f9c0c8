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
    model::{ActorType, Agent, AuditOutcome, KeyStatus, KeySubject, Ts, ids::UserRowId},
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

/// An access key presented and checked: it exists and is neither revoked nor expired (an
/// expired key is marked so). Every kind of key; rate limits are the callers' (per subject).
async fn authenticate(parts: &Parts, state: &ApiState) -> Result<AuthKey, MatrixError> {
    let presented = Presented::read(parts, state)?;
    let found = state.store.keys().by_hash(&presented.hash).await?;
    let Some(key) = found else {
        return Err(presented.fail(MatrixError::unknown_token("unknown access key")));
    };
    admit(&presented, key, state).await
}

/// Checks a key already found by its hash: refused (audited, counted against the address) when
/// revoked or expired; its use recorded otherwise.
pub(super) async fn admit(
    presented: &Presented<'_>,
    key: AuthKey,
    state: &ApiState,
) -> Result<AuthKey, MatrixError> {
    let now = Ts::now();
    let used = if key.revoked_at.is_some() {
        Some(("access_key.revoked_use", "this access key was revoked"))
    } else if key.expires_at.is_some_and(|e| e <= now) {
        if key.status == KeyStatus::Active {
            state.store.keys().mark_expired(key.key_id).await?;
        }
        Some(("access_key.expired_use", "this access key has expired"))
    } else {
        None
    };
    if let Some((action, reason)) = used {
        // A real key used after its end: worth more than the generic denial (which the audit
        // layer also records), since whoever holds it may not know it ended.
        let target = key
            .agent_external_id
            .clone()
            .unwrap_or_else(|| key.name.clone());
        let entry = NewAudit::new(
            ActorType::Key,
            Some(&key.key_id.to_string()),
            action,
            Some(&target),
            AuditOutcome::Denied,
        )
        .details(serde_json::json!({
            "subject_kind": key.subject_kind, "expires_at": key.expires_at, "revoked_at": key.revoked_at,
        }));
        state.store.audit().record(&[entry]).await?;
        return Err(presented.fail(MatrixError::unknown_token(reason)));
    }
    if key.last_used_at.is_none_or(|t| now.0 - t.0 > TOUCH_EVERY) {
        state.store.keys().touch(key.key_id, now).await?;
    }
    Ok(key)
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = MatrixError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let key = authenticate(parts, state).await?;
        Caller::of(key, state).await
    }
}

impl Caller {
    /// The caller of an authenticated key, which must be an agent's (active, within its rate
    /// limit).
    async fn of(key: AuthKey, state: &ApiState) -> Result<Self, MatrixError> {
        let Some(agent_id) = key.agent_id else {
            return Err(MatrixError::forbidden(format!(
                "this is a {} key: the agent API acts as an agent (a user key may read its channels: \
                 GET /api/v1/channels and …/messages)",
                key.subject_kind.as_str()
            )));
        };
        state
            .limiter
            .check(&agent_id.0)
            .map_err(MatrixError::limit_exceeded)?;
        let agent = match state.registry.by_id(agent_id) {
            Some(agent) => agent,
            None => {
                // Agents added since the last reload.
                state.registry.reload().await?;
                state.registry.by_id(agent_id).ok_or_else(|| {
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

/// Who reads channels: an agent (its channels) or a person through a user key (the channels
/// they are in).
pub enum Reader {
    /// An agent key.
    Agent(Caller),
    /// A user key and its person.
    User {
        /// The key.
        key: AuthKey,
        /// The person.
        user: UserRowId,
    },
}

impl Reader {
    /// Fails with 403 unless the key holds `capability`.
    pub fn require(&self, capability: &str) -> Result<(), MatrixError> {
        let key = match self {
            Reader::Agent(c) => &c.key,
            Reader::User { key, .. } => key,
        };
        if key.capabilities.iter().any(|c| c == capability) {
            Ok(())
        } else {
            Err(MatrixError::forbidden(format!(
                "this access key lacks the `{capability}` capability"
            )))
        }
    }
}

impl FromRequestParts<ApiState> for Reader {
    type Rejection = MatrixError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let key = authenticate(parts, state).await?;
        match (key.subject_kind, key.user_id) {
            (KeySubject::User, Some(user)) => {
                // A person's keys share one budget, as an agent's keys do (ids are UUIDs: an
                // agent's and a person's never meet).
                state
                    .limiter
                    .check(&user.0)
                    .map_err(MatrixError::limit_exceeded)?;
                Ok(Reader::User { key, user })
            }
            (KeySubject::Agent, _) => Ok(Reader::Agent(Caller::of(key, state).await?)),
            (kind, _) => Err(MatrixError::forbidden(format!(
                "this is a {} key: it reads no channels",
                kind.as_str()
            ))),
        }
    }
}
