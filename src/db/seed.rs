//! Start-up seeding of the microDAOs, blueprints and agents the config declares. The database
//! is the source of truth; declarations are seed data, and never overwrite what others wrote:
//!
//! - a row that does not exist is created, with its bridge row (`bridge_blueprints`,
//!   `bridge_agents`) marked `source = 'config'`;
//! - a row that exists without a bridge row (written by another service, or by a bridge before
//!   the platform tables existed) gets the declared bridge row; its ERD columns stay as they are;
//! - a row whose bridge row says `config` is the config's: both are updated to the declaration;
//! - a row whose bridge row says `platform` or `admin` is never touched.
//!
//! MicroDAOs have no bridge row: a declared microDAO is created when missing and otherwise left
//! alone. Secrets are never written: an inline webhook secret is stored as a `secret_ref` to
//! `blueprint:<code>`, which the registry resolves from the config.

use ruma::UserId;
use sqlx::types::Json;

use crate::{
    config::{AgentDecl, BlueprintDecl, MicrodaoDecl, RuntimeKind},
    model::{
        Namespace,
        ids::{AgentId, BlueprintId, MicrodaoId, UserRowId},
    },
};
use crate::{
    db::{
        Store, StoreError,
        admin::{BRIDGE_OWNER, ENSURE_USER},
        both,
    },
    model::Ts,
};

/// What the config declares.
#[derive(Debug, Clone, Copy)]
pub struct Declarations<'a> {
    /// `[[microdaos]]`.
    pub microdaos: &'a [MicrodaoDecl],
    /// `[[blueprints]]`.
    pub blueprints: &'a [BlueprintDecl],
    /// `[[agents]]`.
    pub agents: &'a [AgentDecl],
    /// `bridge.default_microdao`, which must exist.
    pub default_microdao: Option<&'a str>,
}

/// The secret name an inline webhook secret of blueprint `code` is known by.
pub fn inline_secret_ref(code: &str) -> String {
    format!("blueprint:{code}")
}

/// A blueprint's runtime settings as stored (no secret values).
pub fn blueprint_settings(b: &BlueprintDecl) -> serde_json::Value {
    match b.runtime {
        RuntimeKind::Echo => serde_json::json!({}),
        RuntimeKind::Openai => b
            .openai
            .as_ref()
            .and_then(|o| serde_json::to_value(o).ok())
            .unwrap_or_default(),
        RuntimeKind::Webhook => {
            let Some(w) = &b.webhook else {
                return serde_json::json!({});
            };
            let mut v = serde_json::to_value(w).unwrap_or_default();
            if w.secret.is_some() && w.secret_ref.is_none() {
                v["secret_ref"] = serde_json::Value::String(inline_secret_ref(&b.code));
            }
            v
        }
        RuntimeKind::Nats => {
            serde_json::to_value(b.nats.clone().unwrap_or_default()).unwrap_or_default()
        }
    }
}

fn runtime_name(r: RuntimeKind) -> &'static str {
    match r {
        RuntimeKind::Echo => "echo",
        RuntimeKind::Openai => "openai",
        RuntimeKind::Webhook => "webhook",
        RuntimeKind::Nats => "nats",
    }
}

fn kind_name(k: crate::config::MessageKind) -> &'static str {
    match k {
        crate::config::MessageKind::Notice => "notice",
        crate::config::MessageKind::Text => "text",
    }
}

/// Who owns a row's behaviour: `None` when it has no bridge row yet.
async fn source(
    store: &Store,
    table: &str,
    key: &str,
    id: uuid::Uuid,
) -> Result<Option<String>, StoreError> {
    let sql = format!("SELECT source FROM {table} WHERE {key} = $1");
    Ok(match &store.pool {
        super::Pool::Pg(p) => sqlx::query_scalar(&sql).bind(id).fetch_optional(p).await?,
        super::Pool::Sqlite(p) => {
            sqlx::query_scalar(&sql)
                .bind(id.hyphenated().to_string())
                .fetch_optional(p)
                .await?
        }
    })
}

impl Store {
    /// Seeds the declarations (see the module docs for what is written when).
    pub async fn seed(&self, d: Declarations<'_>, namespace: &Namespace) -> Result<(), StoreError> {
        self.seed_bridge_rows(namespace.bot()).await?;
        // The database's triggers append events too (microDAO members, users, audit rows,
        // catalog changes); they read this to honour `events.enabled` as the bridge does.
        both!(self, pool => sqlx::query(
            "INSERT INTO bridge_settings (key, value) VALUES ('events', $1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(if self.events_enabled() { "on" } else { "off" })
        .execute(pool)
        .await
        .map(|_| ())?);
        for m in d.microdaos {
            both!(self, pool => {
                let mut tx = pool.begin().await?;
                if let Some(owner) = &m.owner {
                    sqlx::query(ENSURE_USER)
                        .bind(UserRowId::new())
                        .bind(owner.as_str())
                        .bind(owner.localpart())
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(&format!(
                    "INSERT INTO microdaos (id, external_id, name, owner_user_id, created_at) \
                     VALUES ($1, $2, $3, COALESCE((SELECT id FROM users WHERE matrix_id = $4), {BRIDGE_OWNER}), $5) \
                     ON CONFLICT (external_id) DO UPDATE SET owner_user_id = excluded.owner_user_id \
                     WHERE $4 IS NOT NULL AND microdaos.owner_user_id <> excluded.owner_user_id",
                ))
                .bind(MicrodaoId::new())
                .bind(&m.external_id)
                .bind(&m.name)
                .bind(m.owner.as_ref().map(|o| o.as_str()))
                .bind(Ts::now())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            });
        }
        for b in d.blueprints {
            self.seed_blueprint(b).await?;
        }
        for a in d.agents {
            self.seed_agent(a, namespace).await?;
        }
        if let Some(default) = d.default_microdao
            && self
                .rooms()
                .microdao_by_external_id(default)
                .await?
                .is_none()
        {
            return Err(StoreError::Invalid(format!(
                "bridge.default_microdao `{default}` is neither declared in [[microdaos]] nor in the database"
            )));
        }
        Ok(())
    }

    /// The bridge's own rows: its `users` row (`bridge:bot`, the owner of microDAOs declared
    /// without one) gets the bot's Matrix id, and the `echo` blueprint (what agents named
    /// without a blueprint get) is there even if someone deleted it.
    pub async fn seed_bridge_rows(&self, bot: &UserId) -> Result<(), StoreError> {
        both!(self, pool => sqlx::query(
            "UPDATE users SET matrix_id = $1, handle = $2 WHERE external_id = 'bridge:bot' \
             AND matrix_id IS DISTINCT FROM $1 AND NOT EXISTS (SELECT 1 FROM users WHERE matrix_id = $1)",
        )
        .bind(bot.as_str())
        .bind(bot.localpart())
        .execute(pool)
        .await
        .map(|_| ())?);
        self.seed_default_blueprint().await
    }

    async fn seed_default_blueprint(&self) -> Result<(), StoreError> {
        both!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO agent_blueprints (id, code, description, model) \
                 VALUES ($1, 'echo', 'Repeats what it is told (the default blueprint)', '') ON CONFLICT (code) DO NOTHING",
            )
            .bind(BlueprintId::new())
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO bridge_blueprints (blueprint_id, runtime, source, updated_at) \
                 SELECT id, 'echo', 'config', $1 FROM agent_blueprints WHERE code = 'echo' ON CONFLICT (blueprint_id) DO NOTHING",
            )
            .bind(Ts::now())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    async fn seed_blueprint(&self, b: &BlueprintDecl) -> Result<(), StoreError> {
        let inserted = both!(self, pool => sqlx::query(
            "INSERT INTO agent_blueprints (id, code, description, model, capabilities) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (code) DO NOTHING",
        )
        .bind(BlueprintId::new())
        .bind(&b.code)
        .bind(&b.description)
        // ERD: NOT NULL; '' is "no model", read back as none.
        .bind(b.model.as_deref().unwrap_or(""))
        .bind(Json(&b.capabilities))
        .execute(pool)
        .await?
        .rows_affected());
        let id: BlueprintId = both!(self, pool => sqlx::query_scalar("SELECT id FROM agent_blueprints WHERE code = $1")
            .bind(&b.code)
            .fetch_one(pool)
            .await?);
        let owner = source(self, "bridge_blueprints", "blueprint_id", id.0).await?;
        match owner.as_deref() {
            Some("config") if inserted == 0 => {
                both!(self, pool => sqlx::query(
                    "UPDATE agent_blueprints SET description = $2, model = $3, capabilities = $4 WHERE id = $1",
                )
                .bind(id)
                .bind(&b.description)
                .bind(b.model.as_deref().unwrap_or(""))
                .bind(Json(&b.capabilities))
                .execute(pool)
                .await
                .map(|_| ())?);
            }
            Some("config") | None => {}
            Some(_) => return Ok(()),
        }
        both!(self, pool => sqlx::query(
            "INSERT INTO bridge_blueprints (blueprint_id, runtime, settings, system_instructions, context_events, \
             failure_notice, message_type, source, updated_at, context_chars, tools, show_tools, max_tool_rounds) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'config', $8, $9, $10, $11, $12) \
             ON CONFLICT (blueprint_id) DO UPDATE SET runtime = excluded.runtime, settings = excluded.settings, \
             system_instructions = excluded.system_instructions, context_events = excluded.context_events, \
             context_chars = excluded.context_chars, tools = excluded.tools, show_tools = excluded.show_tools, \
             max_tool_rounds = excluded.max_tool_rounds, \
             failure_notice = excluded.failure_notice, message_type = excluded.message_type, updated_at = excluded.updated_at \
             WHERE bridge_blueprints.source = 'config'",
        )
        .bind(id)
        .bind(runtime_name(b.runtime))
        .bind(Json(blueprint_settings(b)))
        .bind(&b.instructions)
        .bind(b.context_events as i32)
        .bind(b.failure_notice)
        .bind(kind_name(b.message_type))
        .bind(Ts::now())
        .bind(b.context_chars.map(|n| n as i32))
        .bind((!b.tools.is_empty()).then_some(Json(&b.tools)))
        .bind(b.show_tools.as_str())
        .bind(b.max_tool_rounds.min(crate::model::tools::MAX_ROUNDS_LIMIT) as i32)
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    async fn seed_agent(&self, a: &AgentDecl, namespace: &Namespace) -> Result<(), StoreError> {
        let matrix_id = namespace
            .agent_user_id(&a.external_id, a.localpart.as_deref())
            .ok_or_else(|| {
                StoreError::Invalid(format!("agent `{}` has no valid Matrix id", a.external_id))
            })?;
        if let Some(m) = &a.microdao
            && self.rooms().microdao_by_external_id(m).await?.is_none()
        {
            return Err(StoreError::Invalid(format!(
                "agent `{}` names microdao `{m}`, which is neither declared in [[microdaos]] nor in the database",
                a.external_id
            )));
        }
        if let Some(bp) = &a.blueprint {
            let known: Option<BlueprintId> = both!(self, pool => sqlx::query_scalar(
                "SELECT id FROM agent_blueprints WHERE code = $1"
            )
            .bind(bp)
            .fetch_optional(pool)
            .await?);
            if known.is_none() {
                return Err(StoreError::Invalid(format!(
                    "agent `{}` names blueprint `{bp}`, which is neither declared in [[blueprints]] nor in the database",
                    a.external_id
                )));
            }
        }
        let inserted = both!(self, pool => sqlx::query(
            "INSERT INTO agents (id, external_id, name, kind, microdao_id, matrix_id, blueprint_id, created_at) \
             VALUES ($1, $2, $3, $4, (SELECT id FROM microdaos WHERE external_id = $5), $6, \
             (SELECT id FROM agent_blueprints WHERE code = COALESCE($7, 'echo')), $8) ON CONFLICT (external_id) DO NOTHING",
        )
        .bind(AgentId::new())
        .bind(&a.external_id)
        .bind(&a.name)
        .bind(&a.kind)
        .bind(&a.microdao)
        .bind(matrix_id.as_str())
        .bind(&a.blueprint)
        .bind(Ts::now())
        .execute(pool)
        .await?
        .rows_affected());
        let id: AgentId = both!(self, pool => sqlx::query_scalar("SELECT id FROM agents WHERE external_id = $1")
            .bind(&a.external_id)
            .fetch_one(pool)
            .await?);
        match source(self, "bridge_agents", "agent_id", id.0)
            .await?
            .as_deref()
        {
            Some("config") if inserted == 0 => {
                both!(self, pool => sqlx::query(
                    "UPDATE agents SET name = $2, kind = $3, matrix_id = $4, \
                     microdao_id = COALESCE((SELECT id FROM microdaos WHERE external_id = $5), microdao_id), \
                     blueprint_id = COALESCE((SELECT id FROM agent_blueprints WHERE code = $6), blueprint_id) WHERE id = $1",
                )
                .bind(id)
                .bind(&a.name)
                .bind(&a.kind)
                .bind(matrix_id.as_str())
                .bind(&a.microdao)
                .bind(&a.blueprint)
                .execute(pool)
                .await
                .map(|_| ())?);
            }
            Some("config") | None => {}
            Some(_) => return Ok(()),
        }
        both!(self, pool => sqlx::query(
            "INSERT INTO bridge_agents (agent_id, active, instructions, model, idle_after_seconds, respond, message_type, \
             avatar, source, updated_at, tools) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'config', $9, $10) \
             ON CONFLICT (agent_id) DO UPDATE SET active = excluded.active, instructions = excluded.instructions, \
             model = excluded.model, idle_after_seconds = excluded.idle_after_seconds, respond = excluded.respond, \
             message_type = excluded.message_type, avatar = excluded.avatar, updated_at = excluded.updated_at, \
             tools = excluded.tools \
             WHERE bridge_agents.source = 'config'",
        )
        .bind(id)
        .bind(a.active)
        .bind(&a.instructions)
        .bind(&a.model)
        .bind(a.session_idle_after.map(|d| d.as_secs().max(1) as i32))
        .bind(&a.respond)
        .bind(a.message_type.map(kind_name))
        .bind(&a.avatar)
        .bind(Ts::now())
        .bind(a.tools.as_ref().map(Json))
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }
}
