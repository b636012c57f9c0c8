//! A borrowed view of one room event: the envelope fields the mirror routes on, with `content`
//! left as raw JSON until the event's type says which ruma content type to parse it into.

use std::borrow::Cow;

use ruma::{MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::Deserialize;
use serde_json::value::RawValue;

pub use crate::model::HIDE_PREVIEW;

/// The routing fields of a room event.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    /// The event type.
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// The event id.
    pub event_id: OwnedEventId,
    /// Absent in state read from `/rooms/{roomId}/state` by some servers; filled by the caller.
    #[serde(default)]
    pub room_id: Option<OwnedRoomId>,
    /// The sender.
    pub sender: OwnedUserId,
    /// When the sender's server received it.
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// Set for state events.
    #[serde(default, borrow)]
    pub state_key: Option<Cow<'a, str>>,
    /// The content, parsed by type later.
    #[serde(borrow)]
    pub content: &'a RawValue,
    /// Top-level `redacts` of redactions in room versions before 11.
    #[serde(default)]
    pub redacts: Option<OwnedEventId>,
    /// `unsigned` (invite room state lives there).
    #[serde(default, borrow)]
    pub unsigned: Option<&'a RawValue>,
    /// A decrypted event whose text is kept out of the previews (see [`HIDE_PREVIEW`]).
    #[serde(default, rename = "io.daarion.hide_preview")]
    pub hide_preview: bool,
}

impl Envelope<'_> {
    /// `origin_server_ts` in milliseconds.
    pub fn ts_millis(&self) -> i64 {
        i64::from(self.origin_server_ts.0)
    }

    /// The content as a ruma type.
    pub fn content<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(self.content.get())
    }

    /// The content as a view borrowing from the event.
    pub fn content_borrowed<'c, T: serde::Deserialize<'c>>(&'c self) -> serde_json::Result<T> {
        serde_json::from_str(self.content.get())
    }

    /// Whether an id of the event holds a character no Matrix id may hold (NUL): such an event
    /// is invalid and never reaches the store.
    pub fn has_invalid_id(&self) -> bool {
        let bad = |s: &str| s.contains('\0');
        bad(self.event_id.as_str())
            || bad(self.sender.as_str())
            || self.room_id.as_ref().is_some_and(|r| bad(r.as_str()))
            || self.state_key.as_deref().is_some_and(bad)
            || self.redacts.as_ref().is_some_and(|r| bad(r.as_str()))
    }
}

/// `city.daarion.channel` state: places a room in a microDAO.
#[derive(Debug, Deserialize)]
pub struct DaarionChannelContent {
    /// External id of the microDAO.
    pub microdao: String,
    /// Preferred slug.
    #[serde(default)]
    pub slug: Option<String>,
    /// `public`, `private` or `microdao`.
    #[serde(default)]
    pub visibility: Option<String>,
    /// The channel id the bridge chose for a room it created (honoured only from the bot).
    #[serde(default)]
    pub channel_id: Option<String>,
}

/// The state event type that places a room in a microDAO.
pub const DAARION_CHANNEL: &str = "city.daarion.channel";
