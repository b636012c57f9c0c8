//! Request parts of the agent API: JSON bodies (413 `M_TOO_LARGE` beyond the limit, 400
//! `M_NOT_JSON` / `M_BAD_JSON` naming the problem, 400 `M_INVALID_PARAM` for NUL, which no
//! Matrix text may carry), the request hash an `Idempotency-Key` is bound to, and path
//! parameters.

use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::{HeaderMap, StatusCode},
};
use ruma::OwnedEventId;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::{db::text::json_has_nul, matrix::MatrixError};

/// A JSON body and the hash of the request that carried it.
pub struct Body<T> {
    /// The parsed body.
    pub value: T,
    /// SHA-256 over method, path and body: what an `Idempotency-Key` is bound to.
    pub request_hash: String,
}

/// Like [`Body`], for requests whose body is optional (an empty body is `None`).
pub struct OptionalBody<T>(pub Option<Body<T>>);

async fn read<S: Send + Sync>(req: Request, state: &S) -> Result<(Bytes, String), MatrixError> {
    let head = format!("{} {}\n", req.method(), req.uri().path());
    let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            MatrixError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ruma::api::error::ErrorKind::TooLarge,
                "request body too large",
            )
        } else {
            MatrixError::bad_json(rejection.body_text())
        }
    })?;
    let mut hash = Sha256::new();
    hash.update(head.as_bytes());
    hash.update(&bytes);
    Ok((bytes, crate::bridge::mirror::hex(&hash.finalize())))
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, MatrixError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| MatrixError::not_json(format!("request body is not JSON: {e}")))?;
    if json_has_nul(&value) {
        return Err(MatrixError::invalid_param(
            "the body holds U+0000 (NUL), which Matrix text cannot carry",
        ));
    }
    serde_json::from_value(value).map_err(|e| MatrixError::bad_json(e.to_string()))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = MatrixError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (bytes, request_hash) = read(req, state).await?;
        Ok(Body {
            value: parse(&bytes)?,
            request_hash,
        })
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalBody<T> {
    type Rejection = MatrixError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (bytes, request_hash) = read(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalBody(None));
        }
        Ok(OptionalBody(Some(Body {
            value: parse(&bytes)?,
            request_hash,
        })))
    }
}

/// The `Idempotency-Key` header, if any (1 to 200 printable ASCII characters).
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, MatrixError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| MatrixError::invalid_param("`Idempotency-Key` must be ASCII"))?;
    if v.is_empty() || v.len() > 200 {
        return Err(MatrixError::invalid_param(
            "`Idempotency-Key` must be 1 to 200 characters",
        ));
    }
    Ok(Some(v.to_owned()))
}

/// A UUID path or query parameter.
pub fn uuid(name: &str, value: &str) -> Result<uuid::Uuid, MatrixError> {
    value.parse().map_err(|_| {
        MatrixError::invalid_param(format!("`{name}` is not a UUID: {}", value.escape_debug()))
    })
}

/// A Matrix event id path parameter.
pub fn event_id(name: &str, value: &str) -> Result<OwnedEventId, MatrixError> {
    if value.contains('\0') {
        return Err(MatrixError::invalid_param(format!("`{name}` holds NUL")));
    }
    OwnedEventId::try_from(value).map_err(|_| {
        MatrixError::invalid_param(format!(
            "`{name}` is not a Matrix event id: {}",
            value.escape_debug()
        ))
    })
}
