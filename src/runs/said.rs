//! One message of a run's conversation as the history builder reads it, and the attachment it
//! may carry: shared by the builder (`history`) and the attachment fetcher (`media`).

use ruma::{OwnedEventId, OwnedUserId, events::room::MediaSource};

use super::runtime::Part;

/// One message of the conversation, before names are attached.
#[derive(Debug, Clone)]
pub(super) struct Said {
    /// The message's event.
    pub event_id: OwnedEventId,
    /// Who sent it.
    pub sender: OwnedUserId,
    /// Its text, after its latest edit.
    pub text: String,
    /// An `m.notice` (how bots and agents speak).
    pub notice: bool,
    /// The file it carries (an image, file, audio, video or sticker).
    pub attachment: Option<Box<Attachment>>,
}

/// An attachment as the event describes it, and where its bytes are.
#[derive(Debug, Clone)]
pub(super) struct Attachment {
    /// The description the runtime gets.
    pub part: Part,
    /// Where the bytes are (`mxc://`, or an `EncryptedFile` with its key).
    pub source: MediaSource,
}
