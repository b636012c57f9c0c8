//! The bridge's client of the homeserver's client-server API: ruma request types sent with
//! reqwest, authenticated with the as_token (header only), acting as the bot or, by identity
//! assertion (`?user_id=`, and `device_id` for an agent's own device), as a puppet. Errors are
//! parsed by ruma (`errcode`, `retry_after_ms`, `Retry-After`).

use std::{borrow::Cow, collections::BTreeMap, time::Duration};

use ruma::{
    DeviceId, EventId, OwnedEventId, OwnedMxcUri, OwnedTransactionId, OwnedUserId, RoomId, UserId,
    api::{
        AppserviceUserIdentity, IncomingResponseExt, OutgoingRequest, OutgoingRequestAppserviceExt,
        SupportedVersions,
        auth_scheme::SendAccessToken,
        client::{
            account::register,
            appservice::request_ping,
            media::create_content,
            membership::{
                invite_user::{self, v3::InviteUserId},
                join_room_by_id, joined_members, joined_rooms, leave_room,
            },
            message::{get_message_events, send_message_event},
            profile::{set_avatar_url, set_display_name},
            receipt::create_receipt,
            redact::redact_event,
            room::get_room_event,
            state::{get_state_event_for_key, get_state_events},
            typing::create_typing_event,
        },
        error::{ErrorKind, FromHttpResponseError, LimitExceededErrorData, RetryAfter},
        path_builder::PathBuilder,
    },
    events::{AnyMessageLikeEventContent, AnyStateEvent, AnyTimelineEvent, MessageLikeEventType},
    serde::Raw,
};

/// Errors talking to the homeserver.
#[derive(Debug, thiserror::Error)]
pub enum HsError {
    /// Not reachable (connection refused, timeout, reset).
    #[error("homeserver unreachable: {0}")]
    Network(#[from] reqwest::Error),
    /// A Matrix error response.
    #[error("homeserver answered {0}")]
    Matrix(ruma::api::error::Error),
    /// A success response ruma could not parse.
    #[error("unexpected homeserver response: {0}")]
    Response(String),
    /// The request could not be built (an id or URL problem).
    #[error("cannot build request: {0}")]
    Request(String),
    /// The homeserver asks for user-interactive authentication.
    #[error("the homeserver asks for interactive authentication")]
    Uiaa(Box<ruma::api::client::uiaa::UiaaInfo>),
}

/// The error types of ruma endpoints, as [`HsError`]s.
pub trait EndpointErrorExt {
    /// The error as an [`HsError`].
    fn into_hs_error(self) -> HsError;
}

impl EndpointErrorExt for ruma::api::error::Error {
    fn into_hs_error(self) -> HsError {
        HsError::Matrix(self)
    }
}

impl EndpointErrorExt for ruma::api::client::uiaa::UiaaResponse {
    fn into_hs_error(self) -> HsError {
        match self {
            Self::MatrixError(e) => HsError::Matrix(e),
            Self::AuthResponse(info) => HsError::Uiaa(Box::new(info)),
        }
    }
}

impl HsError {
    /// How long a 429 asked us to wait.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            HsError::Matrix(e) => match e.error_kind() {
                Some(ErrorKind::LimitExceeded(LimitExceededErrorData {
                    retry_after: Some(RetryAfter::Delay(d)),
                    ..
                })) => Some(*d),
                Some(ErrorKind::LimitExceeded(LimitExceededErrorData {
                    retry_after: Some(RetryAfter::DateTime(at)),
                    ..
                })) => at.duration_since(std::time::SystemTime::now()).ok(),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether trying again later may succeed (network, 429, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            HsError::Network(_) => true,
            HsError::Matrix(e) => e.status_code.as_u16() == 429 || e.status_code.is_server_error(),
            _ => false,
        }
    }

    /// The Matrix error kind, if the homeserver sent a standard error body.
    pub fn kind(&self) -> Option<&ErrorKind> {
        match self {
            HsError::Matrix(e) => e.error_kind(),
            _ => None,
        }
    }
}

/// A homeserver's answer as ruma's response type of the endpoint (its Matrix error otherwise).
pub(super) async fn parse_response<T>(response: reqwest::Response) -> Result<T, HsError>
where
    T: ruma::api::IncomingResponse,
    T::EndpointError: EndpointErrorExt,
{
    let mut builder = http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        builder = builder.header(name, value);
    }
    let body = response.bytes().await?;
    let http_response = builder
        .body(body.as_ref())
        .map_err(|e| HsError::Response(e.to_string()))?;
    T::try_from_http_response(http_response).map_err(|e| match e {
        FromHttpResponseError::Server(error) => error.into_hs_error(),
        other => HsError::Response(other.to_string()),
    })
}

/// The homeserver, as the appservice sees it.
#[derive(Clone)]
pub struct Homeserver {
    http: reqwest::Client,
    base: String,
    as_token: String,
    bot: OwnedUserId,
    versions: SupportedVersions,
    /// The devices of puppets that have one (end-to-end encryption): every request made as such
    /// a puppet asserts its device.
    devices: std::sync::Arc<std::sync::RwLock<BTreeMap<OwnedUserId, ruma::OwnedDeviceId>>>,
}

impl Homeserver {
    /// A client of `base` (the client-server API URL) authenticated with `as_token`.
    pub fn new(base: &str, as_token: &str, bot: OwnedUserId) -> Result<Self, HsError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            as_token: as_token.to_owned(),
            bot,
            versions: SupportedVersions::from_parts(&["v1.11".to_owned()], &BTreeMap::new()),
            devices: Default::default(),
        })
    }

    fn versions(&self) -> Cow<'_, SupportedVersions> {
        Cow::Borrowed(&self.versions)
    }

    /// Sends any ruma request as the bot (`as_user` `None` or the bot) or as a puppet, optionally
    /// asserting one of the puppet's devices (`device_id` and MSC3202's unstable parameter).
    pub async fn send_as<R>(
        &self,
        request: R,
        as_user: Option<&UserId>,
        device: Option<&DeviceId>,
    ) -> Result<R::IncomingResponse, HsError>
    where
        R: OutgoingRequest + OutgoingRequestAppserviceExt,
        R::EndpointError: EndpointErrorExt,
        for<'a> R::Authentication:
            ruma::api::auth_scheme::AuthScheme<Input<'a> = SendAccessToken<'a>>,
        for<'a> <R::PathBuilder as PathBuilder>::Input<'a>: From<Cow<'a, SupportedVersions>>,
    {
        let request = self.http_request(request, as_user, device)?;
        let response = self.http.execute(request).await?;
        parse_response(response).await
    }

    /// `request` as an HTTP request of the bot (`as_user` `None` or the bot) or of a puppet,
    /// optionally asserting one of the puppet's devices.
    pub(super) fn http_request<R>(
        &self,
        request: R,
        as_user: Option<&UserId>,
        device: Option<&DeviceId>,
    ) -> Result<reqwest::Request, HsError>
    where
        R: OutgoingRequest + OutgoingRequestAppserviceExt,
        for<'a> R::Authentication:
            ruma::api::auth_scheme::AuthScheme<Input<'a> = SendAccessToken<'a>>,
        for<'a> <R::PathBuilder as PathBuilder>::Input<'a>: From<Cow<'a, SupportedVersions>>,
    {
        // The bot is the registration's sender: no identity assertion needed for it, unless a
        // device is asserted. Synapse looks a device up under the asserted user, and with none
        // it answers 500 (it binds its own `UserID` object as the query parameter).
        let mut identity = match as_user {
            Some(user) if user != self.bot || device.is_some() => AppserviceUserIdentity::new(user),
            _ => AppserviceUserIdentity::default(),
        };
        identity.device_id = device;
        let mut http_request = request
            .try_into_http_request_with_identity::<Vec<u8>>(
                &self.base,
                SendAccessToken::Appservice(&self.as_token),
                identity,
                self.versions().into(),
            )
            .map_err(|e| HsError::Request(e.to_string()))?;
        if let Some(device) = device {
            // Homeservers implementing only the unstable MSC3202 name read this one.
            add_query(
                http_request.uri_mut(),
                "org.matrix.msc3202.device_id",
                device.as_str(),
            )?;
        }
        Ok(reqwest::Request::try_from(http_request)?)
    }

    /// The device asserted for requests as `user`, if it has one.
    pub(super) fn device_of(&self, user: &UserId) -> Option<ruma::OwnedDeviceId> {
        self.devices
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .cloned()
    }

    /// The HTTP client (shared connection pool).
    pub(super) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// From now on, requests as `user` assert `device` (its device exists on the homeserver).
    pub fn set_device(&self, user: &UserId, device: &DeviceId) {
        self.devices
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user.to_owned(), device.to_owned());
    }

    async fn send<R>(
        &self,
        request: R,
        as_user: Option<&UserId>,
    ) -> Result<R::IncomingResponse, HsError>
    where
        R: OutgoingRequest + OutgoingRequestAppserviceExt,
        R::EndpointError: EndpointErrorExt,
        for<'a> R::Authentication:
            ruma::api::auth_scheme::AuthScheme<Input<'a> = SendAccessToken<'a>>,
        for<'a> <R::PathBuilder as PathBuilder>::Input<'a>: From<Cow<'a, SupportedVersions>>,
    {
        let device = as_user.and_then(|user| self.device_of(user));
        self.send_as(request, as_user, device.as_deref()).await
    }

    /// `POST /_matrix/client/v1/appservice/{id}/ping`: checks the homeserver can reach us, and
    /// makes it retry failed transactions at once.
    pub async fn ping(&self, appservice_id: &str) -> Result<Duration, HsError> {
        let response = self
            .send(
                request_ping::v1::Request::new(appservice_id.to_owned()),
                None,
            )
            .await?;
        Ok(response.duration)
    }

    /// The bot's Matrix id (the appservice's sender).
    pub fn bot(&self) -> &UserId {
        &self.bot
    }

    /// Registers a puppet (`m.login.application_service`, no device); `M_USER_IN_USE` is success.
    pub async fn ensure_registered(&self, localpart: &str) -> Result<(), HsError> {
        let mut request = register::v3::Request::new();
        request.username = Some(localpart.to_owned());
        request.login_type = Some(register::LoginType::ApplicationService);
        request.inhibit_login = true;
        match self.send(request, None).await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.kind(), Some(ErrorKind::UserInUse)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Joins a room as `as_user`.
    pub async fn join(&self, room_id: &RoomId, as_user: &UserId) -> Result<(), HsError> {
        self.send(
            join_room_by_id::v3::Request::new(room_id.to_owned()),
            Some(as_user),
        )
        .await?;
        Ok(())
    }

    /// Leaves a room (or refuses an invite) as `as_user`, with a reason.
    pub async fn leave(
        &self,
        room_id: &RoomId,
        as_user: &UserId,
        reason: &str,
    ) -> Result<(), HsError> {
        let mut request = leave_room::v3::Request::new(room_id.to_owned());
        request.reason = Some(reason.to_owned());
        self.send(request, Some(as_user)).await?;
        Ok(())
    }

    /// Invites `target` into a room as `as_user` (the bot, inviting a puppet).
    pub async fn invite(
        &self,
        room_id: &RoomId,
        as_user: &UserId,
        target: &UserId,
    ) -> Result<(), HsError> {
        let request = invite_user::v3::Request::new(
            room_id.to_owned(),
            InviteUserId::new(target.to_owned()).into(),
        );
        self.send(request, Some(as_user)).await?;
        Ok(())
    }

    /// The rooms `as_user` is joined to, as the homeserver knows them.
    pub async fn joined_rooms(&self, as_user: &UserId) -> Result<Vec<ruma::OwnedRoomId>, HsError> {
        Ok(self
            .send(joined_rooms::v3::Request::new(), Some(as_user))
            .await?
            .joined_rooms)
    }

    /// Sends a message-like event as `as_user` with the given client transaction id (the
    /// homeserver deduplicates retries by it).
    pub async fn send_event(
        &self,
        room_id: &RoomId,
        as_user: &UserId,
        txn_id: &str,
        event_type: &str,
        content: Raw<AnyMessageLikeEventContent>,
    ) -> Result<OwnedEventId, HsError> {
        let request = send_message_event::v3::Request::new_raw(
            room_id.to_owned(),
            OwnedTransactionId::from(txn_id),
            MessageLikeEventType::from(event_type),
            content,
        );
        Ok(self.send(request, Some(as_user)).await?.event_id)
    }

    /// Redacts an event as `as_user`.
    pub async fn redact(
        &self,
        room_id: &RoomId,
        as_user: &UserId,
        event_id: OwnedEventId,
        txn_id: &str,
        reason: Option<String>,
    ) -> Result<OwnedEventId, HsError> {
        let mut request = redact_event::v3::Request::new(
            room_id.to_owned(),
            event_id,
            OwnedTransactionId::from(txn_id),
        );
        request.reason = reason;
        Ok(self.send(request, Some(as_user)).await?.event_id)
    }

    /// Starts (`Some(timeout)`) or stops typing as `as_user`.
    pub async fn typing(
        &self,
        room_id: &RoomId,
        as_user: &UserId,
        timeout: Option<Duration>,
    ) -> Result<(), HsError> {
        use create_typing_event::v3::{Typing, TypingInfo};
        let state = match timeout {
            Some(t) => Typing::Yes(TypingInfo::new(t)),
            None => Typing::No,
        };
        self.send(
            create_typing_event::v3::Request::new(as_user.to_owned(), room_id.to_owned(), state),
            Some(as_user),
        )
        .await?;
        Ok(())
    }

    /// Sends a read receipt as `as_user`.
    pub async fn read_receipt(
        &self,
        room_id: &RoomId,
        as_user: &UserId,
        event_id: OwnedEventId,
    ) -> Result<(), HsError> {
        let request = create_receipt::v3::Request::new(
            room_id.to_owned(),
            create_receipt::v3::ReceiptType::Read,
            event_id,
        );
        self.send(request, Some(as_user)).await?;
        Ok(())
    }

    /// Sets a puppet's display name.
    pub async fn set_display_name(&self, user: &UserId, name: &str) -> Result<(), HsError> {
        #[allow(deprecated)]
        let request = set_display_name::v3::Request::new(user.to_owned(), Some(name.to_owned()));
        self.send(request, Some(user)).await?;
        Ok(())
    }

    /// Sets a puppet's avatar.
    pub async fn set_avatar_url(&self, user: &UserId, url: OwnedMxcUri) -> Result<(), HsError> {
        #[allow(deprecated)]
        let request = set_avatar_url::v3::Request::new(user.to_owned(), Some(url));
        self.send(request, Some(user)).await?;
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
        Ok(self.send(request, None).await?.content_uri)
    }

    /// One event of a room, read as `as_user`; `None` when the homeserver does not know it or
    /// does not show it to `as_user` (404).
    pub async fn room_event(
        &self,
        room_id: &RoomId,
        as_user: &UserId,
        event_id: &EventId,
    ) -> Result<Option<Raw<AnyTimelineEvent>>, HsError> {
        let request = get_room_event::v3::Request::new(room_id.to_owned(), event_id.to_owned());
        match self.send(request, Some(as_user)).await {
            Ok(response) => Ok(Some(response.event)),
            Err(HsError::Matrix(e)) if matches!(e.error_kind(), Some(ErrorKind::NotFound)) => {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// One page of a room's timeline going back from `from` (the newest events when `None`),
    /// at most `limit` events, newest first, read as `as_user`; with the token of the next
    /// (older) page, `None` at the start of the room.
    pub async fn timeline_page(
        &self,
        room_id: &RoomId,
        as_user: &UserId,
        from: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<Raw<AnyTimelineEvent>>, Option<String>), HsError> {
        let mut request = get_message_events::v3::Request::backward(room_id.to_owned());
        request.from = from.map(str::to_owned);
        request.limit = limit.into();
        let response = self.send(request, Some(as_user)).await?;
        // An empty page ends the room's history whatever token comes with it.
        let end = response.end.filter(|_| !response.chunk.is_empty());
        Ok((response.chunk, end))
    }

    /// Display names of the room's joined members.
    pub async fn member_names(
        &self,
        room_id: &RoomId,
        as_user: &UserId,
    ) -> Result<BTreeMap<OwnedUserId, String>, HsError> {
        Ok(self
            .joined_members(room_id, as_user)
            .await?
            .into_iter()
            .filter_map(|(user, member)| Some((user, member.display_name?)))
            .collect())
    }

    /// The user ids of the room's joined members.
    pub async fn joined_member_ids(
        &self,
        room_id: &RoomId,
        as_user: &UserId,
    ) -> Result<Vec<OwnedUserId>, HsError> {
        Ok(self
            .joined_members(room_id, as_user)
            .await?
            .into_keys()
            .collect())
    }

    async fn joined_members(
        &self,
        room_id: &RoomId,
        as_user: &UserId,
    ) -> Result<BTreeMap<OwnedUserId, joined_members::v3::RoomMember>, HsError> {
        let request = joined_members::v3::Request::new(room_id.to_owned());
        Ok(self.send(request, Some(as_user)).await?.joined)
    }

    /// The room's `m.room.encryption` state content, `None` when the room is not encrypted.
    pub async fn encryption_state(
        &self,
        room_id: &RoomId,
        as_user: &UserId,
    ) -> Result<Option<ruma::events::room::encryption::RoomEncryptionEventContent>, HsError> {
        let request = get_state_event_for_key::v3::Request::new(
            room_id.to_owned(),
            ruma::events::StateEventType::RoomEncryption,
            String::new(),
        );
        match self.send(request, Some(as_user)).await {
            // Unreadable state is an error, never "not encrypted": nothing goes out in clear
            // into a room that may be encrypted.
            Ok(response) => serde_json::from_str(response.event_or_content.get())
                .map(Some)
                .map_err(|e| HsError::Response(format!("unreadable m.room.encryption: {e}"))),
            // Only "no such state event" means plaintext (not an endpoint the server lacks).
            Err(HsError::Matrix(e)) if matches!(e.error_kind(), Some(ErrorKind::NotFound)) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The room's full current state, read as `as_user`.
    pub async fn room_state(
        &self,
        room_id: &RoomId,
        as_user: &UserId,
    ) -> Result<Vec<Raw<AnyStateEvent>>, HsError> {
        let response = self
            .send(
                get_state_events::v3::Request::new(room_id.to_owned()),
                Some(as_user),
            )
            .await?;
        Ok(response.room_state)
    }
}

/// Appends `key=value` (percent-encoded) to a URI's query.
fn add_query(uri: &mut http::Uri, key: &str, value: &str) -> Result<(), HsError> {
    let encoded: String = url_encode(value);
    let pq = match uri.path_and_query() {
        Some(pq) => match pq.query() {
            Some(q) => format!("{}?{q}&{key}={encoded}", pq.path()),
            None => format!("{}?{key}={encoded}", pq.path()),
        },
        None => format!("/?{key}={encoded}"),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        pq.parse()
            .map_err(|e: http::uri::InvalidUri| HsError::Request(e.to_string()))?,
    );
    *uri = http::Uri::from_parts(parts).map_err(|e| HsError::Request(e.to_string()))?;
    Ok(())
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
