//! Agent rows (what the agent registry loads) and per-puppet homeserver state.

use super::{Store, StoreError, both};
use crate::ids::{AgentId, MicrodaoId};

/// An agent row with a Matrix identity.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredAgent {
    /// `agents.id`.
    pub id: AgentId,
    /// `agents.external_id` (`agent:sofia`).
    pub external_id: String,
    /// `agents.matrix_id`.
    pub matrix_id: String,
    /// `agents.name` (the puppet's display name).
    pub name: String,
    /// `agents.microdao_id`.
    pub microdao_id: Option<MicrodaoId>,
    /// The code of its blueprint.
    pub blueprint: Option<String>,
}

/// What the homeserver knows of a puppet, so registration and profile changes happen once.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct PuppetState {
    /// The user exists on the homeserver.
    pub registered: bool,
    /// Display name last set.
    pub display_name: Option<String>,
    /// `mxc://` avatar last set.
    pub avatar_url: Option<String>,
    /// The configured avatar (mxc URI or local file) `avatar_url` came from.
    pub avatar_source: Option<String>,
}

impl Store {
    /// Every agent that has a Matrix id.
    pub async fn agents(&self) -> Result<Vec<StoredAgent>, StoreError> {
        Ok(both!(self, pool => sqlx::query_as(
            "SELECT a.id, a.external_id, a.matrix_id, a.name, a.microdao_id, b.code AS blueprint \
             FROM agents a LEFT JOIN agent_blueprints b ON b.id = a.blueprint_id WHERE a.matrix_id IS NOT NULL",
        )
        .fetch_all(pool)
        .await?))
    }

    /// `agents.id` for an external id such as `agent:sofia`.
    pub async fn agent_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<AgentId>, StoreError> {
        Ok(
            both!(self, pool => sqlx::query_scalar("SELECT id FROM agents WHERE external_id = $1")
            .bind(external_id)
            .fetch_optional(pool)
            .await?),
        )
    }

    /// The puppet's stored homeserver state (default: nothing done yet).
    pub async fn puppet_state(&self, agent: AgentId) -> Result<PuppetState, StoreError> {
        Ok(both!(self, pool => sqlx::query_as(
            "SELECT registered, display_name, avatar_url, avatar_source FROM bridge_puppets WHERE agent_id = $1",
        )
        .bind(agent)
        .fetch_optional(pool)
        .await?)
        .unwrap_or_default())
    }

    /// Records the puppet's homeserver state.
    pub async fn set_puppet_state(
        &self,
        agent: AgentId,
        s: &PuppetState,
    ) -> Result<(), StoreError> {
        both!(self, pool => sqlx::query(
            "INSERT INTO bridge_puppets (agent_id, registered, display_name, avatar_url, avatar_source) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (agent_id) DO UPDATE SET registered = excluded.registered, display_name = excluded.display_name, \
             avatar_url = excluded.avatar_url, avatar_source = excluded.avatar_source",
        )
        .bind(agent)
        .bind(s.registered)
        .bind(&s.display_name)
        .bind(&s.avatar_url)
        .bind(&s.avatar_source)
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }
}
