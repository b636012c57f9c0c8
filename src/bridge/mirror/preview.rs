//! `messages.content_preview`: the plain-text line a DAARION UI shows for a Matrix message, cut
//! to the configured number of grapheme clusters and never more than 16 bytes per cluster plus 64
//! (one cluster of 100,000 combining marks is cut too).

use std::borrow::Cow;

use ruma::events::room::message::sanitize::remove_plain_reply_fallback;
use unicode_segmentation::UnicodeSegmentation;

use super::content::MessageView;

/// The preview of a message (before truncation), by message type.
pub fn of_message(m: &MessageView<'_>, sender_localpart: &str, is_reply: bool) -> String {
    match &*m.msgtype {
        "m.text" | "m.notice" => text(&m.body, m.html(), is_reply),
        "m.emote" => format!("* {sender_localpart} {}", text(&m.body, m.html(), is_reply)),
        kind @ ("m.image" | "m.file" | "m.audio" | "m.video") => format!(
            "[{}] {}",
            &kind[2..],
            m.filename.as_deref().unwrap_or(&m.body)
        ),
        "m.location" => format!("[location] {}", m.body),
        _ => text(&m.body, None, is_reply),
    }
}

/// The plain body and HTML body of a message, for the trigger rules.
pub fn bodies<'m>(m: &'m MessageView<'_>) -> (&'m str, Option<&'m str>) {
    match &*m.msgtype {
        "m.text" | "m.notice" | "m.emote" => (&m.body, m.formatted_body.as_deref()),
        _ => (&m.body, None),
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
pub fn strip_reply_fallback(body: &str) -> &str {
    remove_plain_reply_fallback(body)
}

/// Removes tags (and `<mx-reply>` blocks) and decodes the common entities, in one pass.
pub fn strip_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(lt) = rest.find(['<', '&']) {
        out.push_str(&rest[..lt]);
        rest = &rest[lt..];
        if rest.starts_with('<') {
            // Reply fallbacks in HTML live in <mx-reply>; they are not part of the message.
            if let Some(after) = strip_prefix_ci(rest, "<mx-reply>") {
                rest = match find_ci(after, "</mx-reply>") {
                    Some(end) => &after[end + "</mx-reply>".len()..],
                    None => "",
                };
                continue;
            }
            let Some(gt) = rest.find('>') else {
                // An unclosed tag: nothing after it is text.
                rest = "";
                break;
            };
            let name = rest[1..gt]
                .trim_start_matches('/')
                .split([' ', '/', '\t', '\n'])
                .next()
                .unwrap_or("");
            if ["br", "p", "div", "li", "tr"]
                .iter()
                .any(|t| name.eq_ignore_ascii_case(t))
            {
                out.push('\n');
            }
            rest = &rest[gt + 1..];
        } else {
            let (ch, len) = entity(rest);
            out.push_str(ch);
            rest = &rest[len..];
        }
    }
    out.push_str(rest);
    out.trim().to_owned()
}

/// The entity at the start of `s` (which starts with `&`) and its length.
fn entity(s: &str) -> (&'static str, usize) {
    for (name, ch) in [
        ("&lt;", "<"),
        ("&gt;", ">"),
        ("&quot;", "\""),
        ("&#39;", "'"),
        ("&nbsp;", " "),
        ("&amp;", "&"),
    ] {
        if s.starts_with(name) {
            return (ch, name.len());
        }
    }
    ("&", 1)
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn find_ci(s: &str, needle: &str) -> Option<usize> {
    s.char_indices()
        .map(|(i, _)| i)
        .find(|&i| strip_prefix_ci(&s[i..], needle).is_some())
}

/// Bytes a preview may spend per grapheme cluster on average: ample for any real cluster
/// (a family emoji is 25 bytes), while one cluster of 100,000 combining marks is cut.
const BYTES_PER_CLUSTER: usize = 16;

/// Cuts `text` to at most `max` grapheme clusters and `16 × max + 64` bytes, ending with `…`
/// when cut, so a preview never splits an emoji or a combining sequence (unless one cluster
/// alone exceeds the byte bound, which only a hostile message does).
pub fn truncate(text: &str, max: usize) -> String {
    cut(text, max).into_owned()
}

/// [`truncate`] of a text the caller owns: a preview that needs no cut (most do not) is returned
/// as it is instead of being copied.
pub fn truncate_owned(text: String, max: usize) -> String {
    match cut(&text, max) {
        Cow::Borrowed(kept) if kept.len() == text.len() => text,
        other => other.into_owned(),
    }
}

/// The cut text, borrowed from `text` when only trimmed.
fn cut(text: &str, max: usize) -> Cow<'_, str> {
    let text = text.trim();
    let max_bytes = max.saturating_mul(BYTES_PER_CLUSTER).saturating_add(64);
    // At most `max` bytes means at most `max` clusters: nothing to count.
    if text.len() <= max.min(max_bytes) {
        return Cow::Borrowed(text);
    }
    // ASCII without CR: one byte is one grapheme cluster ("\r\n" is one cluster of two).
    if text.is_ascii() && !text.contains('\r') {
        if text.len() <= max {
            return Cow::Borrowed(text);
        }
        let mut out = text[..max.saturating_sub(1)].trim_end().to_owned();
        out.push('…');
        return Cow::Owned(out);
    }
    let fits = text.len() <= max_bytes && text.graphemes(true).nth(max).is_none();
    if fits {
        return Cow::Borrowed(text);
    }
    // Keep `max - 1` clusters (the ellipsis is the last one) within the byte bound.
    let budget = max_bytes - '…'.len_utf8();
    let mut end = 0;
    for (n, (i, g)) in text.grapheme_indices(true).enumerate() {
        if n + 1 >= max {
            break;
        }
        if i + g.len() > budget {
            if n == 0 {
                // A first cluster over the byte bound: cut inside it, on a char boundary.
                end = budget.min(text.len());
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
            }
            break;
        }
        end = i + g.len();
    }
    let mut out = text[..end].trim_end().to_owned();
    out.push('…');
    Cow::Owned(out)
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
        assert_eq!(truncate(&s, 2), format!("{family}…"));
        assert_eq!(truncate("e\u{301}e\u{301}e\u{301}", 2), "e\u{301}…");
    }

    /// The owned variant gives what `truncate` gives, and hands back the same buffer when the
    /// text needs neither trimming nor cutting.
    #[test]
    fn owned_truncation_matches_and_reuses_the_buffer() {
        let family = "👨‍👩‍👧‍👦";
        for (text, max) in [
            ("hello", 5),
            ("hello world", 5),
            ("  padded  ", 20),
            ("e\u{301}e\u{301}e\u{301}", 2),
            (&*format!("{family}{family}{family}"), 2),
            (&*format!("{family}{family}"), 5),
        ] {
            assert_eq!(truncate_owned(text.to_owned(), max), truncate(text, max));
        }
        let text = String::from("a preview that fits");
        let ptr = text.as_ptr();
        let kept = truncate_owned(text, 500);
        assert_eq!(kept.as_ptr(), ptr);
    }

    #[test]
    fn one_huge_cluster_is_cut_in_bytes() {
        let hostile = format!("a{}", "\u{301}".repeat(100_000));
        let cut = truncate(&hostile, 10);
        assert!(cut.len() <= 10 * 16 + 64, "{} bytes", cut.len());
        assert!(cut.ends_with('…'));
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
        assert_eq!(strip_html("1 &lt; 2 &unknown;"), "1 < 2 &unknown;");
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
