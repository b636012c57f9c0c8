//! Start-up upsert of the microDAOs, blueprints and agents the config declares. Only the fields
//! a declaration carries are written: other columns belong to other DAARION services.

use sqlx::types::Json;

use super::{Store, StoreError, both, types::Ts};
use crate::{
    config::{AgentDecl, BlueprintDecl, MicrodaoDecl},
    ids::{AgentId, BlueprintId, MicrodaoId},
    matrix::Namespace,
};

/// What the config declares, to be upserted.
#[derive(Debug, Clone, Copy)]
pub struct Declarations<'a> {
    /// `[[microdaos]]`.
    pub microdaos: &'a [MicrodaoDecl],
    /// `[[blueprints]]`.
    pub blueprints: &'a [BlueprintDecl],
    /// `[[agents]]`.
    pub agents: &'a [AgentDecl],
    /// `bridge.default_microdao`, which must exist afterwards.
    pub default_microdao: Option<&'a str>,
}

impl Store {
    /// Upserts the declarations; refuses agents naming unknown microDAOs and an unknown default
    /// microDAO (the check `check-config` cannot do without the database).
    pub async fn seed(&self, d: Declarations<'_>, namespace: &Namespace) -> Result<(), StoreError> {
        for m in d.microdaos {
            both!(self, pool => sqlx::query(
                "INSERT INTO microdaos (id, external_id, name, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (external_id) DO UPDATE SET name = excluded.name",
            )
            .bind(MicrodaoId::new())
            .bind(&m.external_id)
            .bind(&m.name)
            .bind(Ts::now())
            .execute(pool)
            .await
            .map(|_| ())?);
        }
        for b in d.blueprints {
            both!(self, pool => sqlx::query(
                "INSERT INTO agent_blueprints (id, code, description, model, capabilities) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (code) DO UPDATE SET description = excluded.description, model = excluded.model, \
                 capabilities = excluded.capabilities",
            )
            .bind(BlueprintId::new())
            .bind(&b.code)
            .bind(&b.description)
            .bind(&b.model)
            .bind(Json(&b.capabilities))
            .execute(pool)
            .await
            .map(|_| ())?);
        }
        for a in d.agents {
            let matrix_id = namespace.agent_user_id(a).ok_or_else(|| {
                StoreError::Invalid(format!("agent `{}` has no valid Matrix id", a.external_id))
            })?;
            if let Some(m) = &a.microdao
                && self.microdao_by_external_id(m).await?.is_none()
            {
                return Err(StoreError::Invalid(format!(
                    "agent `{}` names microdao `{m}`, which is neither declared in [[microdaos]] nor in the database",
                    a.external_id
                )));
            }
            both!(self, pool => sqlx::query(
                "INSERT INTO agents (id, external_id, name, kind, microdao_id, matrix_id, blueprint_id, created_at) \
                 VALUES ($1, $2, $3, $4, (SELECT id FROM microdaos WHERE external_id = $5), $6, \
                 (SELECT id FROM agent_blueprints WHERE code = $7), $8) \
                 ON CONFLICT (external_id) DO UPDATE SET name = excluded.name, kind = excluded.kind, \
                 microdao_id = COALESCE(excluded.microdao_id, agents.microdao_id), matrix_id = excluded.matrix_id, \
                 blueprint_id = COALESCE(excluded.blueprint_id, agents.blueprint_id)",
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
            .await
            .map(|_| ())?);
        }
        if let Some(default) = d.default_microdao
            && self.microdao_by_external_id(default).await?.is_none()
        {
            return Err(StoreError::Invalid(format!(
                "bridge.default_microdao `{default}` is neither declared in [[microdaos]] nor in the database"
            )));
        }
        Ok(())
    }
}
