//! A borrowed view of `m.room.message` content: the fields the mirror reads (previews, edits,
//! replies, threads, mentions), taken straight from the event's JSON without building ruma's
//! full content type. Transactions are the hot path (Synapse waits for each one), and this view
//! halves the CPU a message costs; ids are still validated as ruma ids, and the preview rules
//! follow ruma's message types (`m.text`, `m.notice`, `m.emote`, media, `m.location`).

use std::borrow::Cow;

use ruma::{OwnedEventId, OwnedUserId};
use serde::Deserialize;

/// The parts of `m.room.message` content (or of its `m.new_content`) the mirror reads.
#[derive(Debug, Deserialize)]
pub struct MessageView<'a> {
    /// `msgtype`.
    #[serde(borrow)]
    pub msgtype: Cow<'a, str>,
    /// `body` (required by the spec).
    #[serde(borrow)]
    pub body: Cow<'a, str>,
    /// `format` of `formatted_body`.
    #[serde(borrow, default)]
    pub format: Option<Cow<'a, str>>,
    /// `formatted_body` (HTML).
    #[serde(borrow, default)]
    pub formatted_body: Option<Cow<'a, str>>,
    /// `filename` of media messages.
    #[serde(borrow, default)]
    pub filename: Option<Cow<'a, str>>,
    /// `m.relates_to`.
    #[serde(rename = "m.relates_to", borrow, default)]
    pub relates_to: Option<RelatesTo<'a>>,
    /// `m.new_content` of an edit.
    #[serde(rename = "m.new_content", borrow, default)]
    pub new_content: Option<Box<MessageView<'a>>>,
    /// `m.mentions`.
    #[serde(rename = "m.mentions", borrow, default)]
    pub mentions: Option<Mentions<'a>>,
}

/// `m.relates_to`.
#[derive(Debug, Deserialize)]
pub struct RelatesTo<'a> {
    /// `m.replace`, `m.thread`, … (absent for a plain rich reply).
    #[serde(borrow, default)]
    pub rel_type: Option<Cow<'a, str>>,
    /// The related event.
    #[serde(borrow, default)]
    pub event_id: Option<Cow<'a, str>>,
    /// `m.in_reply_to`.
    #[serde(rename = "m.in_reply_to", borrow, default)]
    pub in_reply_to: Option<InReplyTo<'a>>,
}

/// `m.in_reply_to`.
#[derive(Debug, Deserialize)]
pub struct InReplyTo<'a> {
    /// The event replied to.
    #[serde(borrow, default)]
    pub event_id: Option<Cow<'a, str>>,
}

/// `m.mentions`.
#[derive(Debug, Deserialize)]
pub struct Mentions<'a> {
    /// Mentioned users.
    #[serde(borrow, default)]
    pub user_ids: Vec<Cow<'a, str>>,
}

/// An event id from content, when it is a valid one that the store accepts (no NUL).
fn event_id(id: Option<&Cow<'_, str>>) -> Option<OwnedEventId> {
    let id = id?;
    if id.contains('\0') {
        return None;
    }
    OwnedEventId::try_from(id.as_ref()).ok()
}

impl MessageView<'_> {
    /// The event an edit replaces: `Some(Ok(id))`, `Some(Err(()))` for an edit whose target is
    /// no valid id, `None` for anything else.
    pub fn replaces(&self) -> Option<Result<OwnedEventId, ()>> {
        let r = self.relates_to.as_ref()?;
        if r.rel_type.as_deref() != Some("m.replace") || self.new_content.is_none() {
            return None;
        }
        Some(event_id(r.event_id.as_ref()).ok_or(()))
    }

    /// The thread root, for a message in a thread.
    pub fn thread_root(&self) -> Option<OwnedEventId> {
        let r = self.relates_to.as_ref()?;
        (r.rel_type.as_deref() == Some("m.thread"))
            .then(|| event_id(r.event_id.as_ref()))
            .flatten()
    }

    /// The event replied to (a rich reply, or a reply within a thread).
    pub fn reply_to(&self) -> Option<OwnedEventId> {
        let r = self.relates_to.as_ref()?;
        if r.rel_type.as_deref() == Some("m.replace") {
            return None;
        }
        event_id(r.in_reply_to.as_ref()?.event_id.as_ref())
    }

    /// Whether this is a rich reply outside a thread (its body may carry a reply fallback).
    pub fn is_reply(&self) -> bool {
        self.relates_to
            .as_ref()
            .is_some_and(|r| r.rel_type.is_none() && r.in_reply_to.is_some())
    }

    /// The HTML body, when the content declares HTML.
    pub fn html(&self) -> Option<&str> {
        match (&self.format, &self.formatted_body) {
            (Some(f), Some(b)) if f == "org.matrix.custom.html" => Some(b),
            _ => None,
        }
    }

    /// Mentioned users (`None`: no `m.mentions` at all, an old client).
    pub fn mentioned(&self) -> Option<Vec<OwnedUserId>> {
        self.mentions.as_ref().map(|m| {
            m.user_ids
                .iter()
                .filter_map(|u| OwnedUserId::try_from(u.as_ref()).ok())
                .collect()
        })
    }
}
