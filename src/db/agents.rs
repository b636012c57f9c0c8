//! Agent rows (what the agent registry loads) and per-puppet homeserver state.

use ruma::{OwnedUserId, UserId};

use crate::db::{
    Store, StoreError, both,
    decode::{BadRow, RawRow, decode_good, parse_ids},
};
use crate::model::ids::{AgentId, MicrodaoId};

/// An agent row with everything that defines its behaviour: the ERD columns, its blueprint's,
/// and the bridge rows of both (all optional: a row another service wrote may have none). Its
/// Matrix id comes beside it, parsed (see [`RawStoredAgent`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredAgent {
    /// `agents.id`.
    pub id: AgentId,
    /// `agents.external_id` (`agent:sofia`).
    pub external_id: String,
    /// `agents.name` (the puppet's display name).
    pub name: String,
    /// `agents.kind`.
    pub kind: String,
    /// `agents.microdao_id`.
    pub microdao_id: Option<MicrodaoId>,
    /// The code of its blueprint.
    pub blueprint: Option<String>,
    /// The blueprint's model.
    pub blueprint_model: Option<String>,
    /// `bridge_blueprints.runtime`.
    pub runtime: Option<String>,
    /// `bridge_blueprints.settings`, as JSON text.
    pub settings: Option<String>,
    /// `bridge_blueprints.system_instructions`.
    pub system_instructions: Option<String>,
    /// `bridge_blueprints.context_events`.
    pub context_events: Option<i32>,
    /// `bridge_blueprints.context_chars`.
    pub context_chars: Option<i32>,
    /// `bridge_blueprints.failure_notice` (0/1).
    pub failure_notice: Option<i32>,
    /// `bridge_blueprints.message_type`.
    pub blueprint_message_type: Option<String>,
    /// `bridge_agents.active` (0/1; no row: active).
    pub active: i32,
    /// `bridge_agents.instructions`.
    pub instructions: Option<String>,
    /// `bridge_agents.model`.
    pub model: Option<String>,
    /// `bridge_agents.idle_after_seconds`.
    pub idle_after_seconds: Option<i32>,
    /// `bridge_agents.respond`.
    pub respond: Option<String>,
    /// `bridge_agents.message_type`.
    pub message_type: Option<String>,
    /// `bridge_agents.avatar`.
    pub avatar: Option<String>,
    /// `bridge_blueprints.tools`, as JSON text.
    pub tools: Option<String>,
    /// `bridge_blueprints.show_tools`.
    pub show_tools: Option<String>,
    /// `bridge_blueprints.max_tool_rounds`.
    pub max_tool_rounds: Option<i32>,
    /// `bridge_agents.tools` (the agent's narrowing), as JSON text.
    pub agent_tools: Option<String>,
}

/// An agent row as read: `agents.matrix_id` still text (see [`crate::db::decode`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RawStoredAgent {
    /// `agents.matrix_id` (none: derived from the external id by the registry).
    pub matrix_id: Option<String>,
    /// The rest of the row.
    #[sqlx(flatten)]
    pub agent: StoredAgent,
}

impl RawRow for RawStoredAgent {
    type Row = (Option<OwnedUserId>, StoredAgent);
    const TABLE: &'static str = "agents";

    fn key(&self) -> String {
        self.agent.external_id.clone()
    }

    fn decode(self) -> Result<Self::Row, BadRow<Self>> {
        let (r, user) = parse_ids(self, |r| {
            r.matrix_id.as_deref().map(UserId::parse).transpose()
        })?;
        Ok((user, r.agent))
    }
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

/// The store's view of agent rows as the registry loads them, and each puppet's homeserver state. A
/// component given this handle, not the whole store, can touch nothing else.
#[derive(Clone, Debug)]
pub struct AgentStore {
    store: Store,
}

impl Store {
    /// The queries of agent rows as the registry loads them, and each puppet's homeserver state.
    pub fn agents(&self) -> AgentStore {
        AgentStore {
            store: self.clone(),
        }
    }
}

impl AgentStore {
    /// Every agent with its Matrix id (none: not stored) and its behaviour. An agent whose
    /// stored Matrix id is invalid is left out (logged): no puppet can act as it.
    pub async fn all(&self) -> Result<Vec<(Option<OwnedUserId>, StoredAgent)>, StoreError> {
        let raws: Vec<RawStoredAgent> = both!(self.store, pool => sqlx::query_as(
            "SELECT a.id, a.external_id, a.matrix_id, a.name, a.kind, a.microdao_id, b.code AS blueprint, \
             b.model AS blueprint_model, bb.runtime, CAST(bb.settings AS TEXT) AS settings, bb.system_instructions, \
             bb.context_events, bb.context_chars, CASE WHEN bb.failure_notice IS NULL THEN NULL WHEN bb.failure_notice THEN 1 ELSE 0 END \
             AS failure_notice, bb.message_type AS blueprint_message_type, \
             CASE WHEN ba.active IS NULL OR ba.active THEN 1 ELSE 0 END AS active, ba.instructions, ba.model, \
             ba.idle_after_seconds, ba.respond, ba.message_type, ba.avatar, CAST(bb.tools AS TEXT) AS tools, \
             bb.show_tools, bb.max_tool_rounds, CAST(ba.tools AS TEXT) AS agent_tools \
             FROM agents a LEFT JOIN agent_blueprints b ON b.id = a.blueprint_id \
             LEFT JOIN bridge_blueprints bb ON bb.blueprint_id = b.id LEFT JOIN bridge_agents ba ON ba.agent_id = a.id",
        )
        .fetch_all(pool)
        .await?);
        Ok(decode_good(raws))
    }

    /// Records the Matrix id the bridge derived for an agent written without one (so other
    /// services see it); a row that got one meanwhile keeps it.
    pub async fn set_matrix_id(&self, agent: AgentId, matrix_id: &str) -> Result<bool, StoreError> {
        Ok(both!(self.store, pool => sqlx::query(
            "UPDATE agents SET matrix_id = $2 WHERE id = $1 AND matrix_id IS NULL \
             AND NOT EXISTS (SELECT 1 FROM agents o WHERE o.matrix_id = $2)",
        )
        .bind(agent)
        .bind(matrix_id)
        .execute(pool)
        .await?
        .rows_affected() == 1))
    }

    /// `agents.id` for an external id such as `agent:sofia`.
    pub async fn by_external_id(&self, external_id: &str) -> Result<Option<AgentId>, StoreError> {
        Ok(
            both!(self.store, pool => sqlx::query_scalar("SELECT id FROM agents WHERE external_id = $1")
            .bind(external_id)
            .fetch_optional(pool)
            .await?),
        )
    }

    /// The puppet's stored homeserver state (default: nothing done yet).
    pub async fn puppet_state(&self, agent: AgentId) -> Result<PuppetState, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(
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
        both!(self.store, pool => sqlx::query(
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
