//! `message_parts` of a mirrored message: what a media message carries (its kind, file name,
//! MIME type, size, dimensions, duration, voice flag and where the file lives) and its caption,
//! read from the event's content with ruma's types. Content ruma refuses (a malformed `info`,
//! an `EncryptedFile` missing a field) is read field by field instead, keeping what is well
//! formed: bad media never fails a transaction. The bytes and an encrypted file's key are never
//! read into a part; they stay in Matrix.

use std::time::Duration;

use ruma::{
    UInt,
    events::{
        room::{
            EncryptedFile, ImageInfo, MediaSource,
            message::{
                AudioMessageEventContent, FileMessageEventContent, ImageMessageEventContent,
                MessageType, VideoMessageEventContent,
            },
        },
        sticker::{StickerEventContent, StickerMediaSource},
    },
};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::preview::truncate;
use crate::{
    db::{NewPart, PartSource, text::DbText},
    model::PartKind,
};

/// Characters a part's text keeps (a caption, a transcript, a file's text): one bound for the
/// write path and for what runs add.
pub use crate::db::parts::TEXT_CHARS;
/// Grapheme clusters a file name keeps.
pub const NAME_CHARS: usize = 255;
/// Characters a MIME type keeps (RFC 6838 bounds a real one at 255).
const MIMETYPE_CHARS: usize = 255;

/// The parts of one message, and how its media went (for the metric and the log).
#[derive(Debug, Default)]
pub struct Parts {
    /// The rows, in order: the media first, then its caption.
    pub parts: Vec<NewPart>,
    /// `plain` or `encrypted` (where the file lives), `bad_source` (no usable `url` or `file`:
    /// stored without a source) or `bad_info` (a malformed `info`: stored with what parsed);
    /// `None` for a message without media.
    pub outcome: Option<&'static str>,
}

/// The parts of `m.room.message` content (`content` is its JSON) of type `msgtype`: none for
/// text, notices, emotes and anything else without a file. `hide` (a decrypted event whose text
/// stays out of the database) keeps the file name and the caption out too.
pub fn of_message(msgtype: &str, content: &str, hide: bool) -> Parts {
    let kind = match msgtype {
        "m.image" => PartKind::Image,
        "m.file" => PartKind::File,
        "m.audio" => PartKind::Audio,
        "m.video" => PartKind::Video,
        _ => return Parts::default(),
    };
    let mut media = match serde_json::from_str::<MessageType>(content) {
        Ok(MessageType::Image(c)) => image(&c),
        Ok(MessageType::File(c)) => file(&c),
        Ok(MessageType::Audio(c)) => audio(&c),
        Ok(MessageType::Video(c)) => video(&c),
        _ => loose(kind, content, true),
    };
    if kind == PartKind::Audio {
        media.voice = is_voice(content);
    }
    media.into_parts(hide)
}

/// The parts of `m.sticker` content: one image, without a name (a sticker's body describes
/// it, and is its preview).
pub fn of_sticker(content: &str) -> Parts {
    let media = match serde_json::from_str::<StickerEventContent>(content) {
        Ok(c) => Media {
            source: match c.source {
                StickerMediaSource::Plain(url) => mxc(url.as_str()),
                // Encrypted stickers (a compat feature of ruma): no URI, no key.
                _ => Ok(PartSource::Encrypted),
            },
            ..Media::image(Some(&c.info))
        },
        Err(_) => loose(PartKind::Image, content, false),
    };
    media.into_parts(false)
}

/// What one media message says about its file.
#[derive(Debug)]
struct Media {
    kind: Option<PartKind>,
    name: Option<String>,
    caption: Option<String>,
    /// `Err` when the event names no usable source.
    source: Result<PartSource, ()>,
    mimetype: Option<String>,
    size: Option<UInt>,
    width: Option<UInt>,
    height: Option<UInt>,
    duration: Option<Duration>,
    voice: bool,
    /// A value of `info` did not parse, or did not fit its column.
    bad_info: bool,
}

impl Media {
    /// An image's dimensions, type and size.
    fn image(info: Option<&ImageInfo>) -> Self {
        Media {
            kind: Some(PartKind::Image),
            mimetype: info.and_then(|i| i.mimetype.clone()),
            size: info.and_then(|i| i.size),
            width: info.and_then(|i| i.width),
            height: info.and_then(|i| i.height),
            ..Media::empty()
        }
    }

    /// Nothing known yet (no source either).
    fn empty() -> Self {
        Media {
            kind: None,
            name: None,
            caption: None,
            source: Err(()),
            mimetype: None,
            size: None,
            width: None,
            height: None,
            duration: None,
            voice: false,
            bad_info: false,
        }
    }

    /// The rows: the media, then its caption as a text part.
    fn into_parts(self, hide: bool) -> Parts {
        let mut bad_info = self.bad_info;
        let mut fit = |n: Option<UInt>| -> Option<i32> {
            let n = n?;
            let fits = i32::try_from(u64::from(n)).ok();
            bad_info |= fits.is_none();
            fits
        };
        let width = fit(self.width);
        let height = fit(self.height);
        let outcome = match (&self.source, bad_info) {
            (Err(()), _) => "bad_source",
            (Ok(_), true) => "bad_info",
            (Ok(PartSource::Encrypted), false) => "encrypted",
            (Ok(PartSource::Mxc(_)), false) => "plain",
        };
        let text = |s: Option<String>, max: usize| {
            s.map(|s| truncate(&s, max))
                .filter(|s| !s.is_empty())
                .map(DbText::new)
        };
        let media = NewPart {
            kind: self.kind.unwrap_or(PartKind::File),
            mimetype: text(self.mimetype, MIMETYPE_CHARS),
            size: self
                .size
                .map(|n| i64::try_from(u64::from(n)).unwrap_or(i64::MAX)),
            name: if hide {
                None
            } else {
                text(self.name, NAME_CHARS)
            },
            width,
            height,
            duration_ms: self
                .duration
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            voice: self.voice,
            source: self.source.ok(),
            text: None,
        };
        let mut parts = vec![media];
        if !hide && let Some(caption) = text(self.caption, TEXT_CHARS) {
            parts.push(NewPart {
                text: Some(caption),
                ..NewPart::new(PartKind::Text)
            });
        }
        Parts {
            parts,
            outcome: Some(outcome),
        }
    }
}

/// A plaintext file's source: its URI when it is a valid `mxc://` URI (a `https://` URL or
/// garbage is no source: nothing the bridge could fetch through the homeserver).
fn mxc(url: &str) -> Result<PartSource, ()> {
    let uri: &ruma::MxcUri = url.into();
    if uri.is_valid() {
        Ok(PartSource::Mxc(url.to_owned()))
    } else {
        Err(())
    }
}

fn source(s: &MediaSource) -> Result<PartSource, ()> {
    match s {
        MediaSource::Plain(url) => mxc(url.as_str()),
        MediaSource::Encrypted(_) => Ok(PartSource::Encrypted),
    }
}

fn image(c: &ImageMessageEventContent) -> Media {
    Media {
        name: Some(c.filename().to_owned()),
        caption: c.caption().map(str::to_owned),
        source: source(&c.source),
        ..Media::image(c.info.as_deref())
    }
}

fn file(c: &FileMessageEventContent) -> Media {
    let info = c.info.as_deref();
    Media {
        kind: Some(PartKind::File),
        name: Some(c.filename().to_owned()),
        caption: c.caption().map(str::to_owned),
        source: source(&c.source),
        mimetype: info.and_then(|i| i.mimetype.clone()),
        size: info.and_then(|i| i.size),
        ..Media::empty()
    }
}

fn audio(c: &AudioMessageEventContent) -> Media {
    let info = c.info.as_deref();
    Media {
        kind: Some(PartKind::Audio),
        name: Some(c.filename().to_owned()),
        caption: c.caption().map(str::to_owned),
        source: source(&c.source),
        mimetype: info.and_then(|i| i.mimetype.clone()),
        size: info.and_then(|i| i.size),
        duration: info.and_then(|i| i.duration),
        ..Media::empty()
    }
}

fn video(c: &VideoMessageEventContent) -> Media {
    let info = c.info.as_deref();
    Media {
        kind: Some(PartKind::Video),
        name: Some(c.filename().to_owned()),
        caption: c.caption().map(str::to_owned),
        source: source(&c.source),
        mimetype: info.and_then(|i| i.mimetype.clone()),
        size: info.and_then(|i| i.size),
        width: info.and_then(|i| i.width),
        height: info.and_then(|i| i.height),
        duration: info.and_then(|i| i.duration),
        ..Media::empty()
    }
}

/// MSC3245: a voice message carries `org.matrix.msc3245.voice` (an empty object).
fn is_voice(content: &str) -> bool {
    #[derive(Deserialize)]
    struct Voice {
        #[serde(rename = "org.matrix.msc3245.voice", default)]
        voice: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_str::<Voice>(content).is_ok_and(|v| v.voice.is_some())
}

/// Content ruma refused, read field by field: each well-formed value is kept, a malformed one
/// is dropped and marks the part (`bad_info`, or `bad_source` for the file's location).
/// `named`: the body (or `filename`) names the file (not for stickers).
fn loose(kind: PartKind, content: &str, named: bool) -> Media {
    let map: Map<String, Value> = serde_json::from_str(content).unwrap_or_default();
    let string = |key: &str| map.get(key).and_then(Value::as_str);
    let (body, filename) = (string("body"), string("filename"));
    let source = match (map.get("file"), map.get("url")) {
        // As ruma does: `file` wins over `url`. A malformed one cannot be decrypted: no source.
        (Some(file), _) => serde_json::from_value::<EncryptedFile>(file.clone())
            .map(|_| PartSource::Encrypted)
            .map_err(|_| ()),
        (None, Some(Value::String(url))) => mxc(url),
        _ => Err(()),
    };
    let mut media = Media {
        kind: Some(kind),
        name: named
            .then(|| filename.or(body))
            .flatten()
            .map(str::to_owned),
        // A caption is a body beside a different file name (spec v1.10, media captions).
        caption: named
            .then(|| filename.and(body).filter(|b| Some(*b) != filename))
            .flatten()
            .map(str::to_owned),
        source,
        ..Media::empty()
    };
    let info = match map.get("info") {
        None | Some(Value::Null) => return media,
        Some(Value::Object(info)) => info,
        Some(_) => {
            media.bad_info = true;
            return media;
        }
    };
    let mut bad = false;
    let mut number = |key: &str| match info.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => {
            let n = v.as_u64().and_then(|n| UInt::try_from(n).ok());
            bad |= n.is_none();
            n
        }
    };
    media.size = number("size");
    if matches!(kind, PartKind::Image | PartKind::Video) {
        media.width = number("w");
        media.height = number("h");
    }
    if matches!(kind, PartKind::Audio | PartKind::Video) {
        media.duration = number("duration").map(|ms| Duration::from_millis(u64::from(ms)));
    }
    media.mimetype = match info.get("mimetype") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => Some(m.clone()),
        Some(_) => {
            bad = true;
            None
        }
    };
    media.bad_info = bad;
    media
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(msgtype: &str, content: Value, hide: bool) -> Parts {
        of_message(msgtype, &content.to_string(), hide)
    }

    #[test]
    fn text_has_no_parts() {
        for msgtype in ["m.text", "m.notice", "m.emote", "m.location", "x.custom"] {
            let p = parts(
                msgtype,
                serde_json::json!({ "msgtype": msgtype, "body": "hi" }),
                false,
            );
            assert!(p.parts.is_empty() && p.outcome.is_none(), "{msgtype}");
        }
    }

    #[test]
    fn a_caption_is_a_text_part_after_its_media() {
        let content = serde_json::json!({ "msgtype": "m.image", "body": "look", "filename": "a.png",
            "url": "mxc://x/y", "info": { "w": 3, "h": 4, "mimetype": "image/png" } });
        let p = parts("m.image", content.clone(), false);
        assert_eq!(p.outcome, Some("plain"));
        assert_eq!(p.parts.len(), 2);
        assert_eq!(p.parts[0].name.as_deref(), Some("a.png"));
        assert_eq!((p.parts[0].width, p.parts[0].height), (Some(3), Some(4)));
        assert_eq!(p.parts[0].source, Some(PartSource::Mxc("mxc://x/y".into())));
        assert_eq!(p.parts[1].kind, PartKind::Text);
        assert_eq!(p.parts[1].text.as_deref(), Some("look"));
        // Hidden (store_previews = false): neither the name nor the caption.
        let hidden = parts("m.image", content, true);
        assert_eq!(hidden.parts.len(), 1);
        assert_eq!(hidden.parts[0].name, None);
        // The same body and file name: no caption.
        let same = serde_json::json!({ "msgtype": "m.file", "body": "a.pdf", "filename": "a.pdf", "url": "mxc://x/y" });
        assert_eq!(parts("m.file", same, false).parts.len(), 1);
    }

    #[test]
    fn a_long_caption_is_bounded() {
        let body = "word ".repeat(5000);
        let content = serde_json::json!({ "msgtype": "m.video", "body": body, "filename": "v.mp4", "url": "mxc://x/y" });
        let p = parts("m.video", content, false);
        let text = p.parts[1].text.as_deref().unwrap();
        assert!(text.chars().count() <= TEXT_CHARS, "{}", text.len());
        assert!(text.ends_with('…'));
    }

    #[test]
    fn voice_and_duration() {
        let content = serde_json::json!({ "msgtype": "m.audio", "body": "v.ogg", "url": "mxc://x/y",
            "info": { "duration": 1500 }, "org.matrix.msc3245.voice": {} });
        let p = parts("m.audio", content, false);
        assert!(p.parts[0].voice);
        assert_eq!(p.parts[0].duration_ms, Some(1500));
    }

    #[test]
    fn bad_sources_and_infos_keep_what_parses() {
        let https = serde_json::json!({ "msgtype": "m.image", "body": "a", "url": "https://x/y", "info": { "size": 5 } });
        let p = parts("m.image", https, false);
        assert_eq!(
            (p.outcome, p.parts[0].source.clone(), p.parts[0].size),
            (Some("bad_source"), None, Some(5))
        );
        let bad = serde_json::json!({ "msgtype": "m.image", "body": "a", "url": "mxc://x/y", "info": { "size": "5", "w": 2 } });
        let p = parts("m.image", bad, false);
        assert_eq!(
            (p.outcome, p.parts[0].size, p.parts[0].width),
            (Some("bad_info"), None, Some(2))
        );
        let sticker = serde_json::json!({ "body": "s", "url": "mxc://x/y" });
        let p = of_sticker(&sticker.to_string());
        assert_eq!(
            (p.outcome, p.parts[0].kind, p.parts[0].name.clone()),
            (Some("plain"), PartKind::Image, None)
        );
    }
}
