//! `POST /api/v1/channels/{channel_id}/files`: an agent sends a file. The body is the file
//! itself (`Content-Type` its type); `filename` and an optional `caption`, `reply_to` and
//! `thread_root` come as query parameters (or `Content-Disposition: attachment;
//! filename="…"` and an `X-Caption` header). The file is uploaded as the agent, sealed first in
//! an encrypted room, and its message (`m.image`, `m.audio`, `m.video` or `m.file`, by the type
//! its bytes show) goes through the durable outbox like any send. Bounded by
//! `api.max_upload_bytes` and the homeserver's own `m.upload.size`, whichever is smaller; the
//! file is held in memory once (it is encrypted in place and handed to the upload as it is).
//! And `GET /api/v1/media/{token}`: the file behind a media link a webhook runtime was given.

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State},
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
    routing::post,
};
use ruma::OwnedEventId;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{
    ApiState,
    auth::Caller,
    channels::{READ, SEND, channel, hs_error},
    extract::idempotency_key,
    messages::{outcome, queue_and_wait},
};
use crate::{
    links::LinkError,
    matrix::media::MediaError,
    model::Ts,
    puppet::media::FetchError,
    puppet::{
        Send,
        content::{self, Outgoing, OutgoingFile},
    },
    runs::media::source_of,
    server::{body::body_error, error::MatrixError},
};

/// The route, with its own body limit (files are larger than API calls).
pub(super) fn routes(limit: usize) -> Router<ApiState> {
    Router::new()
        .route("/api/v1/channels/{channel_id}/files", post(send_file))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            limit,
            crate::server::body::refuse_oversized,
        ))
}

/// Query of `POST …/files`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    filename: Option<String>,
    caption: Option<String>,
    reply_to: Option<OwnedEventId>,
    thread_root: Option<OwnedEventId>,
}

/// Longest file name accepted (bytes).
const MAX_NAME: usize = 255;
/// Longest caption accepted (bytes).
const MAX_CAPTION: usize = 16 << 10;

/// `POST /api/v1/channels/{channel_id}/files`.
pub async fn send_file(
    State(state): State<ApiState>,
    caller: Caller,
    Path(channel_id): Path<String>,
    Query(q): Query<FileQuery>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, MatrixError> {
    caller.require(SEND)?;
    let (_, room) = channel(&state, &caller, &channel_id).await?;
    let filename = q
        .filename
        .or_else(|| disposition_filename(&headers))
        .ok_or_else(|| {
            MatrixError::invalid_param("name the file: `?filename=…` or Content-Disposition")
        })?;
    check_text("filename", &filename, MAX_NAME)?;
    if filename.contains(['/', '\\']) {
        return Err(MatrixError::invalid_param(
            "`filename` must not contain a path separator",
        ));
    }
    let caption = match q.caption.or_else(|| header_text(&headers, "x-caption")) {
        Some(c) => {
            check_text("caption", &c, MAX_CAPTION)?;
            Some(c)
        }
        None => None,
    };
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    if declared.starts_with("multipart/") {
        return Err(MatrixError::invalid_param(
            "send the file itself as the body (Content-Type: its type), not a multipart form",
        ));
    }
    // The homeserver's own limit, when it is the smaller one, refuses before reading.
    let limit = match state.puppets.upload_limit().await {
        Some(hs) => state
            .max_upload_bytes
            .min(usize::try_from(hs).unwrap_or(usize::MAX)),
        None => state.max_upload_bytes,
    };
    let declared_len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_len.is_some_and(|n| n > limit as u64) {
        return Err(MatrixError::too_large(limit));
    }
    let head = format!(
        "POST {}?{}\n{declared}\n",
        request.uri().path(),
        request.uri().query().unwrap_or("")
    );
    let bytes = Bytes::from_request(request, &())
        .await
        .map_err(|rejection| body_error(rejection, limit))?;
    if bytes.len() > limit {
        return Err(MatrixError::too_large(limit));
    }
    if bytes.is_empty() {
        return Err(MatrixError::invalid_param("the file is empty (0 bytes)"));
    }
    let mut hash = Sha256::new();
    hash.update(head.as_bytes());
    hash.update(&bytes);
    let request_hash = hex::encode(hash.finalize());
    let intent = state.puppets.intent(caller.agent.clone());
    let key = idempotency_key(&headers)?;
    // A retried request finds its first outcome before anything is uploaded again.
    if let Some(key) = &key
        && let Some(item) = intent.queued(key).await.map_err(hs_error)?
    {
        if item.request_hash.as_deref() != Some(request_hash.as_str()) {
            return Err(MatrixError::unprocessable(
                "this Idempotency-Key was used for a different request; the body does not match the key's original request",
            ));
        }
        return Ok(outcome(&item));
    }
    // The type the bytes show wins over the one declared.
    let mimetype = infer::get(&bytes)
        .map(|t| t.mime_type().to_owned())
        .unwrap_or(declared);
    let dimensions = mimetype
        .starts_with("image/")
        .then(|| imagesize::blob_size(&bytes).ok())
        .flatten()
        .map(|s| (s.width as u64, s.height as u64));
    let size = bytes.len() as u64;
    let source = intent
        .upload(&room, Vec::from(bytes), &mimetype, &filename)
        .await
        .map_err(hs_error)?;
    let content = content::file(&OutgoingFile {
        source,
        filename,
        caption,
        mimetype,
        size,
        dimensions,
        place: Outgoing {
            reply_to: q.reply_to,
            thread_root: q.thread_root,
            ..Outgoing::default()
        },
    });
    let send = Send {
        content,
        key,
        request_hash: Some(request_hash),
    };
    let item = queue_and_wait(&state, &caller, &room, send).await?;
    Ok(outcome(&item))
}

/// `GET /api/v1/media/{token}`: the attachment a media link names, decrypted, for the agent's
/// own runtime. The event is read again as the agent and the file fetched now: the link holds no
/// file key, and a redacted message's file is gone.
pub async fn media(
    State(state): State<ApiState>,
    caller: Caller,
    Path(token): Path<String>,
) -> Result<Response, MatrixError> {
    caller.require(READ)?;
    let link = match state.links.open(&token, Ts::now()) {
        Ok(link) => link,
        Err(LinkError::Invalid) => return Err(MatrixError::not_found("no such media link")),
        Err(LinkError::Expired) => {
            return Err(MatrixError::forbidden("the media link has expired"));
        }
    };
    if link.agent != caller.agent.id {
        return Err(MatrixError::forbidden(
            "this media link belongs to another agent",
        ));
    }
    let intent = state.puppets.intent(caller.agent.clone());
    let gone = || MatrixError::not_found("the message or its file is gone");
    let raw = intent
        .event(&link.room, &link.event)
        .await
        .map_err(hs_error)?
        .ok_or_else(gone)?;
    let (kind, name, declared, source) = source_of(&raw).ok_or_else(gone)?;
    let fetched = intent
        .media(
            &source,
            state.media.cap(kind.as_str()),
            state.media.download_timeout,
        )
        .await
        .map_err(|error| match error {
            FetchError::Download(MediaError::NotFound) => gone(),
            other => MatrixError::bad_gateway(format!("the file cannot be had: {other}")),
        })?;
    let mimetype = fetched
        .sniffed
        .map(str::to_owned)
        .or(declared)
        .unwrap_or_else(|| "application/octet-stream".into());
    let disposition = format!(
        "attachment; filename*=UTF-8''{}",
        percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
    );
    Ok((
        [
            (header::CONTENT_TYPE, mimetype),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        fetched.bytes,
    )
        .into_response())
}

/// A text parameter: not empty, at most `max` bytes, no NUL.
fn check_text(name: &str, value: &str, max: usize) -> Result<(), MatrixError> {
    if value.trim().is_empty() || value.len() > max || value.contains('\0') {
        return Err(MatrixError::invalid_param(format!(
            "`{name}` must be 1 to {max} bytes, without NUL"
        )));
    }
    Ok(())
}

/// A header's value as UTF-8 text (percent-encoded or not).
fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    let raw = headers.get(name)?.to_str().ok()?;
    Some(percent_decode(raw))
}

/// The `filename` of `Content-Disposition: attachment; filename="…"` (or `filename*=UTF-8''…`).
fn disposition_filename(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_DISPOSITION)?.to_str().ok()?;
    let mut plain = None;
    for param in value.split(';').map(str::trim) {
        if let Some(v) = param.strip_prefix("filename*=") {
            let v = v
                .strip_prefix("UTF-8''")
                .or_else(|| v.strip_prefix("utf-8''"))?;
            return Some(percent_decode(v));
        }
        if let Some(v) = param.strip_prefix("filename=") {
            plain = Some(v.trim_matches('"').to_owned());
        }
    }
    plain
}

/// `%XX` escapes decoded (invalid ones kept as they are); invalid UTF-8 replaced.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_disposition_names_the_file() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"report.pdf\"".parse().unwrap(),
        );
        assert_eq!(disposition_filename(&h).as_deref(), Some("report.pdf"));
        h.insert(
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"x\"; filename*=UTF-8''caf%C3%A9.png"
                .parse()
                .unwrap(),
        );
        assert_eq!(disposition_filename(&h).as_deref(), Some("café.png"));
        assert_eq!(percent_decode("100%"), "100%");
    }
}
