//! Rooms the bridge makes and follows: creating a room (the admin API's channels) and joining a
//! room through named servers (a room upgrade's replacement, which the bridge's homeserver may
//! not know yet). Also the typed content of the `city.daarion.channel` state event that places
//! a room in a microDAO.

use ruma::{
    OwnedRoomId, OwnedRoomOrAliasId, OwnedServerName, RoomId, UserId,
    api::client::{membership::join_room_by_id_or_alias, room::create_room},
    events::macros::EventContent,
};
use serde::{Deserialize, Serialize};

use super::{Homeserver, HsError};

/// `city.daarion.channel` state: places a room in a microDAO. The bridge writes it into the
/// initial state of the rooms it creates, so the mirror places the room where the platform
/// asked, whichever of the creation's answer and the room's first transaction comes first.
#[derive(Clone, Debug, Deserialize, Serialize, EventContent)]
#[ruma_event(type = "city.daarion.channel", kind = State, state_key_type = ruma::events::EmptyStateKey)]
pub struct DaarionChannelEventContent {
    /// External id of the microDAO (`microdao:garden`).
    pub microdao: String,
    /// The channel's slug in the microDAO.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    /// `public`, `private` or `microdao`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visibility: Option<String>,
    /// The channel id the bridge chose before creating the room (bridge extension): honoured
    /// only when the bridge bot sent the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
}

impl Homeserver {
    /// Creates a room as `as_user` (the bot); the homeserver's answer is the room id.
    pub async fn create_room(
        &self,
        as_user: &UserId,
        request: create_room::v3::Request,
    ) -> Result<OwnedRoomId, HsError> {
        let device = self.device_of(as_user);
        Ok(self
            .send_as(request, Some(as_user), device.as_deref())
            .await?
            .room_id)
    }

    /// Joins `room` as `as_user` through `via` (servers in the room: a room our homeserver is
    /// not in yet can only be joined over federation through one of them).
    pub async fn join_via(
        &self,
        room: &RoomId,
        as_user: &UserId,
        via: Vec<OwnedServerName>,
    ) -> Result<(), HsError> {
        let mut request =
            join_room_by_id_or_alias::v3::Request::new(OwnedRoomOrAliasId::from(room.to_owned()));
        request.via = via;
        let device = self.device_of(as_user);
        self.send_as(request, Some(as_user), device.as_deref())
            .await?;
        Ok(())
    }
}
