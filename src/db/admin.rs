//! What the admin (provisioning) API reads and writes: microDAOs, blueprints and agents put by
//! their external id (idempotent upserts that take ownership of the bridge rows, `source =
//! 'admin'`), keyset-paginated listings, and the admin keys themselves. Every write is one
//! transaction with its audit record; the agent tables' triggers tell the bridge to reload.
//! Listings of channels and activity are in `listings`, admin keys in `admin_keys`.

use serde::Serialize;
use sqlx::types::Json;

use ruma::UserId;

use crate::model::ids::{AgentId, BlueprintId, MicrodaoId, UserRowId};
use crate::{
    db::{
        Store, StoreError,
        audit::{Actor, AppendAudit},
        both,
    },
    model::{
        AuditOutcome, Ts,
        tools::{ShowTools, ToolSpec},
    },
};

/// A microDAO.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct MicrodaoRow {
    /// `microdaos.id`.
    pub id: MicrodaoId,
    /// Its external id.
    pub external_id: String,
    /// Its name.
    pub name: String,
    /// Its owner's Matrix id (`None`: the bridge itself, or a platform user without one).
    pub owner: Option<String>,
    /// When it was created.
    pub created_at: Ts,
}

/// A blueprint with its bridge row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BlueprintRow {
    /// `agent_blueprints.id`.
    pub id: BlueprintId,
    /// Its code.
    pub code: String,
    /// What it is for.
    pub description: Option<String>,
    /// Its model.
    pub model: Option<String>,
    /// `echo | openai | webhook` (none: echo).
    pub runtime: Option<String>,
    /// Runtime settings (never secret values).
    pub settings: Option<Json<serde_json::Value>>,
    /// System instructions.
    pub system_instructions: Option<String>,
    /// Events of room history given to the runtime.
    pub context_events: Option<i32>,
    /// Characters of room history given to the runtime at most.
    pub context_chars: Option<i32>,
    /// Whether a failed run posts a notice.
    pub failure_notice: Option<bool>,
    /// `notice | text`.
    pub message_type: Option<String>,
    /// The tools its agents may use (references to secrets, never their values). Read as
    /// plain JSON so a row another service wrote is shown even if the bridge refuses it.
    pub tools: Option<Json<serde_json::Value>>,
    /// `none | summary | full` (none: `summary`).
    pub show_tools: Option<String>,
    /// Rounds of tool calls a run makes at most (none: 5).
    pub max_tool_rounds: Option<i32>,
    /// Who owns the bridge row: `config | platform | admin`.
    pub source: Option<String>,
}

/// A blueprint to put.
#[derive(Debug, Clone)]
pub struct BlueprintPut {
    /// Its code (the external id).
    pub code: String,
    /// What it is for.
    pub description: Option<String>,
    /// Its model.
    pub model: Option<String>,
    /// `echo | openai | webhook`.
    pub runtime: String,
    /// Runtime settings.
    pub settings: serde_json::Value,
    /// System instructions.
    pub system_instructions: Option<String>,
    /// Events of room history given to the runtime.
    pub context_events: Option<i32>,
    /// Characters of room history given to the runtime at most.
    pub context_chars: Option<i32>,
    /// Whether a failed run posts a notice.
    pub failure_notice: Option<bool>,
    /// `notice | text`.
    pub message_type: Option<String>,
    /// The tools its agents may use, validated (none: no tools).
    pub tools: Option<Vec<ToolSpec>>,
    /// What people see of tool calls (none: the default).
    pub show_tools: Option<ShowTools>,
    /// Rounds of tool calls a run makes at most (none: the default).
    pub max_tool_rounds: Option<i32>,
}

/// An agent with its bridge row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AgentRow {
    /// `agents.id`.
    pub id: AgentId,
    /// Its external id.
    pub external_id: String,
    /// Its name.
    pub name: String,
    /// `system | assistant | node | quest`.
    pub kind: String,
    /// Its microDAO's external id.
    pub microdao: Option<String>,
    /// Its blueprint's code.
    pub blueprint: Option<String>,
    /// Its puppet.
    pub matrix_id: Option<String>,
    /// Enabled (none: yes).
    pub active: Option<bool>,
    /// Its own instructions, after the blueprint's.
    pub instructions: Option<String>,
    /// Model override.
    pub model: Option<String>,
    /// Session idle timeout override.
    pub idle_after_seconds: Option<i32>,
    /// Default `respond` setting.
    pub respond: Option<String>,
    /// `notice | text`.
    pub message_type: Option<String>,
    /// Avatar (`mxc://` or a file on the bridge's host).
    pub avatar: Option<String>,
    /// Names or globs narrowing its blueprint's tools (none: all of them); plain JSON, as for
    /// [`BlueprintRow::tools`].
    pub tools: Option<Json<serde_json::Value>>,
    /// Who owns the bridge row.
    pub source: Option<String>,
}

/// An agent to put.
#[derive(Debug, Clone)]
pub struct AgentPut {
    /// Its external id.
    pub external_id: String,
    /// Its name.
    pub name: String,
    /// `system | assistant | node | quest`.
    pub kind: String,
    /// Its microDAO's external id.
    pub microdao: Option<String>,
    /// Its blueprint's code.
    pub blueprint: Option<String>,
    /// Enabled.
    pub active: bool,
    /// Its own instructions.
    pub instructions: Option<String>,
    /// Model override.
    pub model: Option<String>,
    /// Session idle timeout override.
    pub idle_after_seconds: Option<i32>,
    /// Default `respond` setting.
    pub respond: Option<String>,
    /// `notice | text`.
    pub message_type: Option<String>,
    /// Avatar.
    pub avatar: Option<String>,
    /// Names or globs narrowing its blueprint's tools (none: all of them).
    pub tools: Option<Vec<String>>,
}

const BLUEPRINT_COLS: &str = "SELECT b.id, b.code, b.description, NULLIF(b.model, '') AS model, x.runtime, x.settings, \
     x.system_instructions, x.context_events, x.context_chars, x.failure_notice, x.message_type, x.tools, \
     x.show_tools, x.max_tool_rounds, x.source \
     FROM agent_blueprints b LEFT JOIN bridge_blueprints x ON x.blueprint_id = b.id";

/// A microDAO's columns, with its owner's Matrix id.
const MICRODAO_COLS: &str = "SELECT m.id, m.external_id, m.name, u.matrix_id AS owner, m.created_at \
     FROM microdaos m LEFT JOIN users u ON u.id = m.owner_user_id";

/// The `users` row of a Matrix id, made when there is none (as the mirror makes them: external
/// id `matrix:<id>`, handle the localpart). DO NOTHING on any conflict: a row the platform wrote
/// for this Matrix id wins. `$1` is a fresh id, `$2` the Matrix id, `$3` the localpart.
pub(crate) const ENSURE_USER: &str = "INSERT INTO users (id, external_id, matrix_id, handle) \
     VALUES ($1, 'matrix:' || $2, $2, $3) ON CONFLICT DO NOTHING";

/// The owner a microDAO gets when none is named: the bridge's own `users` row.
pub(crate) const BRIDGE_OWNER: &str = "(SELECT id FROM users WHERE external_id = 'bridge:bot')";

const AGENT_COLS: &str = "SELECT a.id, a.external_id, a.name, a.kind, m.external_id AS microdao, \
     b.code AS blueprint, a.matrix_id, x.active, x.instructions, x.model, x.idle_after_seconds, x.respond, \
     x.message_type, x.avatar, x.tools, x.source FROM agents a LEFT JOIN microdaos m ON m.id = a.microdao_id \
     LEFT JOIN agent_blueprints b ON b.id = a.blueprint_id LEFT JOIN bridge_agents x ON x.agent_id = a.id";

/// The store's view of the catalog the admin (provisioning) API puts: microDAOs, blueprints and
/// agents. A component given this handle, not the whole store, can touch nothing else.
#[derive(Clone, Debug)]
pub struct CatalogStore {
    store: Store,
}

impl Store {
    /// The queries of the catalog the admin (provisioning) API puts: microDAOs, blueprints and
    /// agents.
    pub fn catalog(&self) -> CatalogStore {
        CatalogStore {
            store: self.clone(),
        }
    }
}

impl CatalogStore {
    /// Creates or renames a microDAO; `true` when created. `owner` (a Matrix id) becomes its
    /// owner, with a `users` row made for it if there is none; without one, a new microDAO is
    /// owned by the bridge and an existing one keeps its owner.
    pub async fn put_microdao(
        &self,
        external_id: &str,
        name: &str,
        owner: Option<&UserId>,
        by: &Actor,
    ) -> Result<(MicrodaoRow, bool), StoreError> {
        let entry = by
            .did("microdao.put", Some(external_id), AuditOutcome::Allowed)
            .details(serde_json::json!({ "owner": owner.map(UserId::as_str) }));
        let id = MicrodaoId::new();
        let actual: MicrodaoId = both!(self.store, pool => {
            let mut tx = pool.begin().await?;
            if let Some(owner) = owner {
                sqlx::query(ENSURE_USER)
                    .bind(UserRowId::new())
                    .bind(owner.as_str())
                    .bind(owner.localpart())
                    .execute(&mut *tx)
                    .await?;
            }
            let actual: MicrodaoId = sqlx::query_scalar(&format!(
                "INSERT INTO microdaos (id, external_id, name, owner_user_id, created_at) \
                 VALUES ($1, $2, $3, COALESCE((SELECT id FROM users WHERE matrix_id = $4), {BRIDGE_OWNER}), $5) \
                 ON CONFLICT (external_id) DO UPDATE SET name = excluded.name, \
                 owner_user_id = CASE WHEN $4 IS NULL THEN microdaos.owner_user_id ELSE excluded.owner_user_id END \
                 RETURNING id"
            ))
            .bind(id)
            .bind(external_id)
            .bind(name)
            .bind(owner.map(UserId::as_str))
            .bind(Ts::now())
            .fetch_one(&mut *tx)
            .await?;
            tx.append_audit(&[entry]).await?;
            tx.commit().await?;
            actual
        });
        let row = self
            .get_microdao(external_id)
            .await?
            .ok_or_else(|| StoreError::Invalid("microDAO vanished".into()))?;
        Ok((row, actual == id))
    }

    /// The microDAOs after `after` (by external id), at most `limit`.
    pub async fn list_microdaos(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<MicrodaoRow>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(
            &format!("{MICRODAO_COLS} WHERE ($1 = '' OR m.external_id > $1) ORDER BY m.external_id LIMIT $2"),
        )
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(pool)
        .await?))
    }

    /// A microDAO by external id.
    pub async fn get_microdao(&self, external_id: &str) -> Result<Option<MicrodaoRow>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(
            &format!("{MICRODAO_COLS} WHERE m.external_id = $1"),
        )
        .bind(external_id)
        .fetch_optional(pool)
        .await?))
    }

    /// A microDAO by external id, with how many channels and agents it has.
    pub async fn microdao_usage(
        &self,
        external_id: &str,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM channels c WHERE c.microdao_id = m.id), \
             (SELECT COUNT(*) FROM agents a WHERE a.microdao_id = m.id) FROM microdaos m WHERE m.external_id = $1",
        )
        .bind(external_id)
        .fetch_optional(pool)
        .await?))
    }

    /// The microDAO's id and which of `people` (Matrix ids) are its members
    /// (`microdao_members`); `None` when there is no such microDAO.
    pub async fn microdao_members_among(
        &self,
        microdao: &str,
        people: &[String],
    ) -> Result<Option<(MicrodaoId, Vec<String>)>, StoreError> {
        let Some(row) = self.get_microdao(microdao).await? else {
            return Ok(None);
        };
        let mut members = Vec::new();
        for person in people {
            let found: bool = both!(self.store, pool => sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM microdao_members mm JOIN users u ON u.id = mm.user_id \
                 WHERE mm.microdao_id = $1 AND u.matrix_id = $2)",
            )
            .bind(row.id)
            .bind(person)
            .fetch_one(pool)
            .await?);
            if found {
                members.push(person.clone());
            }
        }
        Ok(Some((row.id, members)))
    }

    /// How many agents use the blueprint `code`; `None` when there is no such blueprint.
    pub async fn blueprint_usage(&self, code: &str) -> Result<Option<i64>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM agents a WHERE a.blueprint_id = b.id) FROM agent_blueprints b WHERE b.code = $1",
        )
        .bind(code)
        .fetch_optional(pool)
        .await?))
    }

    /// Creates or replaces a blueprint and its bridge row (which the admin API then owns).
    pub async fn put_blueprint(
        &self,
        b: &BlueprintPut,
        by: &Actor,
    ) -> Result<(BlueprintRow, bool), StoreError> {
        // The tools' names tell who gave agents which tools; never their URLs or secrets.
        let names = b
            .tools
            .as_ref()
            .map(|t| t.iter().map(ToolSpec::name).collect::<Vec<_>>());
        let entry = by
            .did("blueprint.put", Some(&b.code), AuditOutcome::Allowed)
            .details(serde_json::json!({ "tools": names }));
        let id = BlueprintId::new();
        let actual: BlueprintId = both!(self.store, pool => {
            let mut tx = pool.begin().await?;
            let actual: BlueprintId = sqlx::query_scalar(
                "INSERT INTO agent_blueprints (id, code, description, model) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (code) DO UPDATE SET description = excluded.description, model = excluded.model \
                 RETURNING id",
            )
            .bind(id)
            .bind(&b.code)
            .bind(&b.description)
            // ERD: NOT NULL; '' is "no model" (echo, webhooks), read back as none.
            .bind(b.model.as_deref().unwrap_or(""))
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO bridge_blueprints (blueprint_id, runtime, settings, system_instructions, context_events, \
                 failure_notice, message_type, source, updated_at, context_chars, tools, show_tools, max_tool_rounds) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'admin', $8, $9, $10, $11, $12) \
                 ON CONFLICT (blueprint_id) DO UPDATE SET runtime = excluded.runtime, settings = excluded.settings, \
                 system_instructions = excluded.system_instructions, context_events = excluded.context_events, \
                 context_chars = excluded.context_chars, tools = excluded.tools, show_tools = excluded.show_tools, \
                 max_tool_rounds = excluded.max_tool_rounds, \
                 failure_notice = excluded.failure_notice, message_type = excluded.message_type, \
                 source = 'admin', updated_at = excluded.updated_at",
            )
            .bind(actual)
            .bind(&b.runtime)
            .bind(Json(&b.settings))
            .bind(&b.system_instructions)
            .bind(b.context_events)
            .bind(b.failure_notice)
            .bind(&b.message_type)
            .bind(Ts::now())
            .bind(b.context_chars)
            // Serialized from the specs, so only what they keep is stored: references to
            // secrets, never a resolved secret.
            .bind(b.tools.as_ref().map(Json))
            .bind(b.show_tools.map(ShowTools::as_str))
            .bind(b.max_tool_rounds)
            .execute(&mut *tx)
            .await?;
            tx.append_audit(&[entry]).await?;
            tx.commit().await?;
            actual
        });
        let row = self
            .get_blueprint(&b.code)
            .await?
            .ok_or_else(|| StoreError::Invalid("blueprint vanished".into()))?;
        Ok((row, actual == id))
    }

    /// A blueprint by code.
    pub async fn get_blueprint(&self, code: &str) -> Result<Option<BlueprintRow>, StoreError> {
        Ok(
            both!(self.store, pool => sqlx::query_as(&format!("{BLUEPRINT_COLS} WHERE b.code = $1"))
            .bind(code)
            .fetch_optional(pool)
            .await?),
        )
    }

    /// The blueprints after `after` (by code), at most `limit`.
    pub async fn list_blueprints(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<BlueprintRow>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(&format!(
            "{BLUEPRINT_COLS} WHERE ($1 = '' OR b.code > $1) ORDER BY b.code LIMIT $2"
        ))
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(pool)
        .await?))
    }

    /// Creates or replaces an agent and its bridge row (which the admin API then owns); `true`
    /// when created. The microDAO and blueprint must exist (checked by the caller, enforced by
    /// the subqueries). The caller reads the row back after reloading the registry, which fills
    /// in the derived Matrix id.
    pub async fn put_agent(&self, a: &AgentPut, by: &Actor) -> Result<bool, StoreError> {
        let entry = by
            .did("agent.put", Some(&a.external_id), AuditOutcome::Allowed)
            .details(serde_json::json!({ "tools": a.tools }));
        let id = AgentId::new();
        let actual: AgentId = both!(self.store, pool => {
            let mut tx = pool.begin().await?;
            let actual: AgentId = sqlx::query_scalar(
                "INSERT INTO agents (id, external_id, name, kind, microdao_id, blueprint_id, created_at) \
                 VALUES ($1, $2, $3, $4, (SELECT id FROM microdaos WHERE external_id = $5), \
                 (SELECT id FROM agent_blueprints WHERE code = COALESCE($6, 'echo')), $7) \
                 ON CONFLICT (external_id) DO UPDATE SET name = excluded.name, kind = excluded.kind, \
                 microdao_id = excluded.microdao_id, blueprint_id = excluded.blueprint_id RETURNING id",
            )
            .bind(id)
            .bind(&a.external_id)
            .bind(&a.name)
            .bind(&a.kind)
            .bind(&a.microdao)
            .bind(&a.blueprint)
            .bind(Ts::now())
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO bridge_agents (agent_id, active, instructions, model, idle_after_seconds, respond, \
                 message_type, avatar, source, updated_at, tools) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'admin', $9, $10) \
                 ON CONFLICT (agent_id) DO UPDATE SET active = excluded.active, instructions = excluded.instructions, \
                 model = excluded.model, idle_after_seconds = excluded.idle_after_seconds, respond = excluded.respond, \
                 message_type = excluded.message_type, avatar = excluded.avatar, source = 'admin', \
                 updated_at = excluded.updated_at, tools = excluded.tools",
            )
            .bind(actual)
            .bind(a.active)
            .bind(&a.instructions)
            .bind(&a.model)
            .bind(a.idle_after_seconds)
            .bind(&a.respond)
            .bind(&a.message_type)
            .bind(&a.avatar)
            .bind(Ts::now())
            .bind(a.tools.as_ref().map(Json))
            .execute(&mut *tx)
            .await?;
            tx.append_audit(&[entry]).await?;
            tx.commit().await?;
            actual
        });
        Ok(actual == id)
    }

    /// An agent by external id.
    pub async fn get_agent(&self, external_id: &str) -> Result<Option<AgentRow>, StoreError> {
        Ok(
            both!(self.store, pool => sqlx::query_as(&format!("{AGENT_COLS} WHERE a.external_id = $1"))
            .bind(external_id)
            .fetch_optional(pool)
            .await?),
        )
    }

    /// The agents after `after` (by external id), at most `limit`.
    pub async fn list_agents(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AgentRow>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(&format!(
            "{AGENT_COLS} WHERE ($1 = '' OR a.external_id > $1) ORDER BY a.external_id LIMIT $2"
        ))
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(pool)
        .await?))
    }

    /// Deletes a row of `microdaos`, `agent_blueprints` or `agents` by its external id (`code`
    /// for blueprints); `false` when there was none.
    pub async fn delete(&self, what: Catalog, key: &str, by: &Actor) -> Result<bool, StoreError> {
        let (sql, action) = match what {
            Catalog::Microdao => (
                "DELETE FROM microdaos WHERE external_id = $1",
                "microdao.deleted",
            ),
            Catalog::Blueprint => (
                "DELETE FROM agent_blueprints WHERE code = $1",
                "blueprint.deleted",
            ),
            Catalog::Agent => ("DELETE FROM agents WHERE external_id = $1", "agent.deleted"),
        };
        let entry = by.did(action, Some(key), AuditOutcome::Allowed);
        Ok(both!(self.store, pool => {
            let mut tx = pool.begin().await?;
            let n = sqlx::query(sql).bind(key).execute(&mut *tx).await?.rows_affected();
            if n > 0 {
                tx.append_audit(&[entry]).await?;
            }
            tx.commit().await?;
            n > 0
        }))
    }
}

/// The catalog tables the admin API deletes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Catalog {
    /// `microdaos`.
    Microdao,
    /// `agent_blueprints`.
    Blueprint,
    /// `agents`.
    Agent,
}
