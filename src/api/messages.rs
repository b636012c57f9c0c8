//! Reading a channel's messages, and sending, editing, redacting and reacting as the agent.
//! Every send goes through the durable outbox; the answer waits up to `api.send_wait` for the
//! homeserver (200 with the event id, 202 while queued, 502 when refused for good). An
//! `Idempotency-Key` returns the first request's outcome for the same request and 422 for a
//! different one.

use axum::{
    Json,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use ruma::{OwnedEventId, OwnedUserId, RoomId};
use serde::Deserialize;
use serde_json::json;

use super::{
    ApiState,
    auth::{Caller, Reader},
    channels::{READ, SEND, channel},
    extract::{Unread, event_id, idempotency_key, uuid},
};
use crate::{
    config::MessageKind,
    db::{
        outbox::{Enqueued, OutboxItem},
        runs::RunEnd,
    },
    model::{
        OutboxStatus, RunStatus, Ts,
        ids::{ChannelId, MessageId, OutboxId, RunId},
    },
    puppet::{
        Send,
        content::{self, Content, Outgoing},
    },
    server::error::MatrixError,
};

/// Query of `GET …/messages`.
#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
    before: Option<String>,
}

/// Cursor of a message: `{created_at millis}.{message id}` (keyset pagination, stable under
/// concurrent inserts).
fn cursor(created_at: Ts, id: MessageId) -> String {
    format!("{}.{}", created_at.millis(), id.0)
}

fn parse_cursor(s: &str) -> Result<(Ts, MessageId), MatrixError> {
    let bad = || MatrixError::invalid_param("`before` is not a cursor returned by this API");
    let (ms, id) = s.split_once('.').ok_or_else(bad)?;
    Ok((
        Ts::from_millis(ms.parse().map_err(|_| bad())?),
        MessageId(id.parse().map_err(|_| bad())?),
    ))
}

/// `GET /api/v1/channels/{channel_id}/messages`: newest first, each with its parts (media and
/// caption), with a cursor to older ones.
pub async fn list(
    State(state): State<ApiState>,
    reader: Reader,
    Path(channel_id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, MatrixError> {
    reader.require(READ)?;
    let channel = super::channels::readable(&state, &reader, &channel_id).await?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(MatrixError::invalid_param(
            "`limit` must be between 1 and 200",
        ));
    }
    let before = q.before.as_deref().map(parse_cursor).transpose()?;
    let page = state
        .store
        .channels()
        .messages_page(channel, before, limit)
        .await?;
    let next = (page.len() as i64 == limit)
        .then(|| page.last().map(|m| cursor(m.created_at, m.id)))
        .flatten();
    Ok(Json(json!({ "messages": page, "next_cursor": next })))
}

/// The item's outcome: 200 with the event id once sent, 202 while the homeserver has not
/// accepted it yet (it stays queued), 502 when it failed for good.
pub(super) fn outcome(item: &OutboxItem) -> Response {
    match item.status {
        OutboxStatus::Sent => (
            StatusCode::OK,
            Json(json!({ "event_id": item.event_id, "outbox_id": item.id, "status": "sent" })),
        )
            .into_response(),
        OutboxStatus::Failed => (
            StatusCode::BAD_GATEWAY,
            Json(json!({
                "errcode": "M_UNKNOWN",
                "error": format!("the homeserver refused it: {}", item.error.as_deref().unwrap_or("unknown error")),
                "outbox_id": item.id,
                "status": "failed",
            })),
        )
            .into_response(),
        OutboxStatus::Pending => (
            StatusCode::ACCEPTED,
            Json(json!({ "outbox_id": item.id, "status": "pending", "last_error": item.error })),
        )
            .into_response(),
    }
}

/// Queues `send` as the caller's agent and waits for the homeserver, up to `api.send_wait`.
pub(super) async fn queue_and_wait(
    state: &ApiState,
    caller: &Caller,
    room: &RoomId,
    send: Send,
) -> Result<OutboxItem, MatrixError> {
    let intent = state.puppets.intent(caller.agent.clone());
    let item = match intent
        .send(room, send)
        .await
        .map_err(super::channels::hs_error)?
    {
        Enqueued::New(item) | Enqueued::Existing(item) => item,
        Enqueued::KeyReused(_) => {
            return Err(MatrixError::unprocessable(
                "this Idempotency-Key was used for a different request; the body does not match the key's original request",
            ));
        }
    };
    intent
        .wait(item.id, state.send_wait)
        .await
        .map_err(super::channels::hs_error)
}

fn message_send(
    content: Content,
    headers: &HeaderMap,
    request_hash: String,
) -> Result<Send, MatrixError> {
    Ok(Send {
        content,
        key: idempotency_key(headers)?,
        request_hash: Some(request_hash),
    })
}

/// Body of `POST …/messages`.
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

/// `POST /api/v1/channels/{channel_id}/messages`.
pub async fn send(
    State(state): State<ApiState>,
    caller: Caller,
    Path(channel_id): Path<String>,
    headers: HeaderMap,
    body: Unread<SendBody>,
) -> Result<Response, MatrixError> {
    caller.require(SEND)?;
    let (channel_id, room) = channel(&state, &caller, &channel_id).await?;
    let body = body.read().await?;
    let b = body.value;
    if b.text.trim().is_empty() {
        return Err(MatrixError::invalid_param("`text` must not be empty"));
    }
    let run = match b.run_id {
        Some(id) => Some(deferred_run(&state, &caller, RunId(id), channel_id).await?),
        None => None,
    };
    let text = b.text.clone();
    let content = content::message(&Outgoing {
        body: b.text,
        markdown: b.markdown,
        kind: b.msgtype.unwrap_or(caller.agent.behaviour.message_kind),
        reply_to: b.reply_to,
        thread_root: b.thread_root,
        mentions: b.mentions,
    });
    let item = queue_and_wait(
        &state,
        &caller,
        &room,
        message_send(content, &headers, body.request_hash)?,
    )
    .await?;
    if let Some(run) = run {
        let end = match (item.status, &item.event_id) {
            (OutboxStatus::Sent, Some(event)) => {
                RunEnd::completed(json!({ "text": text }), Some(event.clone()))
            }
            (OutboxStatus::Failed, _) => RunEnd::failed(
                item.error
                    .clone()
                    .unwrap_or_else(|| "the homeserver refused the answer".into()),
            ),
            // Queued: the answer is on its way; the run is done from the runtime's side.
            _ => RunEnd::completed(json!({ "text": text, "outbox_id": item.id }), None),
        };
        state.store.runs().finish(run, &end).await?;
    }
    Ok(outcome(&item))
}

/// The deferred run a runtime answers: of this agent, in this channel, still running.
async fn deferred_run(
    state: &ApiState,
    caller: &Caller,
    id: RunId,
    channel: ChannelId,
) -> Result<RunId, MatrixError> {
    caller.require("agent.run.invoke")?;
    match state.store.runs().get(id).await? {
        Some(r) if r.agent_id == caller.agent.id && r.channel_id == Some(channel) => {
            if r.status != RunStatus::Running {
                return Err(MatrixError::invalid_param(format!(
                    "run {id} is {}, not running",
                    r.status
                )));
            }
            Ok(id)
        }
        _ => Err(MatrixError::not_found(
            "no such run of this agent in this channel",
        )),
    }
}

/// Body of `PUT …/messages/{event_id}`.
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
    id: &str,
) -> Result<OwnedEventId, MatrixError> {
    let target = event_id("event_id", id)?;
    match state
        .store
        .channels()
        .message_agent(channel, target.as_str())
        .await?
    {
        None => Err(MatrixError::not_found("no such message in this channel")),
        Some(Some(a)) if a == caller.agent.id => Ok(target),
        Some(_) => Err(MatrixError::forbidden(
            "an agent may change only its own messages",
        )),
    }
}

/// `PUT /api/v1/channels/{channel_id}/messages/{event_id}`: edits the agent's message.
pub async fn edit(
    State(state): State<ApiState>,
    caller: Caller,
    Path((channel_id, target)): Path<(String, String)>,
    headers: HeaderMap,
    body: Unread<EditBody>,
) -> Result<Response, MatrixError> {
    caller.require(SEND)?;
    let (channel, room) = channel(&state, &caller, &channel_id).await?;
    let target = own_message(&state, &caller, channel, &target).await?;
    let body = body.read().await?;
    let b = body.value;
    if b.text.trim().is_empty() {
        return Err(MatrixError::invalid_param("`text` must not be empty"));
    }
    let kind = b.msgtype.unwrap_or(caller.agent.behaviour.message_kind);
    let content = content::edit(target, &b.text, b.markdown, kind, b.mentions);
    let item = queue_and_wait(
        &state,
        &caller,
        &room,
        message_send(content, &headers, body.request_hash)?,
    )
    .await?;
    Ok(outcome(&item))
}

/// Body of `DELETE …/messages/{event_id}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RedactBody {
    #[serde(default)]
    reason: Option<String>,
}

/// `DELETE /api/v1/channels/{channel_id}/messages/{event_id}`: redacts the agent's message.
pub async fn redact(
    State(state): State<ApiState>,
    caller: Caller,
    Path((channel_id, target)): Path<(String, String)>,
    headers: HeaderMap,
    body: Unread<RedactBody>,
) -> Result<Response, MatrixError> {
    caller.require(SEND)?;
    let (channel, room) = channel(&state, &caller, &channel_id).await?;
    let target_id = own_message(&state, &caller, channel, &target).await?;
    let (reason, request_hash) = match body.read_optional().await? {
        Some(b) => (b.value.reason, b.request_hash),
        None => (None, format!("DELETE {channel_id}/{target}")),
    };
    let send = Send {
        content: content::redaction(target_id, reason),
        key: idempotency_key(&headers)?,
        request_hash: Some(request_hash),
    };
    let item = queue_and_wait(&state, &caller, &room, send).await?;
    Ok(outcome(&item))
}

/// Body of `POST …/reactions`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactBody {
    key: String,
}

/// `POST /api/v1/channels/{channel_id}/messages/{event_id}/reactions`.
pub async fn react(
    State(state): State<ApiState>,
    caller: Caller,
    Path((channel_id, target)): Path<(String, String)>,
    headers: HeaderMap,
    body: Unread<ReactBody>,
) -> Result<Response, MatrixError> {
    caller.require(SEND)?;
    let (channel, room) = channel(&state, &caller, &channel_id).await?;
    let target = event_id("event_id", &target)?;
    if state
        .store
        .channels()
        .message_agent(channel, target.as_str())
        .await?
        .is_none()
    {
        return Err(MatrixError::not_found("no such message in this channel"));
    }
    let body = body.read().await?;
    let key = &body.value.key;
    if key.is_empty() || key.chars().count() > 64 {
        return Err(MatrixError::invalid_param(
            "`key` must be 1 to 64 characters",
        ));
    }
    let send = Send {
        content: content::reaction(target, key),
        key: idempotency_key(&headers)?,
        request_hash: Some(body.request_hash),
    };
    let item = queue_and_wait(&state, &caller, &room, send).await?;
    Ok(outcome(&item))
}

/// `GET /api/v1/outbox/{outbox_id}`: where a queued send stands.
pub async fn outbox(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, MatrixError> {
    caller.require(SEND)?;
    let id = OutboxId(uuid("outbox_id", &id)?);
    match state.store.outbox().get(id).await? {
        Some(item) if item.agent_id == caller.agent.id => Ok(outcome(&item)),
        _ => Err(MatrixError::not_found("no such queued send")),
    }
}
