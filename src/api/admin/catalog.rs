//! MicroDAOs, blueprints and agents: PUT by external id (create or replace, idempotent), GET one
//! or a keyset page, DELETE. Bodies are validated field by field, and the error names the
//! field. A write reloads the agent registry at once, so the change takes effect before the
//! response (PostgreSQL also notifies every other bridge process through the table triggers).

use axum::{
    Json,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use ruma::UserId;
use serde::Deserialize;
use serde_json::json;

use super::{Admin, Listing, Page, tools};
use crate::{
    api::{ApiState, extract::Body},
    config::{NatsConfig, OpenAiConfig, WebhookConfig},
    db::admin::{AgentPut, BlueprintPut, Catalog},
    model::Respond,
    server::error::MatrixError,
};

/// The ERD's agent kinds.
pub const KINDS: [&str; 4] = ["system", "assistant", "node", "quest"];

fn created(created: bool, body: impl serde::Serialize) -> Response {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

/// 1 to `max` characters, none of them control characters.
fn text(field: &str, value: &str, max: usize) -> Result<(), MatrixError> {
    if value.trim().is_empty() || value.chars().count() > max || value.chars().any(char::is_control)
    {
        return Err(MatrixError::invalid_param(format!(
            "`{field}` must be 1 to {max} characters without control characters"
        )));
    }
    Ok(())
}

/// A code or localpart: 1 to 64 of `a-z 0-9 . _ = -`.
fn code(field: &str, value: &str) -> Result<(), MatrixError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(MatrixError::invalid_param(format!(
            "`{field}` must be 1 to 64 of a-z, 0-9, '.', '_', '=' and '-': {}",
            value.escape_debug()
        )))
    }
}

fn one_of(field: &str, value: Option<&str>, allowed: &[&str]) -> Result<(), MatrixError> {
    match value {
        Some(v) if !allowed.contains(&v) => Err(MatrixError::invalid_param(format!(
            "`{field}` must be one of {}",
            allowed.join(", ")
        ))),
        _ => Ok(()),
    }
}

async fn reload(state: &ApiState) -> Result<(), MatrixError> {
    state.registry.reload().await?;
    Ok(())
}

/// The blueprint agents get when none is named (seeded by the migrations and at start-up).
const DEFAULT_BLUEPRINT: &str = "echo";

/// `PUT /microdaos/{external_id}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MicrodaoBody {
    name: String,
    /// The owner's Matrix id (ERD: `owner_user_id`); a `users` row is made for it if needed.
    owner: Option<String>,
}

/// `PUT /api/v1/admin/microdaos/{external_id}`.
pub async fn put_microdao(
    State(state): State<ApiState>,
    admin: Admin,
    Path(external_id): Path<String>,
    body: Body<MicrodaoBody>,
) -> Result<Response, MatrixError> {
    text("external_id", &external_id, 200)?;
    text("name", &body.value.name, 255)?;
    let owner = body
        .value
        .owner
        .as_deref()
        .map(|o| {
            UserId::parse(o).map_err(|e| {
                MatrixError::invalid_param(format!("`owner` is not a Matrix user id: {e}"))
            })
        })
        .transpose()?;
    let (row, new) = state
        .store
        .catalog()
        .put_microdao(
            &external_id,
            body.value.name.trim(),
            owner.as_deref(),
            &admin.actor(),
        )
        .await?;
    reload(&state).await?;
    Ok(created(new, row))
}

/// `GET /api/v1/admin/microdaos/{external_id}`.
pub async fn get_microdao(
    State(state): State<ApiState>,
    _admin: Admin,
    Path(external_id): Path<String>,
) -> Result<Response, MatrixError> {
    match state.store.catalog().get_microdao(&external_id).await? {
        Some(row) => Ok(Json(row).into_response()),
        None => Err(MatrixError::not_found("no such microDAO")),
    }
}

/// `GET /api/v1/admin/microdaos`.
pub async fn list_microdaos(
    State(state): State<ApiState>,
    _admin: Admin,
    Query(page): Query<Page>,
) -> Result<Response, MatrixError> {
    let limit = page.limit()?;
    let rows = state
        .store
        .catalog()
        .list_microdaos(page.after.as_deref(), limit)
        .await?;
    Ok(Json(Listing::of(rows, limit, |m| m.external_id.clone())).into_response())
}

/// `DELETE /api/v1/admin/microdaos/{external_id}`: refused (409) while channels or agents
/// belong to it, since deleting it would delete its channels' history.
pub async fn delete_microdao(
    State(state): State<ApiState>,
    admin: Admin,
    Path(external_id): Path<String>,
) -> Result<Response, MatrixError> {
    match state.store.catalog().microdao_usage(&external_id).await? {
        None => return Err(MatrixError::not_found("no such microDAO")),
        Some((channels, agents)) if channels > 0 || agents > 0 => {
            return Err(MatrixError::new(
                StatusCode::CONFLICT,
                ruma::api::error::ErrorKind::Forbidden,
                format!(
                    "the microDAO still has {channels} channels and {agents} agents; move or delete them first"
                ),
            ));
        }
        Some(_) => {}
    }
    state
        .store
        .catalog()
        .delete(Catalog::Microdao, &external_id, &admin.actor())
        .await?;
    Ok(Json(json!({})).into_response())
}

/// `PUT /blueprints/{code}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlueprintBody {
    description: Option<String>,
    model: Option<String>,
    #[serde(default = "echo")]
    runtime: String,
    #[serde(default)]
    settings: Option<serde_json::Value>,
    instructions: Option<String>,
    context_events: Option<i32>,
    context_chars: Option<i32>,
    failure_notice: Option<bool>,
    message_type: Option<String>,
    /// Plain JSON, checked by [`tools::blueprint_tools`] so a refusal names the tool's field.
    tools: Option<serde_json::Value>,
    show_tools: Option<String>,
    max_tool_rounds: Option<i64>,
}

fn echo() -> String {
    "echo".into()
}

/// Runtime settings are checked as the registry will read them, and may name secrets but never
/// hold them.
fn check_settings(
    state: &ApiState,
    runtime: &str,
    settings: &serde_json::Value,
) -> Result<(), MatrixError> {
    if !settings.is_object() {
        return Err(MatrixError::invalid_param("`settings` must be an object"));
    }
    for secret in ["api_key", "secret"] {
        if settings.get(secret).is_some() {
            return Err(MatrixError::invalid_param(format!(
                "`settings.{secret}`: secrets are never stored in the database; name one with \
                 `{secret}_ref` (a secret in the bridge's [secrets]) or `api_key_env`"
            )));
        }
    }
    let reference = match runtime {
        "echo" => None,
        "openai" => {
            serde_json::from_value::<OpenAiConfig>(settings.clone())
                .map_err(|e| MatrixError::invalid_param(format!("`settings` (openai): {e}")))?
                .api_key_ref
        }
        "webhook" => {
            serde_json::from_value::<WebhookConfig>(settings.clone())
                .map_err(|e| MatrixError::invalid_param(format!("`settings` (webhook): {e}")))?
                .secret_ref
        }
        "nats" => {
            serde_json::from_value::<NatsConfig>(settings.clone())
                .map_err(|e| MatrixError::invalid_param(format!("`settings` (nats): {e}")))?;
            None
        }
        _ => {
            return Err(MatrixError::invalid_param(
                "`runtime` must be one of echo, openai, webhook, nats",
            ));
        }
    };
    if let Some(name) = reference
        && !state.registry.has_secret(&name)
    {
        return Err(MatrixError::invalid_param(format!(
            "`settings`: the secret `{}` is not defined in the bridge's [secrets]",
            name.escape_debug()
        )));
    }
    Ok(())
}

/// `PUT /api/v1/admin/blueprints/{code}`.
pub async fn put_blueprint(
    State(state): State<ApiState>,
    admin: Admin,
    Path(blueprint): Path<String>,
    body: Body<BlueprintBody>,
) -> Result<Response, MatrixError> {
    code("code", &blueprint)?;
    let b = body.value;
    let settings = b.settings.unwrap_or_else(|| json!({}));
    check_settings(&state, &b.runtime, &settings)?;
    if let Some(n) = b.context_events
        && !(0..=200).contains(&n)
    {
        return Err(MatrixError::invalid_param(
            "`context_events` must be 0 to 200",
        ));
    }
    if let Some(n) = b.context_chars
        && !(0..=1_000_000).contains(&n)
    {
        return Err(MatrixError::invalid_param(
            "`context_chars` must be 0 to 1000000",
        ));
    }
    one_of(
        "message_type",
        b.message_type.as_deref(),
        &["notice", "text"],
    )?;
    let show_tools = tools::show_tools(b.show_tools.as_deref())?;
    let max_tool_rounds = tools::max_rounds(b.max_tool_rounds)?;
    let tool_specs = tools::blueprint_tools(&state, b.tools)?;
    let put = BlueprintPut {
        code: blueprint,
        description: b.description,
        model: b.model,
        runtime: b.runtime,
        settings,
        system_instructions: b.instructions,
        context_events: b.context_events,
        context_chars: b.context_chars,
        failure_notice: b.failure_notice,
        message_type: b.message_type,
        tools: tool_specs,
        show_tools,
        max_tool_rounds,
    };
    let (row, new) = state
        .store
        .catalog()
        .put_blueprint(&put, &admin.actor())
        .await?;
    reload(&state).await?;
    Ok(created(new, row))
}

/// `GET /api/v1/admin/blueprints/{code}`.
pub async fn get_blueprint(
    State(state): State<ApiState>,
    _admin: Admin,
    Path(blueprint): Path<String>,
) -> Result<Response, MatrixError> {
    match state.store.catalog().get_blueprint(&blueprint).await? {
        Some(row) => Ok(Json(row).into_response()),
        None => Err(MatrixError::not_found("no such blueprint")),
    }
}

/// `GET /api/v1/admin/blueprints`.
pub async fn list_blueprints(
    State(state): State<ApiState>,
    _admin: Admin,
    Query(page): Query<Page>,
) -> Result<Response, MatrixError> {
    let limit = page.limit()?;
    let rows = state
        .store
        .catalog()
        .list_blueprints(page.after.as_deref(), limit)
        .await?;
    Ok(Json(Listing::of(rows, limit, |b| b.code.clone())).into_response())
}

/// `DELETE /api/v1/admin/blueprints/{code}`: its agents keep existing, without a blueprint
/// (they answer with `echo` until given another).
pub async fn delete_blueprint(
    State(state): State<ApiState>,
    admin: Admin,
    Path(blueprint): Path<String>,
) -> Result<Response, MatrixError> {
    // ERD: agents.blueprint_id is NOT NULL, so a blueprint in use cannot go (the database
    // refuses it too); `echo` is what agents named without one get.
    let conflict = |why: String| {
        MatrixError::new(
            StatusCode::CONFLICT,
            ruma::api::error::ErrorKind::Forbidden,
            why,
        )
    };
    if blueprint == DEFAULT_BLUEPRINT {
        return Err(conflict(format!(
            "`{DEFAULT_BLUEPRINT}` is the default blueprint of agents named without one"
        )));
    }
    match state.store.catalog().blueprint_usage(&blueprint).await? {
        None => return Err(MatrixError::not_found("no such blueprint")),
        Some(n) if n > 0 => {
            return Err(conflict(format!(
                "{n} agents use this blueprint; give them another one first"
            )));
        }
        Some(_) => {}
    }
    if !state
        .store
        .catalog()
        .delete(Catalog::Blueprint, &blueprint, &admin.actor())
        .await?
    {
        return Err(MatrixError::not_found("no such blueprint"));
    }
    reload(&state).await?;
    Ok(Json(json!({})).into_response())
}

/// `PUT /agents/{external_id}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentBody {
    name: String,
    #[serde(default = "assistant")]
    kind: String,
    microdao: Option<String>,
    blueprint: Option<String>,
    #[serde(default = "yes")]
    active: bool,
    instructions: Option<String>,
    model: Option<String>,
    idle_after_seconds: Option<i32>,
    respond: Option<String>,
    message_type: Option<String>,
    avatar: Option<String>,
    /// Plain JSON, checked by [`tools::agent_tools`] so a refusal names the entry.
    tools: Option<serde_json::Value>,
}

fn assistant() -> String {
    "assistant".into()
}

fn yes() -> bool {
    true
}

/// `PUT /api/v1/admin/agents/{external_id}`.
pub async fn put_agent(
    State(state): State<ApiState>,
    admin: Admin,
    Path(external_id): Path<String>,
    body: Body<AgentBody>,
) -> Result<Response, MatrixError> {
    let Some(local) = external_id.strip_prefix("agent:") else {
        return Err(MatrixError::invalid_param(
            "`external_id` must look like `agent:<name>`",
        ));
    };
    code("external_id", local)?;
    if state.registry.namespace().puppet(local).is_none() {
        return Err(MatrixError::invalid_param(
            "`external_id` does not make a valid Matrix id in the bridge's namespace",
        ));
    }
    let a = body.value;
    text("name", &a.name, 255)?;
    let narrowing = tools::agent_tools(a.tools)?;
    one_of("kind", Some(&a.kind), &KINDS)?;
    one_of(
        "message_type",
        a.message_type.as_deref(),
        &["notice", "text"],
    )?;
    if let Some(r) = &a.respond
        && Respond::parse(r).is_none()
    {
        return Err(MatrixError::invalid_param(
            "`respond` must be one of mentions, all, never",
        ));
    }
    if let Some(s) = a.idle_after_seconds
        && !(1..=30 * 86_400).contains(&s)
    {
        return Err(MatrixError::invalid_param(
            "`idle_after_seconds` must be 1 to 2592000",
        ));
    }
    if let Some(m) = &a.microdao
        && state
            .store
            .rooms()
            .microdao_by_external_id(m)
            .await?
            .is_none()
    {
        return Err(MatrixError::invalid_param(format!(
            "`microdao`: there is no microDAO `{}`",
            m.escape_debug()
        )));
    }
    if let Some(b) = &a.blueprint
        && state.store.catalog().get_blueprint(b).await?.is_none()
    {
        return Err(MatrixError::invalid_param(format!(
            "`blueprint`: there is no blueprint `{}`",
            b.escape_debug()
        )));
    }
    let put = AgentPut {
        external_id,
        name: a.name.trim().to_owned(),
        kind: a.kind,
        microdao: a.microdao,
        blueprint: a.blueprint,
        active: a.active,
        instructions: a.instructions,
        model: a.model,
        idle_after_seconds: a.idle_after_seconds,
        respond: a.respond,
        message_type: a.message_type,
        avatar: a.avatar,
        tools: narrowing,
    };
    let new = state
        .store
        .catalog()
        .put_agent(&put, &admin.actor())
        .await?;
    reload(&state).await?;
    // Read back after the reload, which fills in the derived Matrix id.
    let row = state
        .store
        .catalog()
        .get_agent(&put.external_id)
        .await?
        .ok_or_else(|| MatrixError::not_found("the agent was deleted meanwhile"))?;
    Ok(created(new, row))
}

/// `GET /api/v1/admin/agents/{external_id}`.
pub async fn get_agent(
    State(state): State<ApiState>,
    _admin: Admin,
    Path(external_id): Path<String>,
) -> Result<Response, MatrixError> {
    match state.store.catalog().get_agent(&external_id).await? {
        Some(row) => Ok(Json(row).into_response()),
        None => Err(MatrixError::not_found("no such agent")),
    }
}

/// `GET /api/v1/admin/agents`.
pub async fn list_agents(
    State(state): State<ApiState>,
    _admin: Admin,
    Query(page): Query<Page>,
) -> Result<Response, MatrixError> {
    let limit = page.limit()?;
    let rows = state
        .store
        .catalog()
        .list_agents(page.after.as_deref(), limit)
        .await?;
    Ok(Json(Listing::of(rows, limit, |a| a.external_id.clone())).into_response())
}

/// `DELETE /api/v1/admin/agents/{external_id}`: the agent leaves its rooms (the reconciler
/// acts on the reload) and its keys, sessions and runs go with it.
pub async fn delete_agent(
    State(state): State<ApiState>,
    admin: Admin,
    Path(external_id): Path<String>,
) -> Result<Response, MatrixError> {
    if !state
        .store
        .catalog()
        .delete(Catalog::Agent, &external_id, &admin.actor())
        .await?
    {
        return Err(MatrixError::not_found("no such agent"));
    }
    reload(&state).await?;
    Ok(Json(json!({})).into_response())
}
