//! Failed work in the admin API: `GET /failed` lists failed follow-up jobs, puppet sends and
//! runs together (keyset pages, `?kind=` to narrow), `POST /failed/{kind}/{id}/retry` re-queues
//! one (what that means per kind, and when a run is refused, is in `db::failed`) and wakes the
//! worker that takes it, so it does not wait for the worker's poll.

use axum::{
    Json,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;

use super::{Admin, Listing, Page};
use crate::{
    api::{ApiState, extract::uuid},
    db::failed::{FailedKind, Retry},
    server::error::MatrixError,
};

/// `GET /failed` query.
#[derive(Debug, Deserialize)]
pub struct FailedQuery {
    kind: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
}

fn kind(value: &str) -> Result<FailedKind, MatrixError> {
    FailedKind::parse(value)
        .ok_or_else(|| MatrixError::invalid_param("`kind` must be one of job, send, run"))
}

/// `GET /api/v1/admin/failed`: in id order (creation order), across the three tables.
pub async fn list(
    State(state): State<ApiState>,
    _admin: Admin,
    Query(q): Query<FailedQuery>,
) -> Result<Response, MatrixError> {
    let limit = Page {
        after: None,
        limit: q.limit,
    }
    .limit()?;
    let kinds = match q.kind.as_deref() {
        Some(k) => vec![kind(k)?],
        None => FailedKind::ALL.to_vec(),
    };
    let after = q.after.as_deref().map(|a| uuid("after", a)).transpose()?;
    let rows = state.store.failed().list(&kinds, after, limit).await?;
    Ok(Json(Listing::of(rows, limit, |r| r.id.clone())).into_response())
}

/// `POST /api/v1/admin/failed/{kind}/{id}/retry`.
pub async fn retry(
    State(state): State<ApiState>,
    admin: Admin,
    Path((k, id)): Path<(String, String)>,
) -> Result<Response, MatrixError> {
    let kind = kind(&k)?;
    let id = uuid("id", &id)?;
    match state.store.failed().retry(kind, id, &admin.actor()).await? {
        Retry::Queued => {
            let wake = match kind {
                FailedKind::Job => &state.wakers.jobs,
                FailedKind::Send => &state.wakers.outbox,
                FailedKind::Run => &state.wakers.runs,
            };
            wake.notify_one();
            Ok(Json(json!({
                "kind": kind.as_str(),
                "id": id.hyphenated().to_string(),
                "status": "pending",
            }))
            .into_response())
        }
        Retry::NotFound => Err(MatrixError::not_found(format!(
            "no failed {} with this id",
            kind.as_str()
        ))),
        Retry::Refused(why) => Err(MatrixError::new(
            StatusCode::CONFLICT,
            ruma::api::error::ErrorKind::Forbidden,
            why,
        )),
    }
}
