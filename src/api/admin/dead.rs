//! Dead-lettered events in the admin API: `GET /events/dead` lists the outbox events JetStream
//! refused for good (the publisher stepped past them), `POST /events/dead/{id}/retry` puts one
//! back to pending, at the end of its partition.

use axum::{
    Json,
    extract::{Path, Query, State},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{Admin, Listing, Page};
use crate::{
    api::{ApiState, extract::uuid},
    db::dead_letters::Retried,
    server::error::MatrixError,
};

/// `GET /api/v1/admin/events/dead`: keyset pages in id order.
pub async fn list(
    State(state): State<ApiState>,
    _admin: Admin,
    Query(page): Query<Page>,
) -> Result<Response, MatrixError> {
    let limit = page.limit()?;
    let after = page
        .after
        .as_deref()
        .map(|a| uuid("after", a))
        .transpose()?;
    let rows = state.store.events().dead(after, limit).await?;
    Ok(Json(Listing::of(rows, limit, |r| r.id.clone())).into_response())
}

/// `POST /api/v1/admin/events/dead/{id}/retry`: pending again, published after what its
/// partition already holds (out of its original order; see docs/events.md). The publisher is
/// woken at once.
pub async fn retry(
    State(state): State<ApiState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Response, MatrixError> {
    let id = uuid("id", &id)?;
    match state.store.events().retry_dead(id, &admin.actor()).await? {
        Retried::Pending(seq) => Ok(Json(json!({
            "id": id.hyphenated().to_string(),
            "status": "pending",
            "seq": seq,
        }))
        .into_response()),
        Retried::NotDead => Err(MatrixError::not_found("no dead event with this id")),
    }
}
