//! What a puppet or the bot sends, as typed Matrix content ([`Content`], over ruma's content
//! types): Markdown rendered to sanitized HTML, `m.mentions` on every message, replies without
//! fallback, threads, edits, reactions, redactions. Content is serialised once, where the
//! outbox stores it; new kinds (files, tool calls) are new variants.

use pulldown_cmark::{Event, Options, Parser, html};
use ruma::{
    OwnedEventId, OwnedUserId,
    events::{
        Mentions,
        reaction::ReactionEventContent,
        relation::{Annotation, InReplyTo, Reply, Thread},
        room::{
            ImageInfo, MediaSource,
            message::{
                AudioInfo, AudioMessageEventContent, FileInfo, FileMessageEventContent,
                ImageMessageEventContent, MessageType, Relation, ReplacementMetadata,
                RoomMessageEventContent, VideoInfo, VideoMessageEventContent,
            },
        },
    },
};

use crate::model::{
    runtime::MessageKind,
    tools::{TOOL_CALLS_KEY, ToolCallNote},
};

/// Typed content of an event an agent or the bot sends.
#[derive(Debug, Clone)]
pub enum Content {
    /// `m.room.message`: a new message, or an edit (`m.replace`).
    Message(Box<RoomMessageEventContent>),
    /// `m.reaction`.
    Reaction(ReactionEventContent),
    /// `m.room.message` carrying the tool calls behind it under
    /// [`TOOL_CALLS_KEY`](crate::model::tools::TOOL_CALLS_KEY) (at the top and, for an edit,
    /// in `m.new_content`, so clients that render edits see them too).
    WithTools(Box<RoomMessageEventContent>, Vec<ToolCallNote>),
    /// `m.room.redaction` of `target`.
    Redaction {
        /// The redacted event.
        target: OwnedEventId,
        /// Why (shown to room members).
        reason: Option<String>,
    },
}

impl Content {
    /// The Matrix event type.
    pub fn event_type(&self) -> &'static str {
        match self {
            Content::Message(_) | Content::WithTools(..) => "m.room.message",
            Content::Reaction(_) => "m.reaction",
            Content::Redaction { .. } => "m.room.redaction",
        }
    }

    /// The redacted event, for a redaction.
    pub fn redacts(&self) -> Option<&OwnedEventId> {
        match self {
            Content::Redaction { target, .. } => Some(target),
            _ => None,
        }
    }

    /// The content as JSON (a redaction's is `{"reason": …}`, as the outbox keeps it).
    pub fn to_json(&self) -> serde_json::Value {
        // ruma content always serializes.
        match self {
            Content::Message(c) => serde_json::to_value(c).unwrap_or_default(),
            Content::Reaction(c) => serde_json::to_value(c).unwrap_or_default(),
            Content::WithTools(c, notes) => {
                let mut v = serde_json::to_value(c).unwrap_or_default();
                let notes = serde_json::to_value(notes).unwrap_or_default();
                if let Some(new) = v.get_mut("m.new_content").and_then(|n| n.as_object_mut()) {
                    new.insert(TOOL_CALLS_KEY.into(), notes.clone());
                }
                if let Some(top) = v.as_object_mut() {
                    top.insert(TOOL_CALLS_KEY.into(), notes);
                }
                v
            }
            Content::Redaction { reason, .. } => serde_json::json!({ "reason": reason }),
        }
    }
}

/// A message an agent wants to post.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    /// The text (Markdown when `markdown`).
    pub body: String,
    /// Render `body` as Markdown (HTML goes into `formatted_body`).
    pub markdown: bool,
    /// `m.notice` or `m.text`.
    pub kind: MessageKind,
    /// The event it replies to.
    pub reply_to: Option<OwnedEventId>,
    /// The thread it goes in.
    pub thread_root: Option<OwnedEventId>,
    /// Users it mentions (`m.mentions`).
    pub mentions: Vec<OwnedUserId>,
}

/// Markdown → HTML with raw HTML escaped (the sanitizing step: nothing the model writes becomes
/// markup it did not express in Markdown). `None` when the text has no formatting at all.
pub fn markdown_html(text: &str) -> Option<String> {
    let mut options = Options::empty();
    options.insert(Options::ENABLE_STRIKETHROUGH);
    options.insert(Options::ENABLE_TABLES);
    let parser = Parser::new_ext(text, options).map(|event| match event {
        Event::Html(raw) | Event::InlineHtml(raw) => Event::Text(raw),
        other => other,
    });
    let mut out = String::new();
    html::push_html(&mut out, parser);
    let plain = format!("<p>{}</p>\n", escape(text.trim()));
    (out != plain).then(|| out.trim_end().to_owned())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn base(body: &str, markdown: bool, kind: MessageKind) -> RoomMessageEventContent {
    match (markdown.then(|| markdown_html(body)).flatten(), kind) {
        (Some(html), MessageKind::Notice) => RoomMessageEventContent::notice_html(body, html),
        (Some(html), MessageKind::Text) => RoomMessageEventContent::text_html(body, html),
        (None, MessageKind::Notice) => RoomMessageEventContent::notice_plain(body),
        (None, MessageKind::Text) => RoomMessageEventContent::text_plain(body),
    }
}

/// `m.room.message` content for a new message.
pub fn message(o: &Outgoing) -> Content {
    let content =
        base(&o.body, o.markdown, o.kind).add_mentions(Mentions::with_user_ids(o.mentions.clone()));
    Content::Message(Box::new(related(content, o)))
}

/// A file an agent sends, uploaded already: its name, caption and what the bytes are.
#[derive(Debug, Clone)]
pub struct OutgoingFile {
    /// Where its bytes are (`mxc://`, or an `EncryptedFile` in an encrypted room).
    pub source: MediaSource,
    /// The file name.
    pub filename: String,
    /// A caption (becomes the `body`, with `filename` set, as the spec's media captions).
    pub caption: Option<String>,
    /// Its MIME type.
    pub mimetype: String,
    /// Its size in bytes.
    pub size: u64,
    /// Width and height, for an image.
    pub dimensions: Option<(u64, u64)>,
    /// Reply, thread and mentions, as for a text message (`body`, `markdown`, `kind` unused).
    pub place: Outgoing,
}

/// `m.room.message` content for a file: `m.image`, `m.audio`, `m.video` by its MIME type,
/// else `m.file`, with `info` (type, size, an image's dimensions).
pub fn file(f: &OutgoingFile) -> Content {
    let body = f.caption.clone().unwrap_or_else(|| f.filename.clone());
    let filename = f.caption.is_some().then(|| f.filename.clone());
    let size = ruma::UInt::try_from(f.size).ok();
    let source = f.source.clone();
    let msgtype = match f.mimetype.split('/').next() {
        Some("image") => {
            let mut info = ImageInfo::new();
            info.mimetype = Some(f.mimetype.clone());
            info.size = size;
            if let Some((w, h)) = f.dimensions {
                info.width = ruma::UInt::try_from(w).ok();
                info.height = ruma::UInt::try_from(h).ok();
            }
            let mut m = ImageMessageEventContent::new(body, source).info(Box::new(info));
            m.filename = filename;
            MessageType::Image(m)
        }
        Some("audio") => {
            let mut info = AudioInfo::new();
            info.mimetype = Some(f.mimetype.clone());
            info.size = size;
            let mut m = AudioMessageEventContent::new(body, source).info(Box::new(info));
            m.filename = filename;
            MessageType::Audio(m)
        }
        Some("video") => {
            let mut info = VideoInfo::new();
            info.mimetype = Some(f.mimetype.clone());
            info.size = size;
            let mut m = VideoMessageEventContent::new(body, source).info(Box::new(info));
            m.filename = filename;
            MessageType::Video(m)
        }
        _ => {
            let mut info = FileInfo::new();
            info.mimetype = Some(f.mimetype.clone());
            info.size = size;
            let mut m = FileMessageEventContent::new(body, source).info(Box::new(info));
            m.filename = filename;
            MessageType::File(m)
        }
    };
    let content = RoomMessageEventContent::new(msgtype)
        .add_mentions(Mentions::with_user_ids(f.place.mentions.clone()));
    Content::Message(Box::new(related(content, &f.place)))
}

/// `content` placed as `o` says: in a thread, replying, or neither.
fn related(mut content: RoomMessageEventContent, o: &Outgoing) -> RoomMessageEventContent {
    content.relates_to = match (&o.thread_root, &o.reply_to) {
        // In a thread, a reply to a specific event is a real reply; otherwise the fallback
        // points at the root for clients without thread support.
        (Some(root), Some(reply)) => {
            Some(Relation::Thread(Thread::reply(root.clone(), reply.clone())))
        }
        (Some(root), None) => Some(Relation::Thread(Thread::plain(root.clone(), root.clone()))),
        // Rich replies without a fallback body (spec v1.13+).
        (None, Some(reply)) => Some(Relation::Reply(Reply::new(InReplyTo::new(reply.clone())))),
        (None, None) => None,
    };
    content
}

/// `m.room.message` content replacing `target` (`m.replace` + `m.new_content`).
pub fn edit(
    target: OwnedEventId,
    body: &str,
    markdown: bool,
    kind: MessageKind,
    mentions: Vec<OwnedUserId>,
) -> Content {
    let mentions = Mentions::with_user_ids(mentions);
    Content::Message(Box::new(
        base(body, markdown, kind)
            .make_replacement(ReplacementMetadata::new(target, Some(mentions))),
    ))
}

/// An edit that also carries the tool calls behind the answer (none: a plain [`edit`]).
pub fn edit_with_tools(
    target: OwnedEventId,
    body: &str,
    kind: MessageKind,
    notes: Vec<ToolCallNote>,
) -> Content {
    match edit(target, body, true, kind, vec![]) {
        Content::Message(m) if !notes.is_empty() => Content::WithTools(m, notes),
        other => other,
    }
}

/// `m.reaction` content.
pub fn reaction(target: OwnedEventId, key: &str) -> Content {
    Content::Reaction(ReactionEventContent::new(Annotation::new(
        target,
        key.to_owned(),
    )))
}

/// `m.room.redaction` of `target`.
pub fn redaction(target: OwnedEventId, reason: Option<String>) -> Content {
    Content::Redaction { target, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_is_rendered_and_raw_html_escaped() {
        assert_eq!(markdown_html("plain words"), None);
        assert_eq!(
            markdown_html("**bold**").as_deref(),
            Some("<p><strong>bold</strong></p>")
        );
        let html = markdown_html("hi <script>alert(1)</script> *x*").unwrap();
        assert!(
            html.contains("&lt;script&gt;") && !html.contains("<script>"),
            "{html}"
        );
    }

    #[test]
    fn messages_carry_mentions_and_relations() {
        let bob: OwnedUserId = "@bob:localhost".try_into().unwrap();
        let root: OwnedEventId = "$root".try_into().unwrap();
        let v = message(&Outgoing {
            body: "hi".into(),
            mentions: vec![bob],
            thread_root: Some(root),
            ..Default::default()
        })
        .to_json();
        assert_eq!(v["msgtype"], "m.notice");
        assert_eq!(v["m.mentions"]["user_ids"][0], "@bob:localhost");
        assert_eq!(v["m.relates_to"]["rel_type"], "m.thread");
        assert_eq!(v["m.relates_to"]["is_falling_back"], true);
        let plain = message(&Outgoing {
            body: "hi".into(),
            kind: MessageKind::Text,
            ..Default::default()
        })
        .to_json();
        assert_eq!(plain["m.mentions"], serde_json::json!({}));
        assert_eq!(plain["msgtype"], "m.text");
        let reply = message(&Outgoing {
            body: "yes".into(),
            reply_to: Some("$q".try_into().unwrap()),
            ..Default::default()
        })
        .to_json();
        assert_eq!(reply["m.relates_to"]["m.in_reply_to"]["event_id"], "$q");
        assert_eq!(reply["body"], "yes", "no reply fallback");
        let e = edit(
            "$t".try_into().unwrap(),
            "**new**",
            true,
            MessageKind::Notice,
            vec![],
        )
        .to_json();
        assert_eq!(e["m.relates_to"]["rel_type"], "m.replace");
        assert_eq!(e["m.new_content"]["body"], "**new**");
        assert_eq!(
            e["m.new_content"]["formatted_body"],
            "<p><strong>new</strong></p>"
        );
        let r = reaction("$t".try_into().unwrap(), "👍").to_json();
        assert_eq!(r["m.relates_to"]["key"], "👍");
    }
}
