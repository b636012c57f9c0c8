//! The admin (provisioning) API under `/api/v1/admin`: what operators and the microDAO console
//! use to create microDAOs, blueprints and agents (PUT by external id, idempotent), put agents
//! into rooms, create and archive channels (the bot creates the Matrix room), set how they
//! answer, list channels, members, sessions and runs (keyset pages), manage access keys, read the
//! audit log, export channels, see the bridge's status, and list and retry dead-lettered events
//! and failed work.
//! Authenticated by admin keys (`daarion-bridge access-key create --admin`, capability
//! `bridge.admin`), which are separate from agent keys: an agent key gets 403 here.

mod catalog;
mod channels;
mod dead;
mod failed;
mod keys;
mod ops;
mod tools;

use axum::{
    Router,
    extract::FromRequestParts,
    http::request::Parts,
    routing::{delete, get, post, put},
};
use serde::{Deserialize, Serialize};

use super::{ApiState, auth::Presented};
use crate::{
    db::audit::Actor,
    model::{ActorType, KeySubject, Ts},
    server::error::MatrixError,
};

/// The capability admin keys hold.
pub const ADMIN: &str = "bridge.admin";

/// Largest page.
const MAX_LIMIT: i64 = 500;

/// The admin API's routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/admin/status", get(ops::status))
        .route("/api/v1/admin/microdaos", get(catalog::list_microdaos))
        .route(
            "/api/v1/admin/microdaos/{external_id}",
            get(catalog::get_microdao)
                .put(catalog::put_microdao)
                .delete(catalog::delete_microdao),
        )
        .route("/api/v1/admin/blueprints", get(catalog::list_blueprints))
        .route(
            "/api/v1/admin/blueprints/{code}",
            get(catalog::get_blueprint)
                .put(catalog::put_blueprint)
                .delete(catalog::delete_blueprint),
        )
        .route("/api/v1/admin/agents", get(catalog::list_agents))
        .route(
            "/api/v1/admin/agents/{external_id}",
            get(catalog::get_agent)
                .put(catalog::put_agent)
                .delete(catalog::delete_agent),
        )
        .route(
            "/api/v1/admin/agents/{external_id}/rooms",
            post(ops::invite),
        )
        .route(
            "/api/v1/admin/agents/{external_id}/rooms/{room_id}",
            delete(ops::remove),
        )
        .route(
            "/api/v1/admin/agents/{external_id}/channels/{channel_id}/respond",
            put(ops::respond),
        )
        .route(
            "/api/v1/admin/agents/{external_id}/keys",
            post(ops::create_key),
        )
        .route("/api/v1/admin/keys", post(keys::create))
        .route("/api/v1/admin/keys/{key_id}", delete(ops::revoke_key))
        .route(
            "/api/v1/admin/channels",
            get(ops::channels).post(channels::create),
        )
        .route(
            "/api/v1/admin/channels/{channel_id}",
            delete(channels::archive),
        )
        .route(
            "/api/v1/admin/channels/{channel_id}/members",
            get(ops::members),
        )
        .route(
            "/api/v1/admin/channels/{channel_id}/export",
            get(ops::export),
        )
        .route("/api/v1/admin/sessions", get(ops::sessions))
        .route("/api/v1/admin/runs", get(ops::runs))
        .route("/api/v1/admin/audit", get(ops::audit))
        .route("/api/v1/admin/events/dead", get(dead::list))
        .route("/api/v1/admin/events/dead/{id}/retry", post(dead::retry))
        .route("/api/v1/admin/failed", get(failed::list))
        .route(
            "/api/v1/admin/failed/{kind}/{id}/retry",
            post(failed::retry),
        )
}

/// An authenticated admin.
pub struct Admin {
    /// The admin key's id (or the integration key's).
    pub key_id: String,
    /// An integration's access key holding `bridge.admin` (seed 001), not an admin key.
    pub integration: bool,
}

impl Admin {
    /// The admin as an audit actor.
    pub fn actor(&self) -> Actor {
        Actor {
            kind: ActorType::Admin,
            id: Some(if self.integration {
                format!("integration-key:{}", self.key_id)
            } else {
                format!("admin-key:{}", self.key_id)
            }),
        }
    }
}

impl FromRequestParts<ApiState> for Admin {
    type Rejection = MatrixError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        // Read and limited exactly as agent keys are: guessing admin keys costs what guessing
        // agent keys does, one token bucket per address.
        let presented = Presented::read(parts, state)?;
        let fail = |error| presented.fail(error);
        let hash = &presented.hash;
        let Some(found) = state.store.admin_keys().by_hash(hash).await? else {
            // Seed 001's keys: an integration key holding `bridge.admin` is an admin; any other
            // access key is a real key, just not an admin's: 403 rather than 401.
            if let Some(key) = state.store.keys().by_hash(hash).await? {
                let key = super::auth::admit(&presented, key, state).await?;
                if key.subject_kind == KeySubject::Integration
                    && key.capabilities.iter().any(|c| c == ADMIN)
                {
                    return Ok(Admin {
                        key_id: key.key_id.to_string(),
                        integration: true,
                    });
                }
                return Err(fail(MatrixError::forbidden(format!(
                    "this access key lacks the `{ADMIN}` capability (only admin keys and integration keys hold it)"
                ))));
            }
            return Err(fail(MatrixError::unknown_token("unknown access key")));
        };
        if found.revoked_at.is_some() {
            return Err(fail(MatrixError::unknown_token(
                "this admin key was revoked",
            )));
        }
        if found.expires_at.is_some_and(|e| e <= Ts::now()) {
            return Err(fail(MatrixError::unknown_token(
                "this admin key has expired",
            )));
        }
        Ok(Admin {
            key_id: found.id.to_string(),
            integration: false,
        })
    }
}

/// Keyset pagination parameters shared by the listings.
#[derive(Debug, Deserialize)]
pub struct Page {
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// Page size (1 to 500, default 100).
    pub limit: Option<i64>,
}

impl Page {
    /// The page size, validated.
    pub fn limit(&self) -> Result<i64, MatrixError> {
        match self.limit {
            None => Ok(100),
            Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            Some(_) => Err(MatrixError::invalid_param(format!(
                "`limit` must be 1 to {MAX_LIMIT}"
            ))),
        }
    }
}

/// One page of a listing: its items and the cursor of the next page, if there may be one.
#[derive(Debug, Serialize)]
pub struct Listing<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `after` for the next page (none: this was the last).
    pub next: Option<String>,
}

impl<T> Listing<T> {
    /// A page of `items` read with `limit`; `cursor` is the keyset of an item.
    pub fn of(items: Vec<T>, limit: i64, cursor: impl Fn(&T) -> String) -> Self {
        let next = (items.len() as i64 == limit)
            .then(|| items.last().map(&cursor))
            .flatten();
        Listing { items, next }
    }
}
