//! Start-up upsert of the `[[microdaos]]`, `[[blueprints]]` and `[[agents]]` the config declares.
//! Only the fields the config declares are written: other columns belong to other services.

use sqlx::types::Json;

use super::{Store, StoreError, both, types::Ts};
use crate::{
    config::Config,
    ids::{AgentId, BlueprintId, MicrodaoId},
};

pub(super) async fn seed(store: &Store, config: &Config) -> Result<(), StoreError> {
    for m in &config.microdaos {
        both!(store, pool => sqlx::query(
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
    for b in &config.blueprints {
        both!(store, pool => sqlx::query(
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
    for a in &config.agents {
        let matrix_id = config.agent_user_id(a).ok_or_else(|| {
            StoreError::Seed(format!("agent `{}` has no valid Matrix id", a.external_id))
        })?;
        if let Some(m) = &a.microdao
            && store.microdao_by_external_id(m).await?.is_none()
        {
            return Err(StoreError::Seed(format!(
                "agent `{}` names microdao `{m}`, which is neither declared in [[microdaos]] nor in the database",
                a.external_id
            )));
        }
        both!(store, pool => sqlx::query(
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
    if let Some(d) = &config.bridge.default_microdao
        && store.microdao_by_external_id(d).await?.is_none()
    {
        return Err(StoreError::Seed(format!(
            "bridge.default_microdao `{d}` is neither declared in [[microdaos]] nor in the database"
        )));
    }
    Ok(())
}
