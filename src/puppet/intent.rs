//! [`PuppetIntent`]: everything done as one agent. It makes sure the puppet exists, has its
//! profile and is in the room before acting, and sends through the durable outbox; ephemeral
//! actions (typing, receipts) and reads go straight to the homeserver as the puppet.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use ruma::{OwnedEventId, OwnedUserId, RoomId, UserId, events::AnyTimelineEvent, serde::Raw};

use super::{PuppetError, Puppets, Send, history, media};
use crate::{
    db::outbox::{Enqueued, OutboxItem},
    model::{Agent, ids::OutboxId},
};

/// Acting as one agent.
#[derive(Clone)]
pub struct PuppetIntent {
    puppets: Arc<Puppets>,
    agent: Arc<Agent>,
}

impl PuppetIntent {
    pub(super) fn new(puppets: Arc<Puppets>, agent: Arc<Agent>) -> Self {
        Self { puppets, agent }
    }

    /// The agent.
    pub fn agent(&self) -> &Arc<Agent> {
        &self.agent
    }

    /// The puppet's Matrix id.
    pub fn user_id(&self) -> &UserId {
        &self.agent.user_id
    }

    /// Registered on the homeserver (no profile yet): what the homeserver's user query needs
    /// before it goes on, kept short because the homeserver waits for it.
    pub async fn ensure_registered(&self) -> Result<(), PuppetError> {
        self.puppets
            .hs
            .ensure_registered(self.user_id().localpart())
            .await?;
        Ok(())
    }

    /// Registered, named and with its avatar.
    pub async fn ensure_ready(&self) -> Result<(), PuppetError> {
        self.puppets.ensure_ready(&self.agent).await
    }

    /// Ready and joined to `room` (unless the mirror already knows it is a member): actions such
    /// as typing fail, or worse are silently dropped, before the join.
    pub async fn ensure_joined(&self, room: &RoomId) -> Result<(), PuppetError> {
        self.ensure_ready().await?;
        if self
            .puppets
            .store
            .channels()
            .agent_in_room(room.as_str(), self.agent.id)
            .await?
        {
            return Ok(());
        }
        self.ensure_device().await;
        self.puppets.hs.join(room, self.user_id()).await?;
        Ok(())
    }

    /// With encryption on, the agent's device exists with its keys uploaded. Called before
    /// every join: a client encrypts only for the devices it sees when it sends, so a device
    /// made after the join would miss the room key of the first message (an agent created
    /// while the bridge runs has no device until it first needs one).
    async fn ensure_device(&self) {
        // A device that cannot be made now must not keep the agent out of the room: it is
        // made again when the agent first needs it, as before.
        if let Some(crypto) = self.puppets.crypto()
            && let Err(error) = crypto.machine(self.user_id()).await
        {
            tracing::warn!(user = %self.user_id(), %error, "{}", crate::crypto::explain(&error));
        }
    }

    /// Joins `room` (accepting an invite) after making sure the puppet is ready, its
    /// encryption device included.
    pub async fn join(&self, room: &RoomId) -> Result<(), PuppetError> {
        self.ensure_ready().await?;
        self.ensure_device().await;
        self.puppets.hs.join(room, self.user_id()).await?;
        Ok(())
    }

    /// Joins `room` through `via` (a room upgrade's replacement: servers that are in it).
    pub async fn join_via(
        &self,
        room: &RoomId,
        via: Vec<ruma::OwnedServerName>,
    ) -> Result<(), PuppetError> {
        self.ensure_ready().await?;
        self.ensure_device().await;
        self.puppets.hs.join_via(room, self.user_id(), via).await?;
        Ok(())
    }

    /// Leaves `room` (or refuses an invite) with a reason.
    pub async fn leave(&self, room: &RoomId, reason: &str) -> Result<(), PuppetError> {
        self.ensure_registered().await?;
        self.puppets.hs.leave(room, self.user_id(), reason).await?;
        Ok(())
    }

    /// The full state of `room`, as the agent sees it.
    pub async fn room_state(
        &self,
        room: &RoomId,
    ) -> Result<Vec<ruma::serde::Raw<ruma::events::AnyStateEvent>>, PuppetError> {
        Ok(self.puppets.hs.room_state(room, self.user_id()).await?)
    }

    /// Leaves every room the homeserver has the agent in (a deleted or disabled agent), saying
    /// `reason`. Fails only when the rooms cannot be listed; returns how many rooms there were,
    /// and each room it could not leave with why (the others are still left).
    pub async fn leave_all(
        &self,
        reason: &str,
    ) -> Result<(usize, Vec<(ruma::OwnedRoomId, PuppetError)>), PuppetError> {
        let hs = &self.puppets.hs;
        let rooms = hs.joined_rooms(self.user_id()).await?;
        let count = rooms.len();
        let mut failed = Vec::new();
        for room in rooms {
            if let Err(error) = hs.leave(&room, self.user_id(), reason).await {
                failed.push((room, error.into()));
            }
        }
        Ok((count, failed))
    }

    /// Queues a send in `room`.
    pub async fn send(&self, room: &RoomId, send: Send) -> Result<Enqueued, PuppetError> {
        Ok(self.puppets.enqueue(&self.agent, room, send).await?)
    }

    /// Waits for a queued send to finish, up to `timeout`.
    pub async fn wait(&self, id: OutboxId, timeout: Duration) -> Result<OutboxItem, PuppetError> {
        Ok(self.puppets.wait(id, timeout).await?)
    }

    /// The agent's send queued under `key`, if any.
    pub async fn queued(&self, key: &str) -> Result<Option<OutboxItem>, PuppetError> {
        Ok(self
            .puppets
            .store
            .outbox()
            .by_key(self.agent.id, key)
            .await?)
    }

    /// Shows (`Some(timeout)`) or stops typing in `room`.
    pub async fn typing(
        &self,
        room: &RoomId,
        timeout: Option<Duration>,
    ) -> Result<(), PuppetError> {
        self.ensure_joined(room).await?;
        self.puppets
            .hs
            .typing(room, self.user_id(), timeout)
            .await?;
        Ok(())
    }

    /// Moves the puppet's read receipt to `event`.
    pub async fn read_receipt(
        &self,
        room: &RoomId,
        event: OwnedEventId,
    ) -> Result<(), PuppetError> {
        self.ensure_joined(room).await?;
        self.puppets
            .hs
            .read_receipt(room, self.user_id(), event)
            .await?;
        Ok(())
    }

    /// The room's recent timeline as the agent reads it, newest first: as many `/messages`
    /// pages as hold `messages` messages, reading at most `max_events` events. Edits do not count
    /// towards `messages`, so a streamed answer's many edits cannot push the conversation out
    /// of the window. Encrypted events are decrypted by the agent's own device; one it cannot
    /// decrypt is left out, as a client shows it as undecryptable.
    pub async fn history(
        &self,
        room: &RoomId,
        messages: usize,
        max_events: usize,
        since: Option<&ruma::EventId>,
    ) -> Result<Vec<Raw<AnyTimelineEvent>>, PuppetError> {
        let mut events = Vec::new();
        let mut counted = 0;
        // Bounded by what was read, not by what was kept: a room of events the agent cannot
        // decrypt (kept: none) must not be paged to its start.
        let mut read = 0;
        let mut from: Option<String> = None;
        while counted < messages && read < max_events {
            let limit = (max_events - read).min(100) as u32;
            let (page, end) = self
                .puppets
                .hs
                .timeline_page(room, self.user_id(), from.as_deref(), limit)
                .await?;
            read += page.len();
            for raw in page {
                // Nothing at or before the forget mark is read: the conversation starts after it.
                if since.is_some_and(|mark| history::event_id(&raw).as_deref() == Some(mark)) {
                    return Ok(events);
                }
                counted += usize::from(history::is_message(&raw));
                if history::is_encrypted(&raw) {
                    let Some(crypto) = self.puppets.crypto() else {
                        continue;
                    };
                    if let Some(clear) = crypto.decrypt_as(self.user_id(), room, &raw).await? {
                        events.push(clear);
                    }
                } else {
                    events.push(raw);
                }
            }
            match end {
                Some(end) => from = Some(end),
                None => break,
            }
        }
        Ok(events)
    }

    /// One event of `room` as the agent reads it (decrypted by its device when encrypted);
    /// `None` when it is unknown, hidden from the agent, or does not decrypt.
    pub async fn event(
        &self,
        room: &RoomId,
        event: &ruma::EventId,
    ) -> Result<Option<Raw<AnyTimelineEvent>>, PuppetError> {
        let Some(raw) = self
            .puppets
            .hs
            .room_event(room, self.user_id(), event)
            .await?
        else {
            return Ok(None);
        };
        if !history::is_encrypted(&raw) {
            return Ok(Some(raw));
        }
        match self.puppets.crypto() {
            Some(crypto) => Ok(crypto.decrypt_as(self.user_id(), room, &raw).await?),
            None => Ok(None),
        }
    }

    /// Display names of `room`'s joined members.
    pub async fn member_names(
        &self,
        room: &RoomId,
    ) -> Result<BTreeMap<OwnedUserId, String>, PuppetError> {
        Ok(self.puppets.hs.member_names(room, self.user_id()).await?)
    }

    /// Media sent to the agent (`source` of an `m.image`, `m.file`, …), downloaded as the agent
    /// and decrypted when it came encrypted: at most `cap` bytes, within `timeout`.
    pub async fn media(
        &self,
        source: &ruma::events::room::MediaSource,
        cap: u64,
        timeout: Duration,
    ) -> Result<media::Fetched, media::FetchError> {
        media::fetch(&self.puppets.hs, self.user_id(), source, cap, timeout).await
    }

    /// An image sent to the agent, downloaded (decrypted when it came encrypted) and encoded as a
    /// `data:` URI while it is read: at most `cap` bytes, within `timeout`.
    pub async fn image_uri(
        &self,
        source: &ruma::events::room::MediaSource,
        cap: u64,
        timeout: Duration,
    ) -> Result<media::Encoded, media::FetchError> {
        media::fetch_image_uri(&self.puppets.hs, self.user_id(), source, cap, timeout).await
    }

    /// Uploads a file the agent sends into `room` (sealed first when the room is encrypted);
    /// where its bytes are, for the message that carries it.
    pub async fn upload(
        &self,
        room: &RoomId,
        bytes: Vec<u8>,
        content_type: &str,
        filename: &str,
    ) -> Result<ruma::events::room::MediaSource, PuppetError> {
        media::upload(
            &self.puppets.hs,
            self.puppets.crypto().map(|c| &**c),
            self.user_id(),
            room,
            bytes,
            content_type,
            filename,
        )
        .await
    }
}
