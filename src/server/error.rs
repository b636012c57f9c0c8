//! The HTTP boundary's error, shared by the appservice API and the agent API: every failure
//! answers a Matrix error body `{"errcode","error"}` built from ruma's error types, with the
//! status that goes with it.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use std::time::Duration;

use axum::http::HeaderValue;
use ruma::api::error::{
    ErrorKind, LimitExceededErrorData, RetryAfter, StandardErrorBody, UnknownTokenErrorData,
};

/// A Matrix error response.
#[derive(Debug)]
pub struct MatrixError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The `errcode` (and its data, e.g. `retry_after_ms`).
    pub kind: ErrorKind,
    /// The `error` text.
    pub message: String,
}

impl MatrixError {
    /// An error with any status and kind.
    pub fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }
    /// 401 `M_UNAUTHORIZED`: no homeserver token.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorKind::Unauthorized,
            "missing homeserver token",
        )
    }
    /// 403 `M_FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorKind::Forbidden, message)
    }
    /// 404 `M_NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, message)
    }
    /// `M_UNRECOGNIZED` (unknown route or method).
    pub fn unrecognized(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, ErrorKind::Unrecognized, message)
    }
    /// 400 `M_BAD_JSON`: JSON of the wrong shape.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::BadJson, message)
    }
    /// 400 `M_NOT_JSON`: not JSON at all.
    pub fn not_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::NotJson, message)
    }
    /// 413 `M_TOO_LARGE`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::TooLarge,
            format!("request body exceeds {limit} bytes"),
        )
    }
    /// 503 `M_UNKNOWN`: retry later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Unknown, message)
    }
    /// 500 `M_UNKNOWN`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Unknown,
            message,
        )
    }
}

impl MatrixError {
    /// 401 `M_MISSING_TOKEN`.
    pub fn missing_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorKind::MissingToken,
            "missing access key (Authorization: Bearer …)",
        )
    }
    /// 401 `M_UNKNOWN_TOKEN`.
    pub fn unknown_token(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorKind::UnknownToken(UnknownTokenErrorData::new()),
            message,
        )
    }
    /// 400 `M_INVALID_PARAM`.
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::InvalidParam, message)
    }
    /// 429 `M_LIMIT_EXCEEDED` with `retry_after_ms` and `Retry-After`.
    pub fn limit_exceeded(retry_after: Duration) -> Self {
        let mut data = LimitExceededErrorData::new();
        data.retry_after = Some(RetryAfter::Delay(retry_after));
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::LimitExceeded(data),
            "rate limit exceeded",
        )
    }
}

/// The text of a 401/403 error, attached to its response so an audit layer can record why.
#[derive(Debug, Clone)]
pub struct DeniedReason(pub String);

impl IntoResponse for MatrixError {
    fn into_response(self) -> Response {
        let retry_after = match &self.kind {
            ErrorKind::LimitExceeded(LimitExceededErrorData {
                retry_after: Some(RetryAfter::Delay(d)),
                ..
            }) => Some(*d),
            _ => None,
        };
        let denied = matches!(
            self.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        )
        .then(|| self.message.clone());
        let mut response = (
            self.status,
            Json(StandardErrorBody::new(self.kind, self.message)),
        )
            .into_response();
        if let Some(reason) = denied {
            // For the agent API's audit of denied calls.
            response.extensions_mut().insert(DeniedReason(reason));
        }
        if let Some(d) = retry_after {
            // Whole seconds, rounded up, as HTTP wants.
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response
                    .headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        response
    }
}

impl MatrixError {
    /// 422 `M_INVALID_PARAM`: the request is well-formed but cannot be honoured as asked.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::InvalidParam,
            message,
        )
    }

    /// 502 `M_UNKNOWN`: the homeserver failed a call made for this request.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, ErrorKind::Unknown, message)
    }
}

/// Storage errors at the HTTP edge: only a database that is down gives 5xx.
impl From<crate::db::StoreError> for MatrixError {
    fn from(error: crate::db::StoreError) -> Self {
        use crate::db::StoreError;
        match error {
            StoreError::NotFound { what, key } => {
                MatrixError::not_found(format!("no {what} `{key}`"))
            }
            StoreError::Invalid(problem) => MatrixError::invalid_param(problem),
            StoreError::Rejected(source) => {
                tracing::warn!(error = %source, "the database refused a request's values");
                MatrixError::invalid_param("the request holds a value the database refuses")
            }
            other => {
                tracing::error!(error = %other, "database error at the HTTP edge");
                MatrixError::unavailable("database unavailable; retry later")
            }
        }
    }
}

/// A safety net for responses built outside our handlers (axum's extractor rejections, say):
/// an error without a JSON body becomes a Matrix error with the same status.
pub async fn matrix_error_bodies(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let kind = match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => ErrorKind::InvalidParam,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => ErrorKind::Unrecognized,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::TooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorKind::NotJson,
        _ => ErrorKind::Unknown,
    };
    let (_, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_owned();
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        message
    };
    MatrixError::new(status, kind, message).into_response()
}
