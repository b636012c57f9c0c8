//! `POST /api/v1/admin/keys`: access keys of seed 001's other subjects: a person's (reads the
//! channels they are in), an integration's (may hold `bridge.admin`, the admin API) or an
//! embassy's. Agent keys are made under their agent (`POST /agents/{id}/keys`).

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use ruma::UserId;
use serde::Deserialize;
use serde_json::json;

use super::Admin;
use crate::{
    api::{ApiState, extract::Body},
    db::{StoreError, keys::Subject},
    keys,
    model::{KeySubject, Ts},
    server::error::MatrixError,
};

/// `POST /keys` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectKeyBody {
    subject_kind: String,
    /// The person's Matrix id (user keys).
    subject: Option<String>,
    name: String,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    bundles: Vec<String>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `POST /api/v1/admin/keys`: the key is in the response, once.
pub async fn create(
    State(state): State<ApiState>,
    admin: Admin,
    body: Body<SubjectKeyBody>,
) -> Result<Response, MatrixError> {
    let k = body.value;
    if k.name.trim().is_empty() || k.name.len() > 200 {
        return Err(MatrixError::invalid_param(
            "`name` must be 1 to 200 characters",
        ));
    }
    let kind = KeySubject::parse(&k.subject_kind).ok_or_else(|| {
        MatrixError::invalid_param("`subject_kind` must be user, integration or embassy")
    })?;
    let user = match (kind, k.subject.as_deref()) {
        (KeySubject::User, Some(s)) => Some(UserId::parse(s).map_err(|e| {
            MatrixError::invalid_param(format!("`subject` is not a Matrix user id: {e}"))
        })?),
        (KeySubject::User, None) => {
            return Err(MatrixError::invalid_param(
                "`subject`: a user key names its person's Matrix id",
            ));
        }
        (KeySubject::Agent, _) => {
            return Err(MatrixError::invalid_param(
                "`subject_kind`: agent keys are made with POST /agents/{external_id}/keys",
            ));
        }
        (_, Some(_)) => {
            return Err(MatrixError::invalid_param(
                "`subject`: integrations and embassies are named by `name`",
            ));
        }
        (_, None) => None,
    };
    if k.capabilities.is_empty() && k.bundles.is_empty() {
        return Err(MatrixError::invalid_param(
            "a key needs `capabilities` or `bundles`",
        ));
    }
    let subject = match (&user, kind) {
        (Some(u), _) => Subject::User(u),
        (None, KeySubject::Embassy) => Subject::Embassy,
        (None, _) => Subject::Integration,
    };
    let (id, key) = keys::create_for(
        &state.store,
        subject,
        k.name.trim(),
        &k.capabilities,
        &k.bundles,
        k.expires_at.map(Ts),
        &admin.actor(),
    )
    .await
    .map_err(|e| match e {
        StoreError::NotFound { what, key } => {
            MatrixError::invalid_param(format!("unknown {what} `{}`", key.escape_debug()))
        }
        StoreError::Invalid(m) => MatrixError::invalid_param(m),
        other => other.into(),
    })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": id, "key": key, "subject_kind": kind, "subject": k.subject, "name": k.name.trim(),
        })),
    )
        .into_response())
}
