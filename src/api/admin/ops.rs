//! Operations of the admin API: putting agents into rooms and taking them out, `respond` per
//! agent and channel, agent keys, the listings (channels, members, sessions, runs, audit), a
//! channel's export (streamed, bounded memory) and the bridge's status.

use std::sync::Arc;

use axum::{
    Json,
    body::Body as HttpBody,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use ruma::OwnedRoomId;
use serde::Deserialize;
use serde_json::json;

use super::{Admin, Listing, Page};
use crate::{
    api::{
        ApiState,
        extract::{Body, uuid},
    },
    bridge::control,
    db::audit::AuditFilter,
    export, keys,
    model::{
        Agent, AuditOutcome, Respond, Ts,
        ids::{ChannelId, MemberId, RunId, SessionId},
    },
    server::error::MatrixError,
};

fn control_error(e: control::ControlError) -> MatrixError {
    use control::ControlError as E;
    match e {
        E::Disabled(_) => MatrixError::forbidden(e.to_string()),
        E::NotMirrored(_) => MatrixError::not_found(e.to_string()),
        E::Homeserver(_) | E::Puppet(_) => MatrixError::bad_gateway(e.to_string()),
        E::Store(s) => s.into(),
        E::NotFound(m) => MatrixError::not_found(m),
        E::InProgress(_) => MatrixError::unavailable(e.to_string()),
    }
}

fn agent(state: &ApiState, external_id: &str) -> Result<Arc<Agent>, MatrixError> {
    state
        .registry
        .all()
        .into_iter()
        .find(|a| a.external_id == external_id)
        .ok_or_else(|| MatrixError::not_found("no such agent (or it has no Matrix identity)"))
}

fn room(value: &str) -> Result<OwnedRoomId, MatrixError> {
    OwnedRoomId::try_from(value).map_err(|_| {
        MatrixError::invalid_param(format!(
            "`room_id` is not a Matrix room id: {}",
            value.escape_debug()
        ))
    })
}

fn after<T>(value: Option<&str>, wrap: impl Fn(uuid::Uuid) -> T) -> Result<Option<T>, MatrixError> {
    value.map(|v| uuid("after", v).map(&wrap)).transpose()
}

/// `GET /api/v1/admin/status`.
pub async fn status(State(state): State<ApiState>, _admin: Admin) -> Result<Response, MatrixError> {
    let status = state.control.status().await?;
    Ok(Json(status).into_response())
}

/// `POST /agents/{external_id}/rooms` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteBody {
    room_id: String,
}

/// `POST /api/v1/admin/agents/{external_id}/rooms`: the bot invites the agent, which joins.
pub async fn invite(
    State(state): State<ApiState>,
    admin: Admin,
    Path(external_id): Path<String>,
    body: Body<InviteBody>,
) -> Result<Response, MatrixError> {
    let room = room(&body.value.room_id)?;
    let agent = agent(&state, &external_id)?;
    state
        .control
        .invite_agent(&room, agent.clone(), &admin.actor())
        .await
        .map_err(control_error)?;
    Ok(Json(json!({ "room_id": room, "matrix_id": agent.user_id })).into_response())
}

/// `DELETE /api/v1/admin/agents/{external_id}/rooms/{room_id}`: the agent leaves.
pub async fn remove(
    State(state): State<ApiState>,
    admin: Admin,
    Path((external_id, room_id)): Path<(String, String)>,
) -> Result<Response, MatrixError> {
    let room = room(&room_id)?;
    let agent = agent(&state, &external_id)?;
    state
        .control
        .remove_agent(&room, agent, &admin.actor())
        .await
        .map_err(control_error)?;
    Ok(Json(json!({})).into_response())
}

/// `PUT /agents/{external_id}/channels/{channel_id}/respond` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondBody {
    respond: String,
}

/// `PUT /api/v1/admin/agents/{external_id}/channels/{channel_id}/respond`.
pub async fn respond(
    State(state): State<ApiState>,
    admin: Admin,
    Path((external_id, channel_id)): Path<(String, String)>,
    body: Body<RespondBody>,
) -> Result<Response, MatrixError> {
    let respond = Respond::parse(&body.value.respond).ok_or_else(|| {
        MatrixError::invalid_param("`respond` must be one of mentions, all, never")
    })?;
    let channel = ChannelId(uuid("channel_id", &channel_id)?);
    let agent = agent(&state, &external_id)?;
    if state
        .store
        .rooms()
        .room_of_channel(channel)
        .await?
        .is_none()
    {
        return Err(MatrixError::not_found("no such channel"));
    }
    state
        .store
        .runs()
        .set_respond(agent.id, channel, respond, &admin.actor())
        .await?;
    Ok(Json(json!({ "respond": respond })).into_response())
}

/// `POST /agents/{external_id}/keys` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyBody {
    name: String,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    bundles: Vec<String>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `POST /api/v1/admin/agents/{external_id}/keys`: the key is in the response, once.
pub async fn create_key(
    State(state): State<ApiState>,
    admin: Admin,
    Path(external_id): Path<String>,
    body: Body<KeyBody>,
) -> Result<Response, MatrixError> {
    let k = body.value;
    if k.name.trim().is_empty() || k.name.len() > 200 {
        return Err(MatrixError::invalid_param(
            "`name` must be 1 to 200 characters",
        ));
    }
    if k.capabilities.iter().any(|c| c == super::ADMIN) {
        return Err(MatrixError::invalid_param(
            "`capabilities`: agent keys cannot hold `bridge.admin`",
        ));
    }
    if state
        .store
        .catalog()
        .get_agent(&external_id)
        .await?
        .is_none()
    {
        return Err(MatrixError::not_found("no such agent"));
    }
    let (id, key) = keys::create(
        &state.store,
        &external_id,
        k.name.trim(),
        &k.capabilities,
        &k.bundles,
        k.expires_at.map(Ts),
        &admin.actor(),
    )
    .await
    .map_err(|e| match e {
        crate::db::StoreError::NotFound { what, key } => {
            MatrixError::invalid_param(format!("unknown {what} `{}`", key.escape_debug()))
        }
        crate::db::StoreError::Invalid(m) => MatrixError::invalid_param(m),
        other => other.into(),
    })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id, "key": key, "agent": external_id })),
    )
        .into_response())
}

/// `DELETE /api/v1/admin/keys/{key_id}`: revokes an agent key (by id or prefix).
pub async fn revoke_key(
    State(state): State<ApiState>,
    admin: Admin,
    Path(key_id): Path<String>,
) -> Result<Response, MatrixError> {
    if key_id.len() < 8 {
        return Err(MatrixError::invalid_param(
            "`key_id` must be a key id or a prefix of at least 8 characters",
        ));
    }
    match state.store.keys().revoke(&key_id, &admin.actor()).await? {
        0 => Err(MatrixError::not_found("no such active key")),
        n => Ok(Json(json!({ "revoked": n })).into_response()),
    }
}

/// `GET /channels` query.
#[derive(Debug, Deserialize)]
pub struct ChannelQuery {
    microdao: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/v1/admin/channels`.
pub async fn channels(
    State(state): State<ApiState>,
    _admin: Admin,
    Query(q): Query<ChannelQuery>,
) -> Result<Response, MatrixError> {
    let limit = Page {
        after: None,
        limit: q.limit,
    }
    .limit()?;
    let rows = state
        .store
        .listings()
        .channels(
            q.microdao.as_deref(),
            after(q.after.as_deref(), ChannelId)?,
            limit,
        )
        .await?;
    Ok(Json(Listing::of(rows, limit, |c| c.id.to_string())).into_response())
}

/// `GET /channels/{id}/members` query.
#[derive(Debug, Deserialize)]
pub struct MemberQuery {
    #[serde(default)]
    all: bool,
    after: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/v1/admin/channels/{channel_id}/members`.
pub async fn members(
    State(state): State<ApiState>,
    _admin: Admin,
    Path(channel_id): Path<String>,
    Query(q): Query<MemberQuery>,
) -> Result<Response, MatrixError> {
    let channel = ChannelId(uuid("channel_id", &channel_id)?);
    let limit = Page {
        after: None,
        limit: q.limit,
    }
    .limit()?;
    let rows = state
        .store
        .listings()
        .members(channel, q.all, after(q.after.as_deref(), MemberId)?, limit)
        .await?;
    Ok(Json(Listing::of(rows, limit, |m| m.id.to_string())).into_response())
}

/// `GET /sessions` and `GET /runs` query.
#[derive(Debug, Deserialize)]
pub struct ActivityQuery {
    agent: Option<String>,
    channel: Option<String>,
    status: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
}

impl ActivityQuery {
    /// The `channel` filter, validated.
    fn channel(&self) -> Result<Option<ChannelId>, MatrixError> {
        self.channel
            .as_deref()
            .map(|c| uuid("channel", c).map(ChannelId))
            .transpose()
    }
}

/// `GET /api/v1/admin/sessions`.
pub async fn sessions(
    State(state): State<ApiState>,
    _admin: Admin,
    Query(q): Query<ActivityQuery>,
) -> Result<Response, MatrixError> {
    let limit = Page {
        after: None,
        limit: q.limit,
    }
    .limit()?;
    if let Some(s) = &q.status
        && crate::model::SessionStatus::parse(s).is_none()
    {
        return Err(MatrixError::invalid_param(
            "`status` must be one of active, idle, closed",
        ));
    }
    let channel = q.channel()?;
    let rows = state
        .store
        .listings()
        .sessions(
            q.agent.as_deref(),
            channel,
            q.status.as_deref(),
            after(q.after.as_deref(), SessionId)?,
            limit,
        )
        .await?;
    Ok(Json(Listing::of(rows, limit, |s| s.id.to_string())).into_response())
}

/// `GET /api/v1/admin/runs`.
pub async fn runs(
    State(state): State<ApiState>,
    _admin: Admin,
    Query(q): Query<ActivityQuery>,
) -> Result<Response, MatrixError> {
    let limit = Page {
        after: None,
        limit: q.limit,
    }
    .limit()?;
    if let Some(s) = &q.status
        && crate::model::RunStatus::parse(s).is_none()
    {
        return Err(MatrixError::invalid_param(
            "`status` must be one of queued, running, completed, failed, cancelled",
        ));
    }
    let channel = q.channel()?;
    let rows = state
        .store
        .listings()
        .runs(
            q.agent.as_deref(),
            channel,
            q.status.as_deref(),
            after(q.after.as_deref(), RunId)?,
            limit,
        )
        .await?;
    Ok(Json(Listing::of(rows, limit, |r| r.id.to_string())).into_response())
}

/// `GET /audit` query.
#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    action: Option<String>,
    actor: Option<String>,
    outcome: Option<String>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
    before: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/v1/admin/audit`: newest first; `next` is the `before` of the next page.
pub async fn audit(
    State(state): State<ApiState>,
    _admin: Admin,
    Query(q): Query<AuditQuery>,
) -> Result<Response, MatrixError> {
    let limit = Page {
        after: None,
        limit: q.limit,
    }
    .limit()?;
    let outcome = q
        .outcome
        .as_deref()
        .map(|o| {
            AuditOutcome::parse(o)
                .ok_or_else(|| MatrixError::invalid_param("`outcome` must be allowed or denied"))
        })
        .transpose()?;
    let rows = state
        .store
        .audit()
        .list(&AuditFilter {
            action: q.action,
            actor: q.actor,
            outcome,
            since: q.since.map(Ts),
            until: q.until.map(Ts),
            before: q.before,
            limit,
        })
        .await?;
    Ok(Json(Listing::of(rows, limit, |r| r.id.clone())).into_response())
}

/// `GET /channels/{id}/export` query.
#[derive(Debug, Deserialize)]
pub struct ExportQuery {
    #[serde(default)]
    format: Option<String>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
}

/// `GET /api/v1/admin/channels/{channel_id}/export?format=jsonl|csv`: streamed through a
/// bounded pipe, so memory stays flat however long the channel's history is.
pub async fn export(
    State(state): State<ApiState>,
    admin: Admin,
    Path(channel_id): Path<String>,
    Query(q): Query<ExportQuery>,
) -> Result<Response, MatrixError> {
    let (format, mime) = match q.format.as_deref().unwrap_or("jsonl") {
        "jsonl" => (export::Format::Jsonl, "application/x-ndjson"),
        "csv" => (export::Format::Csv, "text/csv; charset=utf-8"),
        _ => return Err(MatrixError::invalid_param("`format` must be jsonl or csv")),
    };
    let channel = export::resolve(&state.store, &channel_id)
        .await
        .map_err(|e| match e {
            export::ExportError::UnknownChannel(_) => MatrixError::not_found("no such channel"),
            export::ExportError::Store(s) => s.into(),
            other => MatrixError::internal(other.to_string()),
        })?;
    state
        .store
        .audit()
        .record(&[admin.actor().did(
            "channel.exported",
            Some(&channel.to_string()),
            AuditOutcome::Allowed,
        )])
        .await?;
    let (writer, reader) = tokio::io::duplex(64 * 1024);
    let store = state.store.clone();
    let range = export::Range {
        since: q.since.map(Ts),
        until: q.until.map(Ts),
    };
    tokio::spawn(async move {
        // A client that goes away closes the pipe; the export then stops with an I/O error.
        if let Err(error) = export::write(&store, channel, format, range, writer).await {
            tracing::warn!(%error, %channel, "channel export over the admin API stopped");
        }
    });
    let body = HttpBody::from_stream(tokio_util::io::ReaderStream::new(reader));
    Ok(([(header::CONTENT_TYPE, mime)], body).into_response())
}
