//! The HTTP boundary's error: every failure answers a Matrix error body `{"errcode","error"}`
//! built from ruma's error types.

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

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorKind::Unauthorized,
            "missing homeserver token",
        )
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorKind::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, message)
    }
    pub fn unrecognized(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, ErrorKind::Unrecognized, message)
    }
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::BadJson, message)
    }
    pub fn not_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::NotJson, message)
    }
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::TooLarge,
            format!("request body exceeds {limit} bytes"),
        )
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Unknown, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Unknown,
            message,
        )
    }
}

impl ApiError {
    pub fn missing_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorKind::MissingToken,
            "missing access key (Authorization: Bearer …)",
        )
    }
    pub fn unknown_token(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorKind::UnknownToken(UnknownTokenErrorData::new()),
            message,
        )
    }
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::InvalidParam, message)
    }
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = match &self.kind {
            ErrorKind::LimitExceeded(LimitExceededErrorData {
                retry_after: Some(RetryAfter::Delay(d)),
                ..
            }) => Some(*d),
            _ => None,
        };
        let mut response = (
            self.status,
            Json(StandardErrorBody::new(self.kind, self.message)),
        )
            .into_response();
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

impl From<crate::db::StoreError> for ApiError {
    fn from(error: crate::db::StoreError) -> Self {
        tracing::error!(%error, "database error in the agent API");
        ApiError::unavailable("database unavailable; retry later")
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
    ApiError::new(status, kind, message).into_response()
}
