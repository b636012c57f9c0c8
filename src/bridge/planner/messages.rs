//! Messages (with their media parts, read by `mirror::parts`), edits, redactions and trigger
//! candidates. Edits and redactions of messages of the same batch are folded into the new
//! message (one row is written once; a message redacted in its batch keeps no parts); several
//! edits of one message keep the newest.

use foldhash::{HashMap, HashSet};

use ruma::{
    OwnedEventId, RoomId,
    events::room::{encrypted, redaction::RoomRedactionEventContent},
};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Outcome, Planner};
use crate::{
    bridge::mirror::{
        content::MessageView,
        event::Envelope,
        parts::{self, Parts},
        preview,
    },
    db::{
        Batch, CandidatePayload, Edit, NewCandidate, NewJob, NewMessage, Party, Redaction,
        SessionChange, text::DbText,
    },
    model::{JobKind, Ts, ids::MessageId},
};

/// What a sticker must have to be mirrored (its image is read apart, as well as it parses).
#[derive(Deserialize)]
struct StickerBody {
    body: String,
}

/// The `m.relates_to` of an encrypted event (visible without decrypting).
#[derive(Deserialize)]
struct EncryptedRelation {
    #[serde(rename = "m.relates_to", default)]
    relates_to: Option<encrypted::Relation>,
}

/// What a message row needs of a message's content, shared with the mirroring of what puppets
/// send (so both map content the same way).
pub(crate) struct MessageShape {
    /// An edit whose target id cannot be valid.
    pub invalid: bool,
    /// `Some(target)` for an edit.
    pub replaces: Option<OwnedEventId>,
    /// The preview (not yet cut).
    pub preview: String,
    /// The thread it is in.
    pub thread_root: Option<OwnedEventId>,
    /// The event it replies to.
    pub reply_to: Option<OwnedEventId>,
}

/// The shape of `m.room.message` content sent by `sender_localpart`. Relation ids that cannot
/// be valid are dropped, and an edit of such a target is marked invalid.
pub(crate) fn shape(m: &MessageView<'_>, sender_localpart: &str) -> MessageShape {
    match (m.replaces(), &m.new_content) {
        (Some(target), Some(new)) => MessageShape {
            invalid: target.is_err(),
            replaces: target.ok(),
            preview: preview::of_message(new, sender_localpart, false),
            thread_root: None,
            reply_to: None,
        },
        _ => MessageShape {
            invalid: false,
            replaces: None,
            preview: preview::of_message(m, sender_localpart, m.is_reply()),
            thread_root: m.thread_root(),
            reply_to: m.reply_to(),
        },
    }
}

impl Planner<'_> {
    /// A preview cut to the configured length, as the store accepts it.
    pub(super) fn cut(&self, preview: String) -> DbText {
        DbText::new(preview::truncate_owned(
            preview,
            self.settings.preview_chars,
        ))
    }

    pub(super) fn message_event(
        &mut self,
        room_id: &RoomId,
        env: &Envelope<'_>,
        raw: &RawValue,
        at: Ts,
    ) -> serde_json::Result<Outcome> {
        let content: MessageView<'_> = env.content_borrowed()?;
        let mut shape = shape(&content, env.sender.localpart());
        if env.hide_preview {
            // Decrypted for the agents, not for the database (`encryption.store_previews`).
            shape.preview = "[encrypted]".into();
        }
        if shape.invalid {
            return Ok(Outcome::InvalidId);
        }
        if let Some(target) = shape.replaces {
            let Some(sender) = self.party(&env.sender) else {
                return Ok(Outcome::Skipped);
            };
            let preview = self.cut(shape.preview);
            self.batch.edits.push(Edit {
                target,
                sender,
                preview,
                at,
            });
            // Edits address agents only when configured to: the new text is judged like a
            // message, with the edit event's own `m.mentions` (the newly mentioned users).
            if self.settings.answer_edits
                && let Some(new) = &content.new_content
            {
                let (body, html) = preview::bodies(new);
                self.candidate(
                    room_id,
                    env,
                    raw,
                    at,
                    body,
                    html,
                    content.mentioned(),
                    None,
                    None,
                );
            }
            return Ok(Outcome::Mirrored);
        }
        // Edits keep the parts of the message they edit (`m.new_content` media is not read).
        let parts = parts::of_message(&content.msgtype, env.content.get(), env.hide_preview);
        let outcome = self.message(
            room_id,
            env,
            shape.preview,
            at,
            shape.thread_root.clone(),
            parts,
        );
        if outcome == Outcome::Mirrored {
            let (body, html) = preview::bodies(&content);
            let body = if content.is_reply() {
                preview::strip_reply_fallback(body)
            } else {
                body
            };
            if self.bot_command(room_id, env, body) {
                // A command for the bridge, not a question for its agents.
                return Ok(outcome);
            }
            let mentions = content.mentioned();
            // Being addressed opens (or revives) the agent's session in the channel.
            if let (Some(mentions), Some(work)) = (&mentions, self.rooms.get(room_id)) {
                let channel = work.state.channel_id;
                let agents: Vec<_> = mentions
                    .iter()
                    .filter(|u| **u != env.sender)
                    .filter_map(|u| self.registry.get(u))
                    .map(|a| a.id)
                    .collect();
                for agent in agents {
                    self.session(channel, Some(agent), SessionChange::Activate, at);
                }
            }
            self.candidate(
                room_id,
                env,
                raw,
                at,
                body,
                html,
                mentions,
                shape.reply_to,
                shape.thread_root,
            );
        }
        Ok(outcome)
    }

    pub(super) fn sticker(
        &mut self,
        room_id: &RoomId,
        env: &Envelope<'_>,
        at: Ts,
    ) -> serde_json::Result<Outcome> {
        // The body is all a sticker needs to be mirrored; its image is read as well as it
        // parses (`parts::of_sticker`), never refusing the event.
        let content: StickerBody = env.content()?;
        // Decrypted for the agents, not for the database (`encryption.store_previews`).
        let preview = if env.hide_preview {
            "[encrypted]".to_owned()
        } else {
            format!("[sticker] {}", content.body)
        };
        Ok(self.message(
            room_id,
            env,
            preview,
            at,
            None,
            parts::of_sticker(env.content.get()),
        ))
    }

    pub(super) fn encrypted(
        &mut self,
        room_id: &RoomId,
        env: &Envelope<'_>,
        at: Ts,
    ) -> serde_json::Result<Outcome> {
        let rel: EncryptedRelation = env.content()?;
        if matches!(rel.relates_to, Some(encrypted::Relation::Replacement(_))) {
            // An encrypted edit the bridge could not read: the original row stays.
            return Ok(Outcome::Skipped);
        }
        Ok(self.message(
            room_id,
            env,
            "[encrypted]".to_owned(),
            at,
            None,
            Parts::default(),
        ))
    }

    pub(super) fn redaction(&mut self, env: &Envelope<'_>, at: Ts) -> serde_json::Result<Outcome> {
        let content: RoomRedactionEventContent = env.content()?;
        let Some(target) = content.redacts.or_else(|| env.redacts.clone()) else {
            return Ok(Outcome::Malformed);
        };
        if target.as_str().contains('\0') {
            return Ok(Outcome::InvalidId);
        }
        self.batch.redactions.push(Redaction { target, at });
        Ok(Outcome::Mirrored)
    }

    /// A new message row with its parts, unless the sender is the bridge itself.
    fn message(
        &mut self,
        room_id: &RoomId,
        env: &Envelope<'_>,
        preview: String,
        at: Ts,
        thread_root: Option<OwnedEventId>,
        parts: Parts,
    ) -> Outcome {
        let Some(channel_id) = self.rooms.get(room_id).map(|w| w.state.channel_id) else {
            return Outcome::IgnoredRoom;
        };
        let Some(sender) = self.party(&env.sender) else {
            return Outcome::Skipped;
        };
        if let Party::Agent(agent) = sender {
            self.session(channel_id, Some(agent), SessionChange::Activate, at);
        }
        let preview = self.cut(preview);
        if let Some(outcome) = parts.outcome {
            if outcome.starts_with("bad_") {
                // Stored with what is known; counted once committed (`media_parts`).
                tracing::info!(%room_id, event_id = %env.event_id, outcome, "media with a malformed url, file or info: stored as far as it parses");
            }
            self.media.push(outcome);
        }
        self.batch.messages.push(NewMessage {
            id: MessageId::new(),
            channel_id,
            event_id: env.event_id.clone(),
            sender,
            preview,
            at,
            thread_root,
            edited_at: None,
            redacted_at: None,
            parts: parts.parts,
        });
        Outcome::Mirrored
    }

    /// Queues a bot command (durable, one job per event) when the message is one: the prefix,
    /// anything a person says in a direct chat with the bot alone, a bare `stop` where agents
    /// are, or a bare `forget` in a direct chat with an agent.
    fn bot_command(&mut self, room_id: &RoomId, env: &Envelope<'_>, body: &str) -> bool {
        let Some(work) = self.rooms.get(room_id) else {
            return false;
        };
        if self.sync || env.sender == self.namespace.bot() || self.namespace.is_puppet(&env.sender)
        {
            return false;
        }
        let direct_with_bot = work.state.is_direct && work.state.agents.is_empty();
        let text = match command_text(body, &self.settings.command_prefix, direct_with_bot) {
            Some(text) => text,
            // A bare "stop" where agents are stops what they are writing: never a question.
            None if !work.state.agents.is_empty() && body.trim().eq_ignore_ascii_case("stop") => {
                "stop"
            }
            // A bare "forget" in a direct chat with an agent starts the conversation over (the
            // agent answers it: the bot is not in such a chat).
            None if work.state.is_direct
                && !work.state.agents.is_empty()
                && body.trim().eq_ignore_ascii_case("forget") =>
            {
                "forget"
            }
            None => return false,
        };
        self.batch.jobs.push(NewJob {
            kind: JobKind::Command,
            room_id: room_id.to_owned(),
            user_id: env.sender.clone(),
            reason: None,
            event_id: Some(env.event_id.clone()),
            body: Some(DbText::new(text)),
        });
        true
    }

    /// Records a mirrored message of a room with agents: the run scheduler decides after commit
    /// whether it addresses one.
    #[allow(clippy::too_many_arguments)]
    fn candidate(
        &mut self,
        room_id: &RoomId,
        env: &Envelope<'_>,
        raw: &RawValue,
        at: Ts,
        body: &str,
        formatted_body: Option<&str>,
        mentions: Option<Vec<ruma::OwnedUserId>>,
        reply_to: Option<OwnedEventId>,
        thread_root: Option<OwnedEventId>,
    ) {
        let Some(work) = self.rooms.get(room_id) else {
            return;
        };
        if work.state.agents.is_empty() || self.sync || env.sender == self.namespace.bot() {
            return;
        }
        let event = raw.to_owned();
        self.batch.candidates.push(NewCandidate {
            channel_id: work.state.channel_id,
            room_id: room_id.to_owned(),
            event_id: env.event_id.clone(),
            at,
            payload: CandidatePayload {
                sender: env.sender.clone(),
                sender_is_agent: self.namespace.is_puppet(&env.sender),
                body: body.to_owned(),
                formatted_body: formatted_body.map(str::to_owned),
                mentions,
                reply_to,
                thread_root,
                is_direct: work.state.is_direct,
                event,
            },
        });
    }
}

/// Folds edits and redactions into messages of the same batch, keeps the newest edit per
/// target, and drops edits of messages redacted in the batch: afterwards no row is written
/// twice by one statement.
pub(super) fn fold_messages(b: &mut Batch) {
    let redacted: HashMap<OwnedEventId, Ts> = b
        .redactions
        .iter()
        .map(|r| (r.target.clone(), r.at))
        .collect();
    let index: HashMap<OwnedEventId, usize> = b
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| (m.event_id.clone(), i))
        .collect();
    // Newest edit per target.
    let mut newest: HashMap<OwnedEventId, Edit> = HashMap::default();
    for e in b.edits.drain(..) {
        match newest.get(&e.target) {
            Some(kept) if kept.at > e.at => {}
            _ => {
                newest.insert(e.target.clone(), e);
            }
        }
    }
    let mut edits = Vec::new();
    let mut order: Vec<OwnedEventId> = newest.keys().cloned().collect();
    order.sort();
    for target in order {
        let Some(e) = newest.remove(&target) else {
            continue;
        };
        if redacted.contains_key(&e.target) {
            continue;
        }
        match index.get(&e.target) {
            Some(&i) => {
                let m = &mut b.messages[i];
                if m.sender == e.sender && m.edited_at.is_none_or(|t| t <= e.at) {
                    m.preview = e.preview;
                    m.edited_at = Some(e.at);
                }
            }
            None => edits.push(e),
        }
    }
    b.edits = edits;
    let mut seen = HashSet::default();
    b.redactions.retain(|r| seen.insert(r.target.clone()));
    // A question redacted in its own batch is never a candidate (a statement cannot cancel
    // a row it inserts).
    b.candidates.retain(|c| !redacted.contains_key(&c.event_id));
    b.redactions.retain(|r| match index.get(&r.target) {
        Some(&i) => {
            let m = &mut b.messages[i];
            m.preview = DbText::default();
            m.redacted_at = Some(r.at);
            // A redacted message keeps no content: no parts either.
            m.parts.clear();
            // Still listed: the statement cancels the message's trigger candidate too.
            true
        }
        None => true,
    });
}

/// The command text of a message, if it is one (the planner recognises commands; `commands`
/// parses and runs them): what follows the prefix (`!daarion agents` →
/// `agents`), or the whole text in a direct chat with the bot.
pub(crate) fn command_text<'a>(
    body: &'a str,
    prefix: &str,
    direct_with_bot: bool,
) -> Option<&'a str> {
    let trimmed = body.trim_start();
    if let Some(rest) = trimmed.strip_prefix(prefix)
        && (rest.is_empty() || rest.starts_with(char::is_whitespace))
    {
        return Some(rest.trim());
    }
    direct_with_bot.then(|| body.trim())
}

#[cfg(test)]
mod tests {
    use super::command_text;

    #[test]
    fn prefix_and_direct_chats() {
        assert_eq!(
            command_text("!daarion agents", "!daarion", false),
            Some("agents")
        );
        assert_eq!(command_text("  !daarion", "!daarion", false), Some(""));
        assert_eq!(command_text("!daarionx agents", "!daarion", false), None);
        assert_eq!(command_text("hello", "!daarion", false), None);
        assert_eq!(command_text(" help ", "!daarion", true), Some("help"));
    }
}
