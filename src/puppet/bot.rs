//! The bridge bot acting in Matrix. Every homeserver call made as the bot goes through
//! [`BotIntent`], as every call made as an agent goes through `PuppetIntent`: joining rooms it
//! is invited to, creating rooms (the admin API's channels), refusing, inviting agents, reading a room's state, answering commands (from
//! its own device, encrypted, in an encrypted room) and pinging the homeserver.

use std::{sync::Arc, time::Duration};

use ruma::{OwnedEventId, RoomId, UserId, events::AnyStateEvent, serde::Raw};

use super::{PuppetError, content::Content};
use crate::{
    crypto::Crypto,
    matrix::{Homeserver, HsError},
};

/// Acting as the bridge bot.
#[derive(Clone)]
pub struct BotIntent {
    hs: Homeserver,
    /// The bot's device, when encryption is on.
    crypto: Option<Arc<Crypto>>,
}

impl BotIntent {
    /// The bot of `hs`, encrypting through `crypto` when it is given.
    pub fn new(hs: Homeserver, crypto: Option<Arc<Crypto>>) -> Self {
        Self { hs, crypto }
    }

    /// The bot's Matrix id.
    pub fn user_id(&self) -> &UserId {
        self.hs.bot()
    }

    /// Joins `room` (an invite it accepted).
    pub async fn join(&self, room: &RoomId) -> Result<(), HsError> {
        self.hs.join(room, self.user_id()).await
    }

    /// Joins `room` through `via` (a room upgrade's replacement room).
    pub async fn join_via(
        &self,
        room: &RoomId,
        via: Vec<ruma::OwnedServerName>,
    ) -> Result<(), HsError> {
        self.hs.join_via(room, self.user_id(), via).await
    }

    /// Creates a room (the admin API's channels); the bot is its creator.
    pub async fn create_room(
        &self,
        request: ruma::api::client::room::create_room::v3::Request,
    ) -> Result<ruma::OwnedRoomId, HsError> {
        self.hs.create_room(self.user_id(), request).await
    }

    /// Leaves `room`, saying why (an invite it refused).
    pub async fn leave(&self, room: &RoomId, reason: &str) -> Result<(), HsError> {
        self.hs.leave(room, self.user_id(), reason).await
    }

    /// Invites `user` into `room`.
    pub async fn invite(&self, room: &RoomId, user: &UserId) -> Result<(), HsError> {
        self.hs.invite(room, self.user_id(), user).await
    }

    /// The full state of `room`, as the bot sees it.
    pub async fn room_state(&self, room: &RoomId) -> Result<Vec<Raw<AnyStateEvent>>, HsError> {
        self.hs.room_state(room, self.user_id()).await
    }

    /// Round trip homeserver → bridge → homeserver (`/appservice/{id}/ping`).
    pub async fn ping(&self, appservice_id: &str) -> Result<Duration, HsError> {
        self.hs.ping(appservice_id).await
    }

    /// Sends `content` into `room` under the transaction id `txn_id` (a retry with the same id
    /// is deduplicated by the homeserver); into an encrypted room only encrypted, from the bot's
    /// own device.
    pub async fn send(
        &self,
        room: &RoomId,
        txn_id: &str,
        content: &Content,
    ) -> Result<OwnedEventId, PuppetError> {
        let raw = Raw::new(&content.to_json())
            .map_err(|e| PuppetError::Content(e.to_string()))?
            .cast_unchecked();
        let encrypted = match &self.crypto {
            Some(crypto) => {
                crypto
                    .encrypt(self.user_id(), room, content.event_type(), &raw)
                    .await?
            }
            None => None,
        };
        let (event_type, raw) = match encrypted {
            Some(encrypted) => ("m.room.encrypted", encrypted),
            None => (content.event_type(), raw),
        };
        Ok(self
            .hs
            .send_event(room, self.user_id(), txn_id, event_type, raw)
            .await?)
    }
}
