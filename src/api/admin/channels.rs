//! Channels the platform creates and archives: `POST /api/v1/admin/channels` (the bot creates
//! the Matrix room; idempotent by microDAO and slug) and `DELETE
//! /api/v1/admin/channels/{channel_id}` (archives; idempotent). The work is `Control`'s
//! (`bridge::rooms`); this module validates and answers.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use ruma::OwnedUserId;
use serde::Deserialize;
use serde_json::json;

use super::Admin;
use crate::{
    api::{
        ApiState,
        extract::{Body, uuid},
    },
    bridge::{
        control::ControlError,
        rooms::{ChannelOutcome, ChannelSpec},
    },
    db::lifecycle::ChannelInfo,
    model::{Visibility, ids::ChannelId},
    server::error::MatrixError,
};

/// `POST /channels` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    microdao: String,
    slug: String,
    name: String,
    visibility: String,
    topic: Option<String>,
    encrypted: Option<bool>,
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    agents: Vec<String>,
}

fn control_error(e: ControlError) -> MatrixError {
    match e {
        ControlError::NotFound(m) => MatrixError::not_found(m),
        ControlError::InProgress(_) => MatrixError::new(
            StatusCode::CONFLICT,
            ruma::api::error::ErrorKind::Unknown,
            e.to_string(),
        ),
        ControlError::Disabled(_) => MatrixError::forbidden(e.to_string()),
        ControlError::NotMirrored(_) => MatrixError::not_found(e.to_string()),
        ControlError::Homeserver(_) | ControlError::Puppet(_) => {
            MatrixError::bad_gateway(e.to_string())
        }
        ControlError::Store(s) => s.into(),
    }
}

/// A slug as the mirror makes them: 1–64 of `a-z`, `0-9` and `-`.
fn valid_slug(slug: &str) -> bool {
    (1..=64).contains(&slug.len())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn text(field: &str, value: &str, max: usize) -> Result<(), MatrixError> {
    if value.trim().is_empty() || value.chars().count() > max || value.contains('\0') {
        return Err(MatrixError::invalid_param(format!(
            "`{field}` must be 1 to {max} characters"
        )));
    }
    Ok(())
}

/// The request, validated field by field, with its agents resolved.
fn spec(state: &ApiState, b: CreateBody) -> Result<ChannelSpec, MatrixError> {
    text("microdao", &b.microdao, 200)?;
    if !valid_slug(&b.slug) {
        return Err(MatrixError::invalid_param(
            "`slug` must be 1 to 64 characters of a-z, 0-9 and -",
        ));
    }
    text("name", &b.name, 255)?;
    let visibility = Visibility::parse(&b.visibility).ok_or_else(|| {
        MatrixError::invalid_param("`visibility` must be one of public, private, microdao")
    })?;
    if let Some(topic) = &b.topic
        && (topic.chars().count() > 1000 || topic.contains('\0'))
    {
        return Err(MatrixError::invalid_param(
            "`topic` must be at most 1000 characters",
        ));
    }
    if b.members.len() > 100 || b.agents.len() > 20 {
        return Err(MatrixError::invalid_param(
            "at most 100 `members` and 20 `agents`",
        ));
    }
    let members = b
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            OwnedUserId::try_from(m.as_str()).map_err(|_| {
                MatrixError::invalid_param(format!(
                    "`members[{i}]` is not a Matrix user id: {}",
                    m.escape_debug()
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let all = state.registry.all();
    let agents = b
        .agents
        .iter()
        .map(|id| {
            let agent = all.iter().find(|a| a.external_id == *id).ok_or_else(|| {
                MatrixError::not_found(format!("no agent `{}`", id.escape_debug()))
            })?;
            if !agent.active {
                return Err(MatrixError::forbidden(format!(
                    "{} is disabled",
                    agent.name
                )));
            }
            Ok(agent.clone())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ChannelSpec {
        microdao: b.microdao,
        slug: b.slug,
        name: b.name.trim().to_owned(),
        // Element's default: private rooms are encrypted, public ones are not.
        encrypted: b.encrypted.unwrap_or(visibility != Visibility::Public),
        visibility,
        topic: b.topic.filter(|t| !t.trim().is_empty()),
        members,
        agents,
    })
}

fn body(c: &ChannelInfo) -> serde_json::Value {
    json!({
        "channel_id": c.id,
        "room_id": c.matrix_room_id,
        "microdao": c.microdao,
        "slug": c.slug,
        "name": c.name,
        "topic": c.topic,
        "visibility": c.visibility,
        "archived_at": c.archived_at,
    })
}

/// A `microdao` channel is for the microDAO's members (docs/architecture.md): the people it
/// invites must be members already (`microdao_members`), and its agents the microDAO's own.
async fn members_only(state: &ApiState, spec: &ChannelSpec) -> Result<(), MatrixError> {
    let people: Vec<String> = spec.members.iter().map(|m| m.to_string()).collect();
    let Some((microdao, members)) = state
        .store
        .catalog()
        .microdao_members_among(&spec.microdao, &people)
        .await?
    else {
        // Unknown microDAOs get their 404 where the channel is made.
        return Ok(());
    };
    if let Some((i, m)) = people
        .iter()
        .enumerate()
        .find(|(_, m)| !members.contains(m))
    {
        return Err(MatrixError::invalid_param(format!(
            "`members[{i}]`: {m} is not a member of {}, and a microdao channel is for its members",
            spec.microdao
        )));
    }
    if let Some(agent) = spec.agents.iter().find(|a| a.microdao_id != Some(microdao)) {
        return Err(MatrixError::invalid_param(format!(
            "`agents`: {} is not {}'s own agent, and a microdao channel is for its members",
            agent.external_id, spec.microdao
        )));
    }
    Ok(())
}

/// `POST /api/v1/admin/channels`: 201 with the new channel, 200 with the one that exists.
pub async fn create(
    State(state): State<ApiState>,
    admin: Admin,
    body_in: Body<CreateBody>,
) -> Result<Response, MatrixError> {
    let spec = spec(&state, body_in.value)?;
    if spec.visibility == Visibility::Microdao {
        members_only(&state, &spec).await?;
    }
    let ChannelOutcome { channel, created } = state
        .control
        .create_channel(&spec, &admin.actor())
        .await
        .map_err(control_error)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body(&channel))).into_response())
}

/// `DELETE /api/v1/admin/channels/{channel_id}`: archives (200 both the first time and after).
pub async fn archive(
    State(state): State<ApiState>,
    admin: Admin,
    Path(channel_id): Path<String>,
) -> Result<Response, MatrixError> {
    let channel = ChannelId(uuid("channel_id", &channel_id)?);
    let (info, archived) = state
        .control
        .archive_channel(channel, &admin.actor())
        .await
        .map_err(control_error)?;
    let mut out = body(&info);
    out["archived"] = json!(archived);
    Ok(Json(out).into_response())
}
