//! [`GhostIntent`]: acting as a user of the bridge's namespace that is no agent (yet), which
//! the bridge only ever registers, joins, leaves and reads rooms as (an invite to a puppet whose
//! agent row another service has not written yet). Nothing is ever sent as a ghost.

use ruma::{OwnedUserId, RoomId, UserId, events::AnyStateEvent, serde::Raw};

use super::PuppetError;
use crate::matrix::Homeserver;

/// The homeserver calls the bridge makes as a namespace user without an agent.
pub struct GhostIntent {
    hs: Homeserver,
    user: OwnedUserId,
    /// In the bridge's namespace: registered on demand. A user outside it is never registered
    /// (the homeserver would refuse), and the calls fail at the homeserver as they would for
    /// anyone the appservice may not act as.
    in_namespace: bool,
}

impl GhostIntent {
    /// Acting as `user` through `hs`; `in_namespace` says whether the bridge may register it.
    pub fn new(hs: Homeserver, user: &UserId, in_namespace: bool) -> Self {
        Self {
            hs,
            user: user.to_owned(),
            in_namespace,
        }
    }

    /// The ghost's Matrix id.
    pub fn user_id(&self) -> &UserId {
        &self.user
    }

    async fn ensure_registered(&self) -> Result<(), PuppetError> {
        if self.in_namespace {
            self.hs.ensure_registered(self.user.localpart()).await?;
        }
        Ok(())
    }

    /// Joins `room` (accepting an invite).
    pub async fn join(&self, room: &RoomId) -> Result<(), PuppetError> {
        self.ensure_registered().await?;
        self.hs.join(room, &self.user).await?;
        Ok(())
    }

    /// Leaves `room` (or refuses an invite) with a reason.
    pub async fn leave(&self, room: &RoomId, reason: &str) -> Result<(), PuppetError> {
        self.ensure_registered().await?;
        self.hs.leave(room, &self.user, reason).await?;
        Ok(())
    }

    /// The room's full current state, as the ghost sees it.
    pub async fn room_state(&self, room: &RoomId) -> Result<Vec<Raw<AnyStateEvent>>, PuppetError> {
        Ok(self.hs.room_state(room, &self.user).await?)
    }
}
