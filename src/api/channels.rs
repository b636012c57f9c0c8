//! Who the caller is, its channels and sessions, and ephemeral actions in a channel (typing,
//! read markers) and its settings there.

use std::time::Duration;

use axum::{
    Json,
    extract::{Path, Query, State},
    http::header,
    response::{IntoResponse, Response},
};
use ruma::{OwnedEventId, OwnedRoomId};
use serde::Deserialize;
use serde_json::json;

use super::{
    ApiState, OPENAPI,
    auth::{Caller, Reader},
    extract::{Unread, uuid},
};
use crate::{
    model::{Respond, SessionStatus, ids::ChannelId},
    puppet::PuppetError,
    server::error::MatrixError,
};

/// Capability: read channels, sessions and messages.
pub(super) const READ: &str = "chat.message.read";
/// Capability: act in channels.
pub(super) const SEND: &str = "chat.message.send";

/// The channel, if it exists (404) and the caller's agent is an active member of it (403).
pub(super) async fn channel(
    state: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<(ChannelId, OwnedRoomId), MatrixError> {
    let id = ChannelId(uuid("channel_id", id)?);
    match state.store.channels().access(id, caller.agent.id).await? {
        None => Err(MatrixError::not_found("no such channel")),
        Some((_, false)) => Err(MatrixError::forbidden(
            "the agent is not an active member of this channel",
        )),
        Some((room, true)) => Ok((id, room)),
    }
}

/// A homeserver failure at the edge: 502.
pub(super) fn hs_error(e: PuppetError) -> MatrixError {
    tracing::warn!(error = %e, "homeserver call for the agent API failed");
    match e {
        PuppetError::Store(store) => store.into(),
        other => MatrixError::bad_gateway(format!("homeserver: {other}")),
    }
}

/// `GET /api/v1/openapi.json`.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `GET /api/v1/agent`.
pub async fn whoami(caller: Caller) -> Json<serde_json::Value> {
    Json(json!({
        "agent_id": caller.agent.id,
        "external_id": caller.agent.external_id,
        "matrix_id": caller.agent.user_id,
        "capabilities": caller.key.capabilities,
    }))
}

/// `GET /api/v1/channels`: an agent key's channels, or a user key's person's.
pub async fn channels(
    State(state): State<ApiState>,
    reader: Reader,
) -> Result<Json<serde_json::Value>, MatrixError> {
    reader.require(READ)?;
    let channels = match &reader {
        Reader::Agent(caller) => {
            state
                .store
                .channels()
                .agent_channels(caller.agent.id)
                .await?
        }
        Reader::User { user, .. } => state.store.channels().user_channels(*user).await?,
    };
    Ok(Json(json!({ "channels": channels })))
}

/// The channel a reader may read: 404 if there is none, 403 unless the agent (or the person)
/// is an active member of it.
pub(super) async fn readable(
    state: &ApiState,
    reader: &Reader,
    id: &str,
) -> Result<ChannelId, MatrixError> {
    match reader {
        Reader::Agent(caller) => Ok(channel(state, caller, id).await?.0),
        Reader::User { user, .. } => {
            let id = ChannelId(uuid("channel_id", id)?);
            match state.store.channels().user_access(id, *user).await? {
                None => Err(MatrixError::not_found("no such channel")),
                Some(false) => Err(MatrixError::forbidden(
                    "the key's person is not an active member of this channel",
                )),
                Some(true) => Ok(id),
            }
        }
    }
}

/// Query of `GET /api/v1/sessions`.
#[derive(Deserialize)]
pub struct SessionsQuery {
    status: Option<String>,
}

/// `GET /api/v1/sessions`.
pub async fn sessions(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<SessionsQuery>,
) -> Result<Json<serde_json::Value>, MatrixError> {
    caller.require(READ)?;
    let status = match &q.status {
        Some(s) => Some(SessionStatus::parse(s).ok_or_else(|| {
            MatrixError::invalid_param("`status` must be active, idle or closed")
        })?),
        None => None,
    };
    Ok(Json(
        json!({ "sessions": state.store.sessions().of_agent(caller.agent.id, status).await? }),
    ))
}

/// Body of `PUT …/typing`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypingBody {
    typing: bool,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// `PUT /api/v1/channels/{channel_id}/typing`.
pub async fn typing(
    State(state): State<ApiState>,
    caller: Caller,
    Path(channel_id): Path<String>,
    body: Unread<TypingBody>,
) -> Result<Json<serde_json::Value>, MatrixError> {
    caller.require(SEND)?;
    let (_, room) = channel(&state, &caller, &channel_id).await?;
    let b = body.read().await?.value;
    let timeout = Duration::from_millis(b.timeout_ms.unwrap_or(30_000).clamp(1_000, 120_000));
    state
        .puppets
        .intent(caller.agent.clone())
        .typing(&room, b.typing.then_some(timeout))
        .await
        .map_err(hs_error)?;
    Ok(Json(json!({})))
}

/// Body of `POST …/read-marker`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadMarkerBody {
    event_id: OwnedEventId,
}

/// `POST /api/v1/channels/{channel_id}/read-marker`.
pub async fn read_marker(
    State(state): State<ApiState>,
    caller: Caller,
    Path(channel_id): Path<String>,
    body: Unread<ReadMarkerBody>,
) -> Result<Json<serde_json::Value>, MatrixError> {
    caller.require(SEND)?;
    let (_, room) = channel(&state, &caller, &channel_id).await?;
    let body = body.read().await?;
    state
        .puppets
        .intent(caller.agent.clone())
        .read_receipt(&room, body.value.event_id)
        .await
        .map_err(hs_error)?;
    Ok(Json(json!({})))
}

/// Body of `PUT …/settings`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsBody {
    respond: String,
}

/// `PUT /api/v1/channels/{channel_id}/settings`: when the agent answers in this channel.
pub async fn settings(
    State(state): State<ApiState>,
    caller: Caller,
    Path(channel_id): Path<String>,
    body: Unread<SettingsBody>,
) -> Result<Json<serde_json::Value>, MatrixError> {
    caller.require("agent.settings.write")?;
    let (channel, _) = channel(&state, &caller, &channel_id).await?;
    let body = body.read().await?;
    let respond = Respond::parse(&body.value.respond)
        .ok_or_else(|| MatrixError::invalid_param("`respond` must be mentions, all or never"))?;
    state
        .store
        .runs()
        .set_respond(caller.agent.id, channel, respond, &caller.actor())
        .await?;
    Ok(Json(json!({ "respond": respond })))
}
