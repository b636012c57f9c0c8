//! Media downloads, as the bot or an agent, through the authenticated media API
//! (`GET /_matrix/client/v1/media/download/{serverName}/{mediaId}`, spec v1.11, MSC3916):
//! streamed, and bounded by a size cap (the `Content-Length` is checked first, then every
//! chunk) and a timeout, so a huge or endless answer never fills the bridge's memory; and
//! uploads, as an agent, that hand the caller's buffer to the connection without a copy.

use std::time::Duration;

use ruma::{
    MxcUri, OwnedMxcUri, UserId,
    api::client::{
        authenticated_media::{get_content, get_media_config},
        media::create_content,
    },
};

use super::client::{Homeserver, HsError, parse_response};

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The URI is not a valid `mxc://server/id`.
    #[error("not an mxc:// URI: {0}")]
    BadUri(String),
    /// The homeserver does not have it (404), or will not show it.
    #[error("the homeserver has no such media")]
    NotFound,
    /// The homeserver answered another error status.
    #[error("the homeserver answered {0}")]
    Status(u16),
    /// Larger than the cap.
    #[error("larger than the {cap}-byte cap")]
    TooLarge {
        /// The cap, in bytes.
        cap: u64,
    },
    /// No bytes at all.
    #[error("empty (0 bytes)")]
    Empty,
    /// Took longer than the timeout.
    #[error("timed out")]
    Timeout,
    /// The connection failed.
    #[error("homeserver unreachable: {0}")]
    Network(reqwest::Error),
    /// The request could not be built.
    #[error("cannot build the request: {0}")]
    Request(String),
}

impl From<reqwest::Error> for MediaError {
    fn from(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            MediaError::Timeout
        } else {
            MediaError::Network(e)
        }
    }
}

/// Downloaded bytes, as the chunks they arrived in (never copied into one buffer: a decryptor
/// or encoder reads them in order), with the content type the homeserver named.
#[derive(Debug, Default)]
pub struct Downloaded {
    /// The body, in arrival order.
    pub chunks: Vec<bytes::Bytes>,
    /// Its total length.
    pub len: u64,
    /// `Content-Type`, as the homeserver sent it (not trusted: sniff the bytes).
    pub content_type: Option<String>,
}

impl Downloaded {
    /// The bytes as one buffer (a copy).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut all = Vec::with_capacity(self.len as usize);
        for chunk in &self.chunks {
            all.extend_from_slice(chunk);
        }
        all
    }
}

impl Homeserver {
    /// Downloads `mxc` as `as_user`: at most `cap` bytes, within `timeout` (connect to last
    /// byte).
    pub async fn download(
        &self,
        mxc: &MxcUri,
        as_user: &UserId,
        cap: u64,
        timeout: Duration,
    ) -> Result<Downloaded, MediaError> {
        let (server, id) = mxc
            .parts()
            .map_err(|_| MediaError::BadUri(mxc.to_string()))?;
        let mut ask = get_content::v1::Request::new(id.to_owned(), server.to_owned());
        // The homeserver may wait for media still being uploaded; never past our own timeout.
        ask.timeout_ms = timeout;
        let device = self.device_of(as_user);
        let mut request = self
            .http_request(ask, Some(as_user), device.as_deref())
            .map_err(|e| MediaError::Request(e.to_string()))?;
        *request.timeout_mut() = Some(timeout);
        let mut response = self.http().execute(request).await?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(MediaError::NotFound);
        }
        if !status.is_success() {
            return Err(MediaError::Status(status.as_u16()));
        }
        if response.content_length().is_some_and(|n| n > cap) {
            return Err(MediaError::TooLarge { cap });
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut got = Downloaded {
            content_type,
            ..Downloaded::default()
        };
        while let Some(chunk) = response.chunk().await? {
            got.len += chunk.len() as u64;
            if got.len > cap {
                return Err(MediaError::TooLarge { cap });
            }
            got.chunks.push(chunk);
        }
        if got.len == 0 {
            return Err(MediaError::Empty);
        }
        Ok(got)
    }

    /// Uploads `bytes` as `as_user` (`POST /_matrix/media/v3/upload`); returns its `mxc://`
    /// URI. The buffer becomes the request body as it is: a large file is held once.
    pub async fn upload_as(
        &self,
        as_user: &UserId,
        bytes: Vec<u8>,
        content_type: &str,
        filename: &str,
    ) -> Result<OwnedMxcUri, HsError> {
        // ruma shapes the request (path, query, headers) around an empty body; the file goes
        // in afterwards, so ruma's serialisation never copies it.
        let mut shape = create_content::v3::Request::new(Vec::new());
        shape.content_type = Some(content_type.to_owned());
        shape.filename = Some(filename.to_owned());
        let device = self.device_of(as_user);
        let mut request = self.http_request(shape, Some(as_user), device.as_deref())?;
        *request.body_mut() = Some(bytes.into());
        // A large upload may take longer than an API call.
        *request.timeout_mut() = Some(Duration::from_secs(300));
        let response = self.http().execute(request).await?;
        let created: create_content::v3::Response = parse_response(response).await?;
        Ok(created.content_uri)
    }

    /// The largest upload the homeserver accepts (`m.upload.size`).
    pub async fn upload_limit(&self) -> Result<u64, HsError> {
        let response = self
            .send_as(get_media_config::v1::Request::new(), None, None)
            .await?;
        Ok(u64::from(response.upload_size))
    }
}
