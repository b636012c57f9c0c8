//! The files of a run's conversation, as its runtime gets them: each attachment described
//! (kind, name, type, size, dimensions), and its content given where the runtime can use it:
//! an image's bytes to a model that sees (`vision`), a small text file's text, a voice
//! message's transcript (a blueprint's `transcription_model`). Content is fetched as the agent
//! when the run needs it, never on the transaction path, newest first within the run's media
//! budget; whatever cannot be had (too large, gone, tampered with, not what it claims to be) is
//! named with the reason, counted, and never fails the run.

use std::{sync::Arc, time::Duration};

use ruma::events::{
    room::{MediaSource, message::MessageType},
    sticker::StickerEventContent,
};

use super::{
    runtime::{Part, PartKind},
    said::{Attachment, Said},
};
use crate::{
    config::{MediaConfig, OpenAiConfig},
    metrics::Metrics,
    puppet::{PuppetIntent, media::FetchError},
};

/// The attachment of a message, if it carries one; `voice` tells whether an audio message is a
/// voice message (read from the raw event only for audio).
pub(super) fn attachment(
    msgtype: &MessageType,
    voice: impl FnOnce() -> bool,
) -> Option<Box<Attachment>> {
    let n = |v: Option<ruma::UInt>| v.map(u64::from);
    let (kind, name, source, mimetype, size, w, h, duration) = match msgtype {
        MessageType::Image(m) => {
            let i = m.info.as_deref();
            (
                PartKind::Image,
                m.filename(),
                &m.source,
                i.and_then(|i| i.mimetype.clone()),
                i.and_then(|i| n(i.size)),
                i.and_then(|i| n(i.width)),
                i.and_then(|i| n(i.height)),
                None,
            )
        }
        MessageType::File(m) => {
            let i = m.info.as_deref();
            (
                PartKind::File,
                m.filename(),
                &m.source,
                i.and_then(|i| i.mimetype.clone()),
                i.and_then(|i| n(i.size)),
                None,
                None,
                None,
            )
        }
        MessageType::Audio(m) => {
            let i = m.info.as_deref();
            (
                PartKind::Audio,
                m.filename(),
                &m.source,
                i.and_then(|i| i.mimetype.clone()),
                i.and_then(|i| n(i.size)),
                None,
                None,
                i.and_then(|i| i.duration),
            )
        }
        MessageType::Video(m) => {
            let i = m.info.as_deref();
            (
                PartKind::Video,
                m.filename(),
                &m.source,
                i.and_then(|i| i.mimetype.clone()),
                i.and_then(|i| n(i.size)),
                i.and_then(|i| n(i.width)),
                i.and_then(|i| n(i.height)),
                i.and_then(|i| i.duration),
            )
        }
        _ => return None,
    };
    Some(Box::new(Attachment {
        part: Part {
            kind,
            name: name.to_owned(),
            mimetype,
            size,
            width: w,
            height: h,
            duration_ms: duration.map(duration_ms),
            voice: kind == PartKind::Audio && voice(),
            text: None,
            unavailable: None,
            url: None,
            data: None,
        },
        source: source.clone(),
    }))
}

/// A sticker, as the image it is.
pub(super) fn sticker(content: &StickerEventContent) -> Box<Attachment> {
    let i = &content.info;
    Box::new(Attachment {
        part: Part {
            kind: PartKind::Image,
            name: content.body.clone(),
            mimetype: i.mimetype.clone(),
            size: i.size.map(u64::from),
            width: i.width.map(u64::from),
            height: i.height.map(u64::from),
            duration_ms: None,
            voice: false,
            text: None,
            unavailable: None,
            url: None,
            data: None,
        },
        source: content.source.clone().into(),
    })
}

/// A media message ruma's types refuse (a malformed `info`, say), read loosely: its kind, name
/// and source, nothing of its `info`. `None` for anything else.
pub(super) fn loose(raw: &ruma::serde::Raw<ruma::events::AnyTimelineEvent>) -> Option<Said> {
    #[derive(serde::Deserialize)]
    struct Loose {
        #[serde(rename = "type")]
        kind: String,
        event_id: ruma::OwnedEventId,
        sender: ruma::OwnedUserId,
        content: Content,
    }
    #[derive(serde::Deserialize)]
    struct Content {
        msgtype: String,
        body: String,
        filename: Option<String>,
        url: Option<ruma::OwnedMxcUri>,
        file: Option<Box<ruma::events::room::EncryptedFile>>,
    }
    let l: Loose = raw.deserialize_as_unchecked().ok()?;
    let kind = match (l.kind.as_str(), l.content.msgtype.as_str()) {
        ("m.room.message", "m.image") => PartKind::Image,
        ("m.room.message", "m.file") => PartKind::File,
        ("m.room.message", "m.audio") => PartKind::Audio,
        ("m.room.message", "m.video") => PartKind::Video,
        _ => return None,
    };
    let source = match (l.content.file, l.content.url) {
        (Some(file), _) => MediaSource::Encrypted(file),
        (None, Some(url)) => MediaSource::Plain(url),
        (None, None) => return None,
    };
    let part = Part {
        kind,
        name: l.content.filename.unwrap_or(l.content.body),
        mimetype: None,
        size: None,
        width: None,
        height: None,
        duration_ms: None,
        voice: false,
        text: None,
        unavailable: None,
        url: None,
        data: None,
    };
    Some(Said {
        event_id: l.event_id,
        sender: l.sender,
        text: part.label(),
        notice: false,
        attachment: Some(Box::new(Attachment { part, source })),
    })
}

/// The attachment of one event (a message or sticker, as the agent read it): its kind, file
/// name, declared type and where its bytes are. `None` for anything else.
pub fn source_of(
    raw: &ruma::serde::Raw<ruma::events::AnyTimelineEvent>,
) -> Option<(PartKind, String, Option<String>, MediaSource)> {
    use ruma::events::{AnyMessageLikeEvent, AnyTimelineEvent, MessageLikeEvent};
    let a = match raw.deserialize().ok()? {
        AnyTimelineEvent::MessageLike(AnyMessageLikeEvent::RoomMessage(
            MessageLikeEvent::Original(ev),
        )) => attachment(&ev.content.msgtype, || false)?,
        AnyTimelineEvent::MessageLike(AnyMessageLikeEvent::Sticker(
            MessageLikeEvent::Original(ev),
        )) => sticker(&ev.content),
        _ => loose(raw)?.attachment?,
    };
    Some((a.part.kind, a.part.name, a.part.mimetype, a.source))
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What a run may do with attachments.
pub(super) struct Media<'a> {
    /// Caps, timeout, budget.
    pub config: &'a MediaConfig,
    /// The agent's OpenAI-compatible settings (vision, transcription), if it has them.
    pub openai: Option<&'a OpenAiConfig>,
    /// For transcriptions.
    pub http: &'a reqwest::Client,
    /// Counts what happened to each attachment.
    pub metrics: &'a Metrics,
    /// Keeps transcripts and files' text in `message_parts`.
    pub store: &'a crate::db::Store,
    /// Whether what is read of an encrypted room's file may be stored in clear
    /// (`encryption.store_previews`).
    pub keep_encrypted_text: bool,
}

/// Gives the attachments of `said` what the runtime can use of them, newest first (the
/// trigger's first) until the run's budget is spent.
pub(super) async fn give(intent: &PuppetIntent, said: &mut [Said], media: &Media<'_>) {
    let mut budget = media.config.run_budget_bytes;
    for s in said.iter_mut().rev() {
        let Some(attachment) = s.attachment.as_deref_mut() else {
            continue;
        };
        let label = attachment.part.label();
        let outcome = give_one(intent, attachment, media, &mut budget).await;
        if let Some(why) = &attachment.part.unavailable {
            // The runtime is told why it gets only the name.
            s.text = s
                .text
                .replacen(&label, &format!("{label} (unavailable: {why})"), 1);
        }
        if let Some(transcript) = attachment.part.text.as_ref().filter(|_| {
            attachment.part.kind == PartKind::Audio && attachment.part.unavailable.is_none()
        }) {
            // The transcript is what was said: it becomes the turn's text.
            s.text = format!("{} {transcript}", attachment.part.label());
        }
        media.metrics.media(outcome);
        // What was read (a transcript, a file's text) is kept with the message's part; of an
        // encrypted room's file only where decrypted text may be stored at all.
        let encrypted = matches!(attachment.source, MediaSource::Encrypted(_));
        if let Some(text) = &attachment.part.text
            && (media.keep_encrypted_text || !encrypted)
            && let Err(error) = media.store.parts().set_text(&s.event_id, text).await
        {
            tracing::warn!(event_id = %s.event_id, %error, "cannot keep an attachment's text");
        }
    }
}

/// What is wanted of an attachment: its bytes up to a cap, or nothing (named only).
fn wanted(part: &Part, media: &Media<'_>) -> Option<u64> {
    let c = media.config;
    match part.kind {
        PartKind::Image if media.openai.is_some_and(|o| o.vision) => Some(c.image_max_bytes),
        PartKind::Audio
            if media
                .openai
                .is_some_and(|o| o.transcription_model.is_some()) =>
        {
            Some(c.audio_max_bytes)
        }
        PartKind::File if is_text(part) => Some(c.text_max_bytes.min(c.file_max_bytes)),
        // A PDF's text is what a runtime can use of it: read whole, then bounded as text.
        PartKind::File if is_pdf(part) => Some(c.file_max_bytes),
        _ => None,
    }
}

/// Fetches and converts one attachment; returns the outcome counted.
async fn give_one(
    intent: &PuppetIntent,
    a: &mut Attachment,
    media: &Media<'_>,
    budget: &mut u64,
) -> &'static str {
    let Some(cap) = wanted(&a.part, media) else {
        return "named";
    };
    if let Some(size) = a.part.size {
        if size > cap {
            return refuse(a, "too_large", format!("larger than the {cap}-byte cap"));
        }
        if size > *budget {
            return refuse(a, "budget", "over the run's media budget".into());
        }
    }
    if a.part.kind == PartKind::Image {
        // Encoded for the model while it is read: never whole next to its encoding.
        return match intent
            .image_uri(&a.source, cap.min(*budget), media.config.download_timeout)
            .await
        {
            Ok(encoded) => {
                *budget = budget.saturating_sub(encoded.size);
                a.part.size = Some(encoded.size);
                a.part.mimetype = Some(encoded.mimetype.to_owned());
                a.part.data = Some(Arc::new(encoded.uri));
                "given"
            }
            Err(error) => {
                tracing::warn!(name = %a.part.name, kind = "image", %error, "attachment refused");
                let reason = error.reason();
                refuse(a, reason, describe(&error))
            }
        };
    }
    let got = match intent
        .media(&a.source, cap.min(*budget), media.config.download_timeout)
        .await
    {
        Ok(got) => got,
        Err(error) => {
            tracing::warn!(name = %a.part.name, kind = a.part.kind.as_str(), %error, "attachment refused");
            let reason = error.reason();
            return refuse(a, reason, describe(&error));
        }
    };
    *budget = budget.saturating_sub(got.bytes.len() as u64);
    a.part.size = Some(got.bytes.len() as u64);
    match a.part.kind {
        // Fetched above, encoded as it was read.
        PartKind::Image => "given",
        PartKind::File if got.sniffed == Some("application/pdf") => {
            let limit = media.config.text_max_bytes as usize;
            match tokio::task::spawn_blocking(move || pdf_text(&got.bytes)).await {
                Ok(Some(text)) if text.len() <= limit => {
                    a.part.mimetype = Some("application/pdf".into());
                    a.part.text = Some(text);
                    "given"
                }
                Ok(Some(text)) => refuse(
                    a,
                    "too_large",
                    format!(
                        "its text ({} bytes) is over the {limit}-byte limit",
                        text.len()
                    ),
                ),
                _ => refuse(a, "wrong_type", "no text can be read from this PDF".into()),
            }
        }
        PartKind::File => match (got.sniffed, String::from_utf8(got.bytes)) {
            (None, Ok(text)) if !text.contains('\0') && is_text(&a.part) => {
                a.part.text = Some(text);
                "given"
            }
            _ => refuse(a, "wrong_type", "not a text file".into()),
        },
        PartKind::Audio => match got
            .sniffed
            .filter(|m| m.starts_with("audio/") || m.starts_with("video/"))
        {
            Some(mime) => {
                a.part.mimetype = Some(mime.to_owned());
                let openai = media.openai.expect("wanted only with transcription");
                match transcribe(media.http, openai, &a.part.name, mime, got.bytes).await {
                    Ok(text) => {
                        a.part.text = Some(text);
                        "given"
                    }
                    Err(error) => {
                        tracing::warn!(name = %a.part.name, %error, "transcription failed");
                        refuse(a, "transcription", "could not be transcribed".into())
                    }
                }
            }
            None => refuse(a, "wrong_type", "not audio".into()),
        },
        // Video, and kinds that are no attachment: named only.
        _ => "named",
    }
}

/// Records why an attachment's content is not given; returns the outcome.
fn refuse(a: &mut Attachment, outcome: &'static str, why: String) -> &'static str {
    a.part.unavailable = Some(why);
    outcome
}

/// A refusal as the runtime reads it (no ids, no keys).
fn describe(error: &FetchError) -> String {
    match error {
        FetchError::Hash => "the file does not match its hash (refused)".into(),
        FetchError::Key(_) => "cannot be decrypted".into(),
        FetchError::Type => "not of the type it claims".into(),
        FetchError::Download(e) => e.to_string(),
    }
}

/// Files given as text: a text type, or a name that says text.
fn is_text(part: &Part) -> bool {
    let by_type = part.mimetype.as_deref().is_some_and(|m| {
        m.starts_with("text/")
            || matches!(
                m,
                "application/json" | "application/xml" | "application/yaml" | "application/toml"
            )
    });
    let by_name = part.name.rsplit_once('.').is_some_and(|(_, ext)| {
        matches!(
            ext.to_ascii_lowercase().as_str(),
            "txt" | "md" | "csv" | "tsv" | "json" | "log" | "xml" | "yaml" | "yml" | "toml"
        )
    });
    by_type || by_name
}

/// A PDF as it says it is (type or name).
fn is_pdf(part: &Part) -> bool {
    part.mimetype.as_deref() == Some("application/pdf")
        || part
            .name
            .rsplit_once('.')
            .is_some_and(|(_, ext)| ext.eq_ignore_ascii_case("pdf"))
}

/// The text of a PDF's pages, in order (lopdf); `None` when it cannot be parsed or holds none.
fn pdf_text(bytes: &[u8]) -> Option<String> {
    let doc = lopdf::Document::load_mem(bytes).ok()?;
    let pages: Vec<u32> = doc.get_pages().keys().copied().collect();
    let text = doc.extract_text(&pages).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// Why a transcription failed.
#[derive(Debug, thiserror::Error)]
enum TranscribeError {
    #[error("unreachable: {0}")]
    Network(#[from] reqwest::Error),
    #[error("answered {0}")]
    Status(u16),
    #[error("no text in the answer")]
    Malformed,
}

/// Transcribes audio at the blueprint's OpenAI-compatible `/audio/transcriptions`.
async fn transcribe(
    http: &reqwest::Client,
    openai: &OpenAiConfig,
    name: &str,
    mime: &str,
    bytes: Vec<u8>,
) -> Result<String, TranscribeError> {
    let model = openai.transcription_model.clone().unwrap_or_default();
    let file = reqwest::multipart::Part::bytes(bytes)
        .file_name(name.to_owned())
        .mime_str(mime)?;
    let form = reqwest::multipart::Form::new()
        .text("model", model)
        .part("file", file);
    let url = format!(
        "{}/audio/transcriptions",
        openai.base_url.trim_end_matches('/')
    );
    let mut request = http.post(url).multipart(form).timeout(openai.timeout);
    if let Some(key) = super::openai::api_key(openai) {
        request = request.bearer_auth(key);
    }
    let response = request.send().await?;
    if !response.status().is_success() {
        return Err(TranscribeError::Status(response.status().as_u16()));
    }
    let body: serde_json::Value = response.json().await?;
    body["text"]
        .as_str()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .ok_or(TranscribeError::Malformed)
}
