//! The conversation a runtime is given, built from the room's timeline (newest first, already
//! decrypted) the way a person sees it in Element:
//!
//! - **edits applied**: a message appears once, with the text of its latest edit by its own
//!   sender (an edit by anyone else is ignored, as clients ignore it), so an agent's streamed
//!   answer is its final text, not its first piece;
//! - **redactions respected**: a redacted message (the homeserver returns it emptied) and the
//!   target of a redaction in the window are left out;
//! - **threads**: in a thread, the thread (its root and replies); in the main timeline, the
//!   main timeline without thread replies;
//! - **media** named by kind, file name and size, with what the runtime may be given of it
//!   (fetched later, by `runs/media.rs`, within the run's budget).

use std::collections::{HashMap, HashSet};

use super::{
    media,
    said::{Attachment, Said},
};
use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedUserId,
    events::{
        AnyMessageLikeEvent, AnyTimelineEvent, MessageLikeEvent,
        room::message::{MessageType, Relation},
        room::redaction::RoomRedactionEvent,
    },
    serde::Raw,
};

/// A message of the window, with where it sits.
struct Original {
    said: Said,
    thread: Option<OwnedEventId>,
}

/// An edit of a message.
struct Edit {
    sender: OwnedUserId,
    at: MilliSecondsSinceUnixEpoch,
    text: String,
}

/// The last `limit` messages of `events` (newest first, as `/messages` returns them) in the
/// conversation of `thread` (the main timeline when `None`), oldest first.
pub(super) fn conversation(
    events: &[Raw<AnyTimelineEvent>],
    thread: Option<&EventId>,
    limit: usize,
) -> Vec<Said> {
    let mut originals: Vec<Original> = Vec::new();
    let mut edits: HashMap<OwnedEventId, Vec<Edit>> = HashMap::new();
    let mut redacted: HashSet<OwnedEventId> = HashSet::new();
    for raw in events {
        let event = match raw.deserialize() {
            Ok(AnyTimelineEvent::MessageLike(event)) => event,
            Ok(_) => continue,
            Err(_) => {
                // A message whose attachment's `info` is malformed is still a message: named,
                // with what can be read of it.
                if let Some(said) = media::loose(raw) {
                    originals.push(Original { said, thread: None });
                }
                continue;
            }
        };
        match event {
            AnyMessageLikeEvent::RoomMessage(MessageLikeEvent::Original(ev)) => {
                if let Some(Relation::Replacement(r)) = &ev.content.relates_to {
                    // Whose edit counts is only known once the original is read (older, so
                    // later in this list): keep them all.
                    edits.entry(r.event_id.clone()).or_default().push(Edit {
                        sender: ev.sender.clone(),
                        at: ev.origin_server_ts,
                        text: text_of(&r.new_content.msgtype, None),
                    });
                    continue;
                }
                let thread = match &ev.content.relates_to {
                    Some(Relation::Thread(t)) => Some(t.event_id.clone()),
                    _ => None,
                };
                let attachment = media::attachment(&ev.content.msgtype, || is_voice(raw));
                originals.push(Original {
                    said: Said {
                        event_id: ev.event_id.clone(),
                        sender: ev.sender.clone(),
                        text: text_of(&ev.content.msgtype, attachment.as_deref()),
                        notice: matches!(ev.content.msgtype, MessageType::Notice(_)),
                        attachment,
                    },
                    thread,
                });
            }
            AnyMessageLikeEvent::Sticker(MessageLikeEvent::Original(ev)) => {
                originals.push(Original {
                    said: Said {
                        event_id: ev.event_id.clone(),
                        sender: ev.sender.clone(),
                        text: format!("[sticker: {}]", ev.content.body),
                        notice: false,
                        attachment: Some(media::sticker(&ev.content)),
                    },
                    thread: None,
                });
            }
            AnyMessageLikeEvent::RoomRedaction(RoomRedactionEvent::Original(ev)) => {
                if let Some(target) = ev.redacts.clone().or(ev.content.redacts.clone()) {
                    redacted.insert(target);
                }
            }
            // Redacted messages come emptied: never part of a conversation again.
            _ => {}
        }
    }
    let mut said: Vec<Said> = originals
        .into_iter()
        .filter(|o| !redacted.contains(&o.said.event_id))
        .filter(|o| match thread {
            Some(root) => o.said.event_id == root || o.thread.as_deref() == Some(root),
            None => o.thread.is_none(),
        })
        .take(limit)
        .map(|mut o| {
            // The newest edit by the message's own sender (the first of equals: the list is
            // newest first); anyone else's edit is ignored, as clients ignore it.
            let newest = edits
                .remove(&o.said.event_id)
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e.sender == o.said.sender)
                .reduce(|kept, e| if e.at > kept.at { e } else { kept });
            if let Some(edit) = newest {
                o.said.text = edit.text;
            }
            o.said
        })
        .collect();
    said.reverse();
    said
}

/// Drops the oldest messages of `said` (oldest first) until their texts hold at most `budget`
/// characters, never one of `answered` (the messages the run answers, whatever their size);
/// returns how many were dropped.
pub(super) fn within_budget(said: &mut Vec<Said>, budget: usize, answered: &[&EventId]) -> usize {
    let mut total: usize = said.iter().map(|s| s.text.chars().count()).sum();
    let before = said.len();
    let mut kept = Vec::with_capacity(said.len());
    for s in said.drain(..) {
        if total > budget && !answered.contains(&&*s.event_id) {
            total -= s.text.chars().count();
            continue;
        }
        kept.push(s);
    }
    *said = kept;
    before - said.len()
}

/// The one message `raw` is (with its own text, not an edit's), if it is one: the message a
/// reply answers, read on its own when it is older than the window.
pub(super) fn message(raw: &Raw<AnyTimelineEvent>) -> Option<Said> {
    let event_id: OwnedEventId = raw.get_field("event_id").ok()??;
    // A message is its own thread root, so the thread filter keeps it whatever its relation.
    conversation(std::slice::from_ref(raw), Some(&event_id), 1).pop()
}

/// Text for what a message carries: its body, or for media a short line naming it and its
/// caption, if it has one.
fn text_of(msgtype: &MessageType, attachment: Option<&Attachment>) -> String {
    let caption = match msgtype {
        MessageType::Image(m) => m.caption(),
        MessageType::File(m) => m.caption(),
        MessageType::Audio(m) => m.caption(),
        MessageType::Video(m) => m.caption(),
        other => return other.body().to_owned(),
    };
    let label = match attachment {
        Some(a) => a.part.label(),
        None => format!("[{}]", msgtype.body()),
    };
    match caption {
        Some(caption) => format!("{label} {caption}"),
        None => label,
    }
}

/// Whether an audio message is a voice message (MSC3245's marker in its content).
fn is_voice(raw: &Raw<AnyTimelineEvent>) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        content: Marker,
    }
    #[derive(serde::Deserialize)]
    struct Marker {
        #[serde(rename = "org.matrix.msc3245.voice")]
        voice: Option<serde::de::IgnoredAny>,
    }
    raw.deserialize_as_unchecked::<Probe>()
        .is_ok_and(|p| p.content.voice.is_some())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn event(kind: &str, id: &str, sender: &str, ts: u64, content: Value) -> Raw<AnyTimelineEvent> {
        let json = json!({
            "type": kind, "event_id": format!("${id}"), "sender": sender,
            "origin_server_ts": ts, "room_id": "!r:x", "content": content,
        });
        Raw::from_json(serde_json::value::to_raw_value(&json).unwrap())
    }

    fn message(id: &str, sender: &str, ts: u64, content: Value) -> Raw<AnyTimelineEvent> {
        event("m.room.message", id, sender, ts, content)
    }

    fn text(id: &str, sender: &str, ts: u64, body: &str) -> Raw<AnyTimelineEvent> {
        message(id, sender, ts, json!({ "msgtype": "m.text", "body": body }))
    }

    fn edit(id: &str, sender: &str, ts: u64, target: &str, body: &str) -> Raw<AnyTimelineEvent> {
        let new = json!({ "msgtype": "m.text", "body": body });
        let relation = json!({ "rel_type": "m.replace", "event_id": format!("${target}") });
        let content = json!({ "msgtype": "m.text", "body": format!("* {body}"),
            "m.new_content": new, "m.relates_to": relation });
        message(id, sender, ts, content)
    }

    fn in_thread(id: &str, sender: &str, ts: u64, root: &str, body: &str) -> Raw<AnyTimelineEvent> {
        let root = format!("${root}");
        let relation = json!({ "rel_type": "m.thread", "event_id": root,
            "is_falling_back": true, "m.in_reply_to": { "event_id": root } });
        message(
            id,
            sender,
            ts,
            json!({ "msgtype": "m.text", "body": body, "m.relates_to": relation }),
        )
    }

    fn texts(said: &[Said]) -> Vec<&str> {
        said.iter().map(|s| s.text.as_str()).collect()
    }

    const A: &str = "@alice:x";
    const B: &str = "@bob:x";
    const S: &str = "@agent_sofia:x";

    #[test]
    fn edits_redactions_and_threads_as_a_person_sees_them() {
        // Newest first, as /messages returns them.
        let events = vec![
            text("q3", A, 90, "which words?"),
            edit("e3", B, 85, "q1", "HACKED"),
            edit("e2", S, 80, "a2", "TURQUOISE noted, whole answer."),
            edit("e1", S, 75, "a2", "TURQUOISE noted"),
            event(
                "m.room.redaction",
                "r",
                A,
                70,
                json!({ "redacts": "$secret" }),
            ),
            in_thread("t1", B, 65, "q1", "a thread reply"),
            text("a2", S, 60, "TURQ"),
            text("q2", A, 50, "and TURQUOISE"),
            edit("e0", A, 45, "q1", "remember PAPAYA"),
            text("a1", S, 40, "PAPAYA noted."),
            text("q1", A, 30, "remember PAPYA"),
            text("secret", A, 20, "hunter2"),
            event("m.room.member", "m", A, 10, json!({ "membership": "join" })),
        ];
        let main = conversation(&events, None, 20);
        assert_eq!(
            texts(&main),
            [
                "remember PAPAYA",
                "PAPAYA noted.",
                "and TURQUOISE",
                "TURQUOISE noted, whole answer.",
                "which words?"
            ]
        );
        assert_eq!(main[1].sender.as_str(), S);
        // The thread: its root (with the edit) and its replies only.
        let root = EventId::parse("$q1").unwrap();
        assert_eq!(
            texts(&conversation(&events, Some(&root), 20)),
            ["remember PAPAYA", "a thread reply"]
        );
        // The window keeps the newest messages; edits do not take room in it.
        assert_eq!(
            texts(&conversation(&events, None, 2)),
            ["TURQUOISE noted, whole answer.", "which words?"]
        );
    }

    #[test]
    fn media_is_named_by_kind_file_and_size() {
        let events = vec![
            event(
                "m.room.message",
                "i",
                A,
                3,
                json!({ "msgtype": "m.image", "body": "cat.png",
                "url": "mxc://x/y", "info": { "size": 204800 } }),
            ),
            event(
                "m.room.message",
                "f",
                A,
                2,
                json!({ "msgtype": "m.file", "body": "report.pdf",
                "url": "mxc://x/z", "info": { "size": 3145728 } }),
            ),
            event(
                "m.room.message",
                "n",
                S,
                1,
                json!({ "msgtype": "m.notice", "body": "noted" }),
            ),
        ];
        let said = conversation(&events, None, 10);
        assert_eq!(
            texts(&said),
            [
                "noted",
                "[file: report.pdf, 3.0 MB]",
                "[image: cat.png, 200 KB]"
            ]
        );
        // A notice is how bots and agents speak: the runtime is told.
        assert_eq!(
            said.iter().map(|s| s.notice).collect::<Vec<_>>(),
            [true, false, false]
        );
    }
}
