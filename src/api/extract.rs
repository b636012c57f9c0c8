//! Request parts of the agent API: JSON bodies (413 `M_TOO_LARGE` beyond the limit, 408
//! `M_UNKNOWN` past the body deadline, 400 `M_NOT_JSON` / `M_BAD_JSON` naming the problem, 400
//! `M_INVALID_PARAM` for NUL, which no Matrix text may carry), the request hash an
//! `Idempotency-Key` is bound to, and path parameters.
//!
//! Reject before you read: handlers that authorise against a channel take an [`Unread`] body
//! and read it only once the key's capability and the agent's membership are checked, so a
//! refused request's body is never read (the listener then closes its connection).

use std::marker::PhantomData;

use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::HeaderMap,
};
use ruma::OwnedEventId;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::ApiState;
use crate::{
    db::text::json_has_nul,
    server::{body::body_error, error::MatrixError},
};

/// A JSON body and the hash of the request that carried it.
pub struct Body<T> {
    /// The parsed body.
    pub value: T,
    /// SHA-256 over method, path and body: what an `Idempotency-Key` is bound to.
    pub request_hash: String,
}

/// A JSON body not read yet; [`Unread::read`] reads it.
pub struct Unread<T> {
    request: Request,
    limit: usize,
    _body: PhantomData<fn() -> T>,
}

impl<T> FromRequest<ApiState> for Unread<T> {
    type Rejection = MatrixError;

    async fn from_request(request: Request, state: &ApiState) -> Result<Self, Self::Rejection> {
        Ok(Unread {
            request,
            limit: state.max_body_bytes,
            _body: PhantomData,
        })
    }
}

impl<T: DeserializeOwned> Unread<T> {
    /// Reads and parses the body (once the request is authorised).
    pub async fn read(self) -> Result<Body<T>, MatrixError> {
        let (bytes, request_hash) = read_limited(self.request, self.limit).await?;
        Ok(Body {
            value: parse(&bytes)?,
            request_hash,
        })
    }

    /// Like [`Unread::read`], for bodies that may be empty (`None`).
    pub async fn read_optional(self) -> Result<Option<Body<T>>, MatrixError> {
        let (bytes, request_hash) = read_limited(self.request, self.limit).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        Ok(Some(Body {
            value: parse(&bytes)?,
            request_hash,
        }))
    }
}

/// The body and the request hash; `limit` only names the limit in the 413 (the router's
/// `DefaultBodyLimit` enforces it).
async fn read_limited(req: Request, limit: usize) -> Result<(Bytes, String), MatrixError> {
    let head = format!("{} {}\n", req.method(), req.uri().path());
    let bytes = Bytes::from_request(req, &())
        .await
        .map_err(|rejection| body_error(rejection, limit))?;
    let mut hash = Sha256::new();
    hash.update(head.as_bytes());
    hash.update(&bytes);
    Ok((bytes, hex::encode(hash.finalize())))
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

impl<T: DeserializeOwned> FromRequest<ApiState> for Body<T> {
    type Rejection = MatrixError;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, Self::Rejection> {
        let (bytes, request_hash) = read_limited(req, state.max_body_bytes).await?;
        Ok(Body {
            value: parse(&bytes)?,
            request_hash,
        })
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
