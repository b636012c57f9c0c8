//! Handlers of the agent API.

use std::time::Duration;

use axum::{
    Json,
    extract::{Path, Query, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::Deserialize;
use serde_json::json;

use super::{ApiState, OPENAPI, auth::Caller};
use crate::{
    appservice::error::ApiError,
    config::MessageKind,
    db::{StoredAgent, agents::OutboxItem, runs::RunEnd, types::Ts},
    ids::{ChannelId, MessageId, OutboxId, RunId},
    mirror::trigger::Respond,
    puppet::content::{self, Outgoing},
};

const READ: &str = "chat.message.read";
const SEND: &str = "chat.message.send";

/// JSON bodies: syntax errors are `M_NOT_JSON`, shape errors `M_BAD_JSON` naming the field.
fn body<T>(json: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    match json {
        Ok(Json(v)) => Ok(v),
        Err(JsonRejection::JsonDataError(e)) => Err(ApiError::bad_json(e.body_text())),
        Err(e) => Err(ApiError::not_json(e.body_text())),
    }
}

fn parse_uuid(name: &str, value: &str) -> Result<uuid::Uuid, ApiError> {
    value
        .parse()
        .map_err(|_| ApiError::invalid_param(format!("`{name}` is not a UUID: {value}")))
}

fn parse_event_id(name: &str, value: &str) -> Result<OwnedEventId, ApiError> {
    OwnedEventId::try_from(value)
        .map_err(|_| ApiError::invalid_param(format!("`{name}` is not a Matrix event id: {value}")))
}

/// The caller's agent as the mirror knows it (agents added since start-up are reloaded).
async fn agent(state: &ApiState, caller: &Caller) -> Result<StoredAgent, ApiError> {
    if let Some(a) = state.mirror.agent(&caller.0.agent_matrix_id) {
        return Ok(a);
    }
    state.mirror.reload_agents().await?;
    state
        .mirror
        .agent(&caller.0.agent_matrix_id)
        .ok_or_else(|| ApiError::forbidden("this key's agent has no Matrix identity"))
}

/// The channel, if it exists (404) and the agent is an active member of it (403).
async fn channel(
    state: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<(ChannelId, OwnedRoomId), ApiError> {
    let id = ChannelId(parse_uuid("channel_id", id)?);
    match state.store.channel_access(id, caller.0.agent_id).await? {
        None => Err(ApiError::not_found("no such channel")),
        Some((_, false)) => Err(ApiError::forbidden(
            "the agent is not an active member of this channel",
        )),
        Some((room, true)) => Ok((
            id,
            OwnedRoomId::try_from(room).map_err(|e| ApiError::internal(e.to_string()))?,
        )),
    }
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

pub async fn whoami(caller: Caller) -> Json<serde_json::Value> {
    Json(json!({
        "agent_id": caller.0.agent_id,
        "external_id": caller.0.agent_external_id,
        "matrix_id": caller.0.agent_matrix_id,
        "capabilities": caller.0.capabilities,
    }))
}

pub async fn channels(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(READ)?;
    Ok(Json(
        json!({ "channels": state.store.agent_channels(caller.0.agent_id).await? }),
    ))
}

#[derive(Deserialize)]
pub struct SessionsQuery {
    status: Option<String>,
}

pub async fn sessions(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<SessionsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(READ)?;
    if let Some(s) = &q.status
        && !["active", "idle", "closed"].contains(&s.as_str())
    {
        return Err(ApiError::invalid_param(
            "`status` must be active, idle or closed",
        ));
    }
    Ok(Json(
        json!({ "sessions": state.store.agent_sessions(caller.0.agent_id, q.status.as_deref()).await? }),
    ))
}

#[derive(Deserialize)]
pub struct MessagesQuery {
    limit: Option<i64>,
    before: Option<String>,
}

/// Cursor of a message: `{created_at millis}.{message id}` (keyset pagination, stable under
/// concurrent inserts).
fn cursor(created_at: Ts, id: MessageId) -> String {
    format!("{}.{}", created_at.0.timestamp_millis(), id.0)
}

fn parse_cursor(s: &str) -> Result<(Ts, MessageId), ApiError> {
    let bad = || ApiError::invalid_param("`before` is not a cursor returned by this API");
    let (ms, id) = s.split_once('.').ok_or_else(bad)?;
    Ok((
        Ts::from_millis(ms.parse().map_err(|_| bad())?),
        MessageId(id.parse().map_err(|_| bad())?),
    ))
}

pub async fn messages(
    State(state): State<ApiState>,
    caller: Caller,
    Path(channel_id): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(READ)?;
    let (channel, _) = channel(&state, &caller, &channel_id).await?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid_param("`limit` must be between 1 and 200"));
    }
    let before = q.before.as_deref().map(parse_cursor).transpose()?;
    let page = state.store.messages_page(channel, before, limit).await?;
    let next = (page.len() as i64 == limit)
        .then(|| page.last().map(|m| cursor(m.created_at, m.id)))
        .flatten();
    Ok(Json(json!({ "messages": page, "next_cursor": next })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    text: String,
    #[serde(default = "yes")]
    markdown: bool,
    #[serde(default)]
    msgtype: Option<MessageKind>,
    #[serde(default)]
    reply_to: Option<OwnedEventId>,
    #[serde(default)]
    thread_root: Option<OwnedEventId>,
    #[serde(default)]
    mentions: Vec<OwnedUserId>,
    /// Answers a deferred run (a webhook runtime that replied 202): the run completes with
    /// this message as its reply.
    #[serde(default)]
    run_id: Option<uuid::Uuid>,
}

fn yes() -> bool {
    true
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| ApiError::invalid_param("`Idempotency-Key` must be ASCII"))?;
            if v.is_empty() || v.len() > 200 {
                return Err(ApiError::invalid_param(
                    "`Idempotency-Key` must be 1 to 200 characters",
                ));
            }
            Ok(Some(v.to_owned()))
        }
    }
}

/// Answers with the item's outcome: 200 with the event id once sent, 202 while the homeserver
/// has not accepted it yet (it stays queued), 502 when it failed for good.
fn outcome(item: &OutboxItem) -> Response {
    match item.status.as_str() {
        "sent" => (
            StatusCode::OK,
            Json(json!({ "event_id": item.event_id, "outbox_id": item.id, "status": "sent" })),
        )
            .into_response(),
        "failed" => (
            StatusCode::BAD_GATEWAY,
            Json(json!({
                "errcode": "M_UNKNOWN",
                "error": format!("the homeserver refused it: {}", item.error.as_deref().unwrap_or("unknown error")),
                "outbox_id": item.id,
                "status": "failed",
            })),
        )
            .into_response(),
        _ => (
            StatusCode::ACCEPTED,
            Json(json!({ "outbox_id": item.id, "status": "pending", "last_error": item.error })),
        )
            .into_response(),
    }
}

async fn queue_and_wait(
    state: &ApiState,
    agent: &StoredAgent,
    room: &OwnedRoomId,
    event_type: &str,
    content: serde_json::Value,
    redacts: Option<String>,
    key: Option<String>,
) -> Result<Response, ApiError> {
    let (item, _existing) = state
        .puppets
        .enqueue(agent, room, event_type, content, redacts, key)
        .await?;
    let item = state
        .puppets
        .wait(item.id, state.config.api.send_wait)
        .await?;
    Ok(outcome(&item))
}

pub async fn send(
    State(state): State<ApiState>,
    caller: Caller,
    Path(channel_id): Path<String>,
    headers: HeaderMap,
    json: Result<Json<SendBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    caller.require(SEND)?;
    let b = body(json)?;
    if b.text.trim().is_empty() {
        return Err(ApiError::invalid_param("`text` must not be empty"));
    }
    let (channel_id, room) = channel(&state, &caller, &channel_id).await?;
    let agent = agent(&state, &caller).await?;
    let run = match b.run_id {
        Some(id) => {
            caller.require("agent.run.invoke")?;
            match state.store.get_run(RunId(id)).await? {
                Some(r)
                    if r.agent == caller.0.agent_external_id
                        && r.channel_id == Some(channel_id) =>
                {
                    if r.status != "running" {
                        return Err(ApiError::invalid_param(format!(
                            "run {id} is {}, not running",
                            r.status
                        )));
                    }
                    Some(RunId(id))
                }
                _ => {
                    return Err(ApiError::not_found(
                        "no such run of this agent in this channel",
                    ));
                }
            }
        }
        None => None,
    };
    let text = b.text.clone();
    let puppet =
        ruma::UserId::parse(&agent.matrix_id).map_err(|e| ApiError::internal(e.to_string()))?;
    let content = content::message(&Outgoing {
        body: b.text,
        markdown: b.markdown,
        kind: b
            .msgtype
            .unwrap_or_else(|| state.config.agent_message_kind(&puppet)),
        reply_to: b.reply_to,
        thread_root: b.thread_root,
        mentions: b.mentions,
    });
    let (item, _existing) = state
        .puppets
        .enqueue(
            &agent,
            &room,
            "m.room.message",
            content,
            None,
            idempotency_key(&headers)?,
        )
        .await?;
    let item = state
        .puppets
        .wait(item.id, state.config.api.send_wait)
        .await?;
    if let Some(run) = run {
        let end = match (item.status.as_str(), &item.event_id) {
            ("sent", Some(event)) => RunEnd {
                status: "completed",
                output: Some(json!({ "text": text })),
                reply_event_id: Some(event.clone()),
                ..Default::default()
            },
            ("failed", _) => RunEnd {
                status: "failed",
                error: item.error.clone(),
                ..Default::default()
            },
            // Queued: the answer is on its way; the run is done from the runtime's side.
            _ => RunEnd {
                status: "completed",
                output: Some(json!({ "text": text, "outbox_id": item.id })),
                ..Default::default()
            },
        };
        state.store.finish_run(run, &end).await?;
    }
    Ok(outcome(&item))
}

#[derive(Deserialize)]
pub struct RunsQuery {
    channel_id: Option<uuid::Uuid>,
    status: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/v1/runs`: the agent's runs, newest first.
pub async fn runs(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<RunsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(READ)?;
    if let Some(s) = &q.status
        && !["queued", "running", "completed", "failed", "cancelled"].contains(&s.as_str())
    {
        return Err(ApiError::invalid_param(
            "`status` must be queued, running, completed, failed or cancelled",
        ));
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid_param("`limit` must be between 1 and 200"));
    }
    let runs = state
        .store
        .list_runs(
            caller.0.agent_id,
            q.channel_id.map(ChannelId),
            q.status.as_deref(),
            limit,
        )
        .await?;
    Ok(Json(json!({ "runs": runs })))
}

/// `GET /api/v1/runs/{run_id}`.
pub async fn run(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(READ)?;
    let id = RunId(parse_uuid("run_id", &id)?);
    match state.store.get_run(id).await? {
        Some(r) if r.agent == caller.0.agent_external_id => {
            Ok(Json(serde_json::to_value(r).expect("rows serialize")))
        }
        _ => Err(ApiError::not_found("no such run of this agent")),
    }
}

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
    json: Result<Json<SettingsBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require("agent.settings.write")?;
    let b = body(json)?;
    if Respond::parse(&b.respond).is_none() {
        return Err(ApiError::invalid_param(
            "`respond` must be mentions, all or never",
        ));
    }
    let (channel, _) = channel(&state, &caller, &channel_id).await?;
    state
        .store
        .set_respond(caller.0.agent_id, channel, &b.respond)
        .await?;
    Ok(Json(json!({ "respond": b.respond })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditBody {
    text: String,
    #[serde(default = "yes")]
    markdown: bool,
    #[serde(default)]
    msgtype: Option<MessageKind>,
    #[serde(default)]
    mentions: Vec<OwnedUserId>,
}

/// The target must be a message of this channel sent by this agent.
async fn own_message(
    state: &ApiState,
    caller: &Caller,
    channel: ChannelId,
    event_id: &str,
) -> Result<OwnedEventId, ApiError> {
    let target = parse_event_id("event_id", event_id)?;
    match state.store.message_agent(channel, target.as_str()).await? {
        None => Err(ApiError::not_found("no such message in this channel")),
        Some(Some(a)) if a == caller.0.agent_id => Ok(target),
        Some(_) => Err(ApiError::forbidden(
            "an agent may change only its own messages",
        )),
    }
}

pub async fn edit(
    State(state): State<ApiState>,
    caller: Caller,
    Path((channel_id, event_id)): Path<(String, String)>,
    headers: HeaderMap,
    json: Result<Json<EditBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    caller.require(SEND)?;
    let b = body(json)?;
    if b.text.trim().is_empty() {
        return Err(ApiError::invalid_param("`text` must not be empty"));
    }
    let (channel, room) = channel(&state, &caller, &channel_id).await?;
    let target = own_message(&state, &caller, channel, &event_id).await?;
    let agent = agent(&state, &caller).await?;
    let puppet =
        ruma::UserId::parse(&agent.matrix_id).map_err(|e| ApiError::internal(e.to_string()))?;
    let kind = b
        .msgtype
        .unwrap_or_else(|| state.config.agent_message_kind(&puppet));
    let content = content::edit(target, &b.text, b.markdown, kind, b.mentions);
    queue_and_wait(
        &state,
        &agent,
        &room,
        "m.room.message",
        content,
        None,
        idempotency_key(&headers)?,
    )
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RedactBody {
    #[serde(default)]
    reason: Option<String>,
}

pub async fn redact(
    State(state): State<ApiState>,
    caller: Caller,
    Path((channel_id, event_id)): Path<(String, String)>,
    headers: HeaderMap,
    json: Option<Json<RedactBody>>,
) -> Result<Response, ApiError> {
    caller.require(SEND)?;
    let b = json.map(|j| j.0).unwrap_or_default();
    let (channel, room) = channel(&state, &caller, &channel_id).await?;
    let target = own_message(&state, &caller, channel, &event_id).await?;
    let agent = agent(&state, &caller).await?;
    let content = json!({ "reason": b.reason });
    queue_and_wait(
        &state,
        &agent,
        &room,
        "m.room.redaction",
        content,
        Some(target.to_string()),
        idempotency_key(&headers)?,
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactBody {
    key: String,
}

pub async fn react(
    State(state): State<ApiState>,
    caller: Caller,
    Path((channel_id, event_id)): Path<(String, String)>,
    headers: HeaderMap,
    json: Result<Json<ReactBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    caller.require(SEND)?;
    let b = body(json)?;
    if b.key.is_empty() || b.key.chars().count() > 64 {
        return Err(ApiError::invalid_param("`key` must be 1 to 64 characters"));
    }
    let (channel, room) = channel(&state, &caller, &channel_id).await?;
    let target = parse_event_id("event_id", &event_id)?;
    if state
        .store
        .message_agent(channel, target.as_str())
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("no such message in this channel"));
    }
    let agent = agent(&state, &caller).await?;
    let content = content::reaction(target, &b.key);
    queue_and_wait(
        &state,
        &agent,
        &room,
        "m.reaction",
        content,
        None,
        idempotency_key(&headers)?,
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypingBody {
    typing: bool,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

pub async fn typing(
    State(state): State<ApiState>,
    caller: Caller,
    Path(channel_id): Path<String>,
    json: Result<Json<TypingBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(SEND)?;
    let b = body(json)?;
    let timeout = Duration::from_millis(b.timeout_ms.unwrap_or(30_000).clamp(1_000, 120_000));
    let (room, user) = puppet_in(&state, &caller, &channel_id).await?;
    state
        .puppets
        .hs()
        .typing(&room, &user, b.typing.then_some(timeout))
        .await
        .map_err(|e| hs_error(e.into()))?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadMarkerBody {
    event_id: OwnedEventId,
}

pub async fn read_marker(
    State(state): State<ApiState>,
    caller: Caller,
    Path(channel_id): Path<String>,
    json: Result<Json<ReadMarkerBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(SEND)?;
    let b = body(json)?;
    let (room, user) = puppet_in(&state, &caller, &channel_id).await?;
    state
        .puppets
        .hs()
        .read_receipt(&room, &user, b.event_id)
        .await
        .map_err(|e| hs_error(e.into()))?;
    Ok(Json(json!({})))
}

pub async fn outbox(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(SEND)?;
    let id = OutboxId(parse_uuid("outbox_id", &id)?);
    match state.store.outbox_get(id).await? {
        Some(item) if item.agent_id == caller.0.agent_id => Ok(outcome(&item)),
        _ => Err(ApiError::not_found("no such queued send")),
    }
}

/// The channel's room and the agent's puppet, registered and joined there: ephemeral actions
/// (typing, receipts) before the join are silently lost.
async fn puppet_in(
    state: &ApiState,
    caller: &Caller,
    channel_id: &str,
) -> Result<(OwnedRoomId, ruma::OwnedUserId), ApiError> {
    let (_, room) = channel(state, caller, channel_id).await?;
    let agent = agent(state, caller).await?;
    let user = state.puppets.ensure_ready(&agent).await.map_err(hs_error)?;
    state
        .puppets
        .ensure_joined(&room, &agent, &user)
        .await
        .map_err(hs_error)?;
    Ok((room, user))
}

fn hs_error(e: crate::puppet::PuppetError) -> ApiError {
    tracing::warn!(error = %e, "homeserver call for the agent API failed");
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        ruma::api::error::ErrorKind::Unknown,
        format!("homeserver: {e}"),
    )
}
