//! `messages.content_preview`: the plain-text line a DAARION UI shows for a Matrix message.

use ruma::events::room::message::{MessageType, sanitize::remove_plain_reply_fallback};
use unicode_segmentation::UnicodeSegmentation;

/// The preview of a message body, before truncation.
pub fn of_msgtype(msgtype: &MessageType, sender_localpart: &str, is_reply: bool) -> String {
    match msgtype {
        MessageType::Text(c) => text(
            &c.body,
            c.formatted.as_ref().map(|f| f.body.as_str()),
            is_reply,
        ),
        MessageType::Notice(c) => text(
            &c.body,
            c.formatted.as_ref().map(|f| f.body.as_str()),
            is_reply,
        ),
        MessageType::Emote(c) => format!(
            "* {sender_localpart} {}",
            text(
                &c.body,
                c.formatted.as_ref().map(|f| f.body.as_str()),
                is_reply
            )
        ),
        MessageType::Image(c) => format!("[image] {}", c.filename()),
        MessageType::File(c) => format!("[file] {}", c.filename()),
        MessageType::Audio(c) => format!("[audio] {}", c.filename()),
        MessageType::Video(c) => format!("[video] {}", c.filename()),
        MessageType::Location(c) => format!("[location] {}", c.body),
        other => text(other.body(), None, is_reply),
    }
}

/// The plain body, minus a reply fallback; HTML is stripped when the sender put markup in the
/// plain body (some bots send the same HTML in both fields) or sent only a formatted body.
fn text(body: &str, formatted: Option<&str>, is_reply: bool) -> String {
    let body = if is_reply {
        remove_plain_reply_fallback(body)
    } else {
        body
    };
    match formatted {
        Some(html) if body.trim().is_empty() || body == html => strip_html(html),
        _ => body.to_owned(),
    }
}

/// A plain body without its rich-reply fallback.
pub fn strip_reply_fallback(body: &str) -> String {
    remove_plain_reply_fallback(body).to_owned()
}

/// Removes tags (and `<mx-reply>` blocks) and decodes the common entities.
pub fn strip_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    // Reply fallbacks in HTML live in <mx-reply>; they are not part of the message.
    while let Some(start) = rest.find("<mx-reply>") {
        out.push_str(&rest[..start]);
        rest = match rest[start..].find("</mx-reply>") {
            Some(end) => &rest[start + end + "</mx-reply>".len()..],
            None => "",
        };
    }
    out.push_str(rest);
    let mut text = String::with_capacity(out.len());
    let mut in_tag = false;
    let mut tag = String::new();
    for c in out.chars() {
        match (in_tag, c) {
            (false, '<') => {
                in_tag = true;
                tag.clear();
            }
            (true, '>') => {
                in_tag = false;
                let name = tag
                    .trim_start_matches('/')
                    .split([' ', '/'])
                    .next()
                    .unwrap_or("");
                if matches!(
                    name.to_ascii_lowercase().as_str(),
                    "br" | "p" | "div" | "li" | "tr"
                ) {
                    text.push('\n');
                }
            }
            (true, c) => tag.push(c),
            (false, c) => text.push(c),
        }
    }
    let decoded = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&");
    decoded.trim().to_owned()
}

/// Cuts `text` to at most `max` grapheme clusters, ending with `…` when cut, so a preview never
/// splits an emoji or a combining sequence.
pub fn truncate(text: &str, max: usize) -> String {
    let text = text.trim();
    match text.grapheme_indices(true).nth(max) {
        None => text.to_owned(),
        Some(_) => {
            let keep = max.saturating_sub(1);
            let end = text
                .grapheme_indices(true)
                .nth(keep)
                .map(|(i, _)| i)
                .unwrap_or(text.len());
            let mut cut = text[..end].trim_end().to_owned();
            cut.push('…');
            cut
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_on_grapheme_boundaries() {
        assert_eq!(truncate("hello", 5), "hello");
        assert_eq!(truncate("hello world", 5), "hell…");
        // A family emoji is one grapheme of several code points.
        let family = "👨‍👩‍👧‍👦";
        let s = format!("{family}{family}{family}");
        let cut = truncate(&s, 2);
        assert_eq!(cut, format!("{family}…"));
        assert_eq!(truncate("e\u{301}e\u{301}e\u{301}", 2), "e\u{301}…");
    }

    #[test]
    fn strips_html_and_reply_blocks() {
        assert_eq!(
            strip_html(
                "<mx-reply><blockquote>old</blockquote></mx-reply><b>bold</b> &amp; <i>it</i>"
            ),
            "bold & it"
        );
        assert_eq!(strip_html("a<br/>b"), "a\nb");
    }

    #[test]
    fn removes_plain_reply_fallback() {
        assert_eq!(text("> <@a:x> old\n\nnew", None, true), "new");
        assert_eq!(text("> quoted", None, false), "> quoted");
    }

    #[test]
    fn html_only_when_plain_body_is_markup() {
        assert_eq!(text("<b>hi</b>", Some("<b>hi</b>"), false), "hi");
        assert_eq!(text("1 < 2", Some("1 &lt; 2"), false), "1 < 2");
    }
}
