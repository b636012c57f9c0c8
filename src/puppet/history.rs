//! What paging through a room's history needs to know of a raw event before it is decrypted
//! or parsed: whether it is a message (edits are not: they change a message already counted)
//! and whether it is encrypted. An encrypted event's relation is in clear, so both are known
//! without a key.

use ruma::{events::AnyTimelineEvent, serde::Raw};
use serde::Deserialize;

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default)]
    content: PeekContent<'a>,
}

#[derive(Deserialize, Default)]
struct PeekContent<'a> {
    #[serde(rename = "m.relates_to", default, borrow)]
    relates_to: Option<PeekRelation<'a>>,
}

#[derive(Deserialize)]
struct PeekRelation<'a> {
    #[serde(default, borrow)]
    rel_type: Option<std::borrow::Cow<'a, str>>,
}

fn peek(raw: &Raw<AnyTimelineEvent>) -> Option<Peek<'_>> {
    serde_json::from_str(raw.json().get()).ok()
}

/// Whether `raw` is a message a person sees as one (a text, notice, media or sticker, in clear
/// or encrypted), not an edit, a reaction or state.
pub(super) fn is_message(raw: &Raw<AnyTimelineEvent>) -> bool {
    let Some(p) = peek(raw) else {
        return false;
    };
    let is_edit = p
        .content
        .relates_to
        .and_then(|r| r.rel_type)
        .is_some_and(|t| t == "m.replace");
    matches!(
        &*p.kind,
        "m.room.message" | "m.room.encrypted" | "m.sticker"
    ) && !is_edit
}

/// The event's id, if it has one.
pub(super) fn event_id(raw: &Raw<AnyTimelineEvent>) -> Option<ruma::OwnedEventId> {
    raw.get_field("event_id").ok().flatten()
}

/// Whether `raw` is an `m.room.encrypted` event.
pub(super) fn is_encrypted(raw: &Raw<AnyTimelineEvent>) -> bool {
    peek(raw).is_some_and(|p| p.kind == "m.room.encrypted")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: serde_json::Value) -> Raw<AnyTimelineEvent> {
        Raw::from_json(serde_json::value::to_raw_value(&json).unwrap())
    }

    #[test]
    fn edits_are_not_counted_as_messages() {
        let text = raw(serde_json::json!({"type": "m.room.message", "content": {"body": "hi"}}));
        let edit = raw(serde_json::json!({"type": "m.room.encrypted", "content": {
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$a"}}}));
        let in_thread = raw(serde_json::json!({"type": "m.room.encrypted", "content": {
            "m.relates_to": {"rel_type": "m.thread", "event_id": "$a"}}}));
        let state =
            raw(serde_json::json!({"type": "m.room.member", "state_key": "@a:b", "content": {}}));
        assert!(is_message(&text) && !is_encrypted(&text));
        assert!(!is_message(&edit) && is_encrypted(&edit));
        assert!(is_message(&in_thread));
        assert!(!is_message(&state));
    }
}
