//! A borrowed view of one room event: the envelope fields the mirror routes on, with `content`
//! left as raw JSON until the event's type says which ruma content type to parse it into.

use std::borrow::Cow;

use ruma::{MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    pub event_id: OwnedEventId,
    /// Absent in state read from `/rooms/{roomId}/state` by some servers; filled by the caller.
    #[serde(default)]
    pub room_id: Option<OwnedRoomId>,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(default, borrow)]
    pub state_key: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub content: &'a RawValue,
    /// Top-level `redacts` of redactions in room versions before 11.
    #[serde(default)]
    pub redacts: Option<OwnedEventId>,
    #[serde(default, borrow)]
    pub unsigned: Option<&'a RawValue>,
}

impl Envelope<'_> {
    pub fn ts_millis(&self) -> i64 {
        i64::from(self.origin_server_ts.0)
    }

    pub fn content<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(self.content.get())
    }
}

/// `city.daarion.channel` state: places a room in a microDAO.
#[derive(Debug, Deserialize)]
pub struct DaarionChannelContent {
    pub microdao: String,
    #[serde(default)]
    pub slug: Option<String>,
    #[serde(default)]
    pub visibility: Option<String>,
}

pub const DAARION_CHANNEL: &str = "city.daarion.channel";

/// The part of `m.relates_to` the mirror needs for events it cannot parse fully (encrypted).
#[derive(Debug, Deserialize)]
pub struct RelatesTo {
    #[serde(rename = "m.relates_to", default)]
    pub relates_to: Option<RelType>,
}

#[derive(Debug, Deserialize)]
pub struct RelType {
    #[serde(default)]
    pub rel_type: Option<String>,
}

/// Stripped state of an invite (`unsigned.invite_room_state`), for naming a room before joining.
#[derive(Debug, Deserialize)]
pub struct InviteUnsigned {
    #[serde(default)]
    pub invite_room_state: Vec<StrippedState>,
}

#[derive(Debug, Deserialize)]
pub struct StrippedState {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub state_key: String,
    pub content: Box<RawValue>,
    #[serde(default)]
    pub sender: Option<OwnedUserId>,
}
