//! The agent's runs.

use axum::{
    Json,
    extract::{Path, Query, State},
};
use serde::Deserialize;
use serde_json::json;

use super::{ApiState, auth::Caller, channels::READ, extract::uuid};
use crate::{
    model::{
        RunStatus,
        ids::{ChannelId, RunId},
    },
    server::error::MatrixError,
};

/// Query of `GET /api/v1/runs`.
#[derive(Deserialize)]
pub struct RunsQuery {
    channel_id: Option<uuid::Uuid>,
    status: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/v1/runs`: the agent's runs, newest first.
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<RunsQuery>,
) -> Result<Json<serde_json::Value>, MatrixError> {
    caller.require(READ)?;
    let status = match &q.status {
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            MatrixError::invalid_param(
                "`status` must be queued, running, completed, failed or cancelled",
            )
        })?),
        None => None,
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(MatrixError::invalid_param(
            "`limit` must be between 1 and 200",
        ));
    }
    let runs = state
        .store
        .runs()
        .list(caller.agent.id, q.channel_id.map(ChannelId), status, limit)
        .await?;
    Ok(Json(json!({ "runs": runs })))
}

/// `GET /api/v1/runs/{run_id}`: the run, with its tool calls (`steps`).
pub async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, MatrixError> {
    caller.require(READ)?;
    let id = RunId(uuid("run_id", &id)?);
    match state.store.runs().get(id).await? {
        Some(r) if r.agent_id == caller.agent.id => {
            // The run's tool calls, so its runtime (and the platform) see what the agent did.
            let steps = state.store.steps().of_run(id).await?;
            let mut v = json!(r);
            v["steps"] = json!(steps);
            Ok(Json(v))
        }
        _ => Err(MatrixError::not_found("no such run of this agent")),
    }
}
