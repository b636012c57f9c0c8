//! The bridge's client of the homeserver's client-server API: ruma request types sent with
//! reqwest, authenticated with the as_token (header only), acting as the bot or, by identity
//! assertion (`?user_id=`), as a puppet.

use std::{borrow::Cow, collections::BTreeMap, time::Duration};

use ruma::{
    OwnedEventId, OwnedMxcUri, OwnedRoomId, OwnedTransactionId, OwnedUserId, UserId,
    api::{
        AppserviceUserIdentity, IncomingResponseExt, OutgoingRequest, OutgoingRequestAppserviceExt,
        SupportedVersions,
        auth_scheme::SendAccessToken,
        client::{
            account::register,
            appservice::request_ping,
            media::create_content,
            membership::{join_room_by_id, joined_members, leave_room},
            message::get_message_events,
            message::send_message_event,
            profile::{set_avatar_url, set_display_name},
            receipt::create_receipt,
            redact::redact_event,
            state::get_state_events,
            typing::create_typing_event,
        },
        path_builder::PathBuilder,
    },
    events::{AnyMessageLikeEventContent, AnyStateEvent, MessageLikeEventType},
    serde::Raw,
};

/// Errors talking to the homeserver.
#[derive(Debug, thiserror::Error)]
pub enum HsError {
    #[error("homeserver unreachable: {0}")]
    Network(#[from] reqwest::Error),
    #[error("homeserver answered {status}: {errcode} {message}")]
    Matrix {
        status: u16,
        errcode: String,
        message: String,
        /// From a 429: when the homeserver wants us back.
        retry_after: Option<Duration>,
    },
    #[error("unexpected homeserver response: {0}")]
    Response(String),
    #[error("cannot build request: {0}")]
    Request(String),
}

impl HsError {
    /// How long a 429 asked us to wait.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            HsError::Matrix { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether trying again later may succeed (network, 429, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            HsError::Network(_) => true,
            HsError::Matrix { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

#[derive(Clone)]
pub struct Homeserver {
    http: reqwest::Client,
    base: String,
    as_token: String,
    bot: OwnedUserId,
    versions: SupportedVersions,
}

impl Homeserver {
    pub fn new(base: &str, as_token: &str, bot: OwnedUserId) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .expect("reqwest client");
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            as_token: as_token.to_owned(),
            bot,
            versions: SupportedVersions::from_parts(&["v1.11".to_owned()], &BTreeMap::new()),
        }
    }

    pub fn bot(&self) -> &UserId {
        &self.bot
    }

    async fn send<R>(
        &self,
        request: R,
        as_user: Option<&UserId>,
        path: <R::PathBuilder as PathBuilder>::Input<'_>,
    ) -> Result<R::IncomingResponse, HsError>
    where
        R: OutgoingRequest + OutgoingRequestAppserviceExt,
        for<'a> R::Authentication:
            ruma::api::auth_scheme::AuthScheme<Input<'a> = SendAccessToken<'a>>,
    {
        // The bot is the registration's sender: no identity assertion needed for it.
        let identity = match as_user {
            Some(user) if user != self.bot => AppserviceUserIdentity::new(user),
            _ => AppserviceUserIdentity::default(),
        };
        let http_request = request
            .try_into_http_request_with_identity::<Vec<u8>>(
                &self.base,
                SendAccessToken::Appservice(&self.as_token),
                identity,
                path,
            )
            .map_err(|e| HsError::Request(e.to_string()))?;
        let request = reqwest::Request::try_from(http_request)?;
        let response = self.http.execute(request).await?;
        let status = response.status();
        let retry_after_header = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut builder = axum::http::Response::builder().status(status);
        for (name, value) in response.headers() {
            builder = builder.header(name, value);
        }
        let body = response.bytes().await?;
        let http_response = builder
            .body(body.as_ref())
            .map_err(|e| HsError::Response(e.to_string()))?;
        R::IncomingResponse::try_from_http_response(http_response).map_err(|e| match e {
            ruma::api::error::FromHttpResponseError::Server(err) => {
                let (errcode, message) = match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(v) => (
                        v["errcode"].as_str().unwrap_or("M_UNKNOWN").to_owned(),
                        v["error"].as_str().unwrap_or("").to_owned(),
                    ),
                    Err(_) => ("M_UNKNOWN".to_owned(), err.to_string()),
                };
                // 429: the homeserver says when to come back (body `retry_after_ms` or header).
                let retry_after = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["retry_after_ms"].as_u64())
                    .map(Duration::from_millis)
                    .or(retry_after_header);
                HsError::Matrix {
                    status: status.as_u16(),
                    errcode,
                    message,
                    retry_after,
                }
            }
            other => HsError::Response(other.to_string()),
        })
    }

    fn versions(&self) -> Cow<'_, SupportedVersions> {
        Cow::Borrowed(&self.versions)
    }

    /// `POST /_matrix/client/v1/appservice/{id}/ping`: checks the homeserver can reach us, and
    /// makes it retry failed transactions at once.
    pub async fn ping(&self, appservice_id: &str) -> Result<Duration, HsError> {
        let response = self
            .send(
                request_ping::v1::Request::new(appservice_id.to_owned()),
                None,
                self.versions(),
            )
            .await?;
        Ok(response.duration)
    }

    /// Registers a puppet (`m.login.application_service`, no device); `M_USER_IN_USE` is success.
    pub async fn ensure_registered(&self, localpart: &str) -> Result<(), HsError> {
        let mut request = register::v3::Request::new();
        request.username = Some(localpart.to_owned());
        request.login_type = Some(register::LoginType::ApplicationService);
        request.inhibit_login = true;
        match self.send(request, None, self.versions()).await {
            Ok(_) => Ok(()),
            Err(HsError::Matrix { errcode, .. }) if errcode == "M_USER_IN_USE" => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn join(&self, room_id: &OwnedRoomId, as_user: &UserId) -> Result<(), HsError> {
        self.send(
            join_room_by_id::v3::Request::new(room_id.clone()),
            Some(as_user),
            self.versions(),
        )
        .await?;
        Ok(())
    }

    pub async fn leave(
        &self,
        room_id: &OwnedRoomId,
        as_user: &UserId,
        reason: &str,
    ) -> Result<(), HsError> {
        let mut request = leave_room::v3::Request::new(room_id.clone());
        request.reason = Some(reason.to_owned());
        self.send(request, Some(as_user), self.versions()).await?;
        Ok(())
    }

    /// Sends a message-like event as `as_user` with the given client transaction id (the
    /// homeserver deduplicates retries by it).
    pub async fn send_event(
        &self,
        room_id: &OwnedRoomId,
        as_user: &UserId,
        txn_id: &str,
        event_type: &str,
        content: &serde_json::Value,
    ) -> Result<OwnedEventId, HsError> {
        let raw = Raw::<AnyMessageLikeEventContent>::from_json(
            serde_json::value::to_raw_value(content)
                .map_err(|e| HsError::Request(e.to_string()))?,
        );
        let request = send_message_event::v3::Request::new_raw(
            room_id.clone(),
            OwnedTransactionId::from(txn_id),
            MessageLikeEventType::from(event_type),
            raw,
        );
        Ok(self
            .send(request, Some(as_user), self.versions())
            .await?
            .event_id)
    }

    pub async fn redact(
        &self,
        room_id: &OwnedRoomId,
        as_user: &UserId,
        event_id: OwnedEventId,
        txn_id: &str,
        reason: Option<String>,
    ) -> Result<OwnedEventId, HsError> {
        let mut request = redact_event::v3::Request::new(
            room_id.clone(),
            event_id,
            OwnedTransactionId::from(txn_id),
        );
        request.reason = reason;
        Ok(self
            .send(request, Some(as_user), self.versions())
            .await?
            .event_id)
    }

    pub async fn typing(
        &self,
        room_id: &OwnedRoomId,
        as_user: &UserId,
        timeout: Option<Duration>,
    ) -> Result<(), HsError> {
        use create_typing_event::v3::{Typing, TypingInfo};
        let state = match timeout {
            Some(t) => Typing::Yes(TypingInfo::new(t)),
            None => Typing::No,
        };
        self.send(
            create_typing_event::v3::Request::new(as_user.to_owned(), room_id.clone(), state),
            Some(as_user),
            self.versions(),
        )
        .await?;
        Ok(())
    }

    pub async fn read_receipt(
        &self,
        room_id: &OwnedRoomId,
        as_user: &UserId,
        event_id: OwnedEventId,
    ) -> Result<(), HsError> {
        let request = create_receipt::v3::Request::new(
            room_id.clone(),
            create_receipt::v3::ReceiptType::Read,
            event_id,
        );
        self.send(request, Some(as_user), self.versions()).await?;
        Ok(())
    }

    pub async fn set_display_name(&self, user: &UserId, name: &str) -> Result<(), HsError> {
        #[allow(deprecated)]
        let request = set_display_name::v3::Request::new(user.to_owned(), Some(name.to_owned()));
        self.send(request, Some(user), self.versions()).await?;
        Ok(())
    }

    pub async fn set_avatar_url(&self, user: &UserId, url: OwnedMxcUri) -> Result<(), HsError> {
        #[allow(deprecated)]
        let request = set_avatar_url::v3::Request::new(user.to_owned(), Some(url));
        self.send(request, Some(user), self.versions()).await?;
        Ok(())
    }

    /// Uploads media as the bot; returns its `mxc://` URI.
    pub async fn upload(
        &self,
        bytes: Vec<u8>,
        content_type: &str,
        filename: &str,
    ) -> Result<OwnedMxcUri, HsError> {
        let mut request = create_content::v3::Request::new(bytes);
        request.content_type = Some(content_type.to_owned());
        request.filename = Some(filename.to_owned());
        Ok(self.send(request, None, self.versions()).await?.content_uri)
    }

    /// The latest `limit` timeline events of a room, newest first, read as `as_user`.
    pub async fn recent_events(
        &self,
        room_id: &OwnedRoomId,
        as_user: &UserId,
        limit: u32,
    ) -> Result<Vec<Raw<ruma::events::AnyTimelineEvent>>, HsError> {
        let mut request = get_message_events::v3::Request::backward(room_id.clone());
        request.limit = limit.into();
        Ok(self
            .send(request, Some(as_user), self.versions())
            .await?
            .chunk)
    }

    /// Display names of the room's joined members.
    pub async fn member_names(
        &self,
        room_id: &OwnedRoomId,
        as_user: &UserId,
    ) -> Result<BTreeMap<String, String>, HsError> {
        let response = self
            .send(
                joined_members::v3::Request::new(room_id.clone()),
                Some(as_user),
                self.versions(),
            )
            .await?;
        Ok(response
            .joined
            .into_iter()
            .filter_map(|(user, member)| Some((user.to_string(), member.display_name?)))
            .collect())
    }

    /// The room's full current state, read as `as_user`.
    pub async fn room_state(
        &self,
        room_id: &OwnedRoomId,
        as_user: &UserId,
    ) -> Result<Vec<Raw<AnyStateEvent>>, HsError> {
        let response = self
            .send(
                get_state_events::v3::Request::new(room_id.clone()),
                Some(as_user),
                self.versions(),
            )
            .await?;
        Ok(response.room_state)
    }
}
