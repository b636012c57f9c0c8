//! The events a batch publishes, drafted from the batch itself: one constructor per row kind,
//! shared by both dialects. Whether a draft is kept depends on what the write actually did (a
//! duplicate message inserts nothing, an edit of an unknown message updates nothing), which each
//! dialect learns from its own statements: PostgreSQL joins the drafts to the `RETURNING` rows
//! of its CTEs ([`Witness`]), SQLite checks each statement's result.

use crate::{
    db::{ChannelWrite, Edit, MemberWrite, NewMessage, Party, Redaction},
    model::{
        SenderType, Ts,
        ids::{ChannelId, MessageId},
        topics::{
            ChannelChanged, Draft, MemberChanged, MessageCreated, MessageEdited, MessageRedacted,
            PAYLOAD_VERSION, Topic, channel_partition,
        },
    },
};

/// Which write a PostgreSQL draft depends on, and how its key matches that write's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Witness {
    /// Kept when `mi` inserted the message (key: message id).
    Message,
    /// Kept when `ed` updated the target (key: event id); ids come from the row.
    Edit,
    /// Kept when `rd` redacted the target (key: event id); ids come from the row.
    Redaction,
    /// Kept when `ch` inserted the channel (key: channel id).
    ChannelCreated,
    /// Kept when `chu` changed the channel (key: channel id).
    ChannelUpdated,
    /// Kept when the join upsert started a membership period at `at` (key: channel:member).
    Joined { agent: bool },
    /// Kept when the join upsert stored `left_at = at` (key: channel:member).
    JoinedThenLeft { agent: bool },
    /// Kept when the leave update ended a membership (key: channel:member).
    Left { agent: bool },
}

impl Witness {
    /// The tag the statement filters drafts by.
    pub(super) fn tag(self) -> &'static str {
        match self {
            Witness::Message => "m",
            Witness::Edit => "e",
            Witness::Redaction => "r",
            Witness::ChannelCreated => "cc",
            Witness::ChannelUpdated => "cu",
            Witness::Joined { agent: false } => "ju",
            Witness::Joined { agent: true } => "ja",
            Witness::JoinedThenLeft { agent: false } => "jlu",
            Witness::JoinedThenLeft { agent: true } => "jla",
            Witness::Left { agent: false } => "lu",
            Witness::Left { agent: true } => "la",
        }
    }
}

/// A draft and the write it depends on.
#[derive(Debug)]
pub(super) struct Drafted {
    pub witness: Witness,
    /// How the witness's rows are matched.
    pub key: String,
    /// The membership timestamp a member witness must show.
    pub at: Option<Ts>,
    pub draft: Draft,
}

fn sender_type(p: Party) -> SenderType {
    match p {
        Party::User(_) => SenderType::Human,
        Party::Agent(_) => SenderType::Agent,
    }
}

/// The id of a person or an agent, as `channel_members` stores either.
pub(super) fn party_uuid(party: Party) -> uuid::Uuid {
    match party {
        Party::User(u) => u.0,
        Party::Agent(a) => a.0,
    }
}

/// The key of a membership row.
pub(super) fn member_key(channel: ChannelId, party: Party) -> String {
    format!(
        "{}:{}",
        channel.0.hyphenated(),
        party_uuid(party).hyphenated()
    )
}

pub(super) fn message_created(m: &NewMessage) -> Draft {
    Draft::new(
        Topic::MessageCreated,
        channel_partition(m.channel_id),
        &MessageCreated {
            v: PAYLOAD_VERSION,
            channel_id: m.channel_id,
            message_id: m.id,
            matrix_event_id: m.event_id.as_str(),
            sender_type: sender_type(m.sender),
            sender_user_id: m.sender.user(),
            sender_agent_id: m.sender.agent(),
            content_preview: m.preview.as_str(),
            thread_root_event_id: m.thread_root.as_ref().map(|t| t.as_str()),
            created_at: m.at,
            edited_at: m.edited_at,
            redacted_at: m.redacted_at,
        },
    )
}

/// An edit's draft; `row` (message id, channel id) is known to SQLite, and merged from the
/// `RETURNING` row by PostgreSQL. The partition is then the channel (empty until known).
pub(super) fn message_edited(e: &Edit, row: Option<(MessageId, ChannelId)>) -> Draft {
    Draft::new(
        Topic::MessageEdited,
        row.map(|r| channel_partition(r.1)).unwrap_or_default(),
        &MessageEdited {
            v: PAYLOAD_VERSION,
            channel_id: row.map(|r| r.1),
            message_id: row.map(|r| r.0),
            matrix_event_id: e.target.as_str(),
            sender_type: sender_type(e.sender),
            sender_user_id: e.sender.user(),
            sender_agent_id: e.sender.agent(),
            content_preview: e.preview.as_str(),
            edited_at: e.at,
        },
    )
}

/// A redaction's draft (see [`message_edited`] for `row`).
pub(super) fn message_redacted(r: &Redaction, row: Option<(MessageId, ChannelId)>) -> Draft {
    Draft::new(
        Topic::MessageRedacted,
        row.map(|r| channel_partition(r.1)).unwrap_or_default(),
        &MessageRedacted {
            v: PAYLOAD_VERSION,
            channel_id: row.map(|r| r.1),
            message_id: row.map(|r| r.0),
            matrix_event_id: r.target.as_str(),
            redacted_at: r.at,
        },
    )
}

pub(super) fn channel_changed(w: &ChannelWrite, at: Ts) -> Draft {
    let created = w.create.as_ref();
    Draft::new(
        if created.is_some() {
            Topic::ChannelCreated
        } else {
            Topic::ChannelUpdated
        },
        channel_partition(w.channel_id),
        &ChannelChanged {
            v: PAYLOAD_VERSION,
            channel_id: w.channel_id,
            matrix_room_id: w.room_id.as_str(),
            microdao_id: created.map(|c| c.microdao_id),
            slug: created.map(|c| c.slug.as_str()),
            name: w.name.as_str(),
            topic: w.topic.as_deref(),
            visibility: w.visibility,
            at,
        },
    )
}

pub(super) fn member_changed(m: &MemberWrite, topic: Topic, at: Ts) -> Draft {
    Draft::new(
        topic,
        channel_partition(m.channel_id),
        &MemberChanged {
            v: PAYLOAD_VERSION,
            channel_id: m.channel_id,
            member_type: match m.party {
                Party::User(_) => "user",
                Party::Agent(_) => "agent",
            },
            user_id: m.party.user(),
            agent_id: m.party.agent(),
            role: m.role,
            at,
        },
    )
}

/// Every draft of `b` whose keeping PostgreSQL decides by witness, in the order a consumer
/// should see them within a channel: the channel, its members, then messages, edits and
/// redactions (session changes, built in SQL, come last).
pub(super) fn pg_drafts(b: &crate::db::Batch) -> Vec<Drafted> {
    let mut out = Vec::with_capacity(b.messages.len() + b.edits.len() + b.redactions.len());
    let now = Ts::now();
    for w in &b.channels {
        out.push(Drafted {
            witness: if w.create.is_some() {
                Witness::ChannelCreated
            } else {
                Witness::ChannelUpdated
            },
            key: channel_partition(w.channel_id),
            at: None,
            draft: channel_changed(w, now),
        });
    }
    for m in &b.members {
        let agent = m.party.agent().is_some();
        let key = member_key(m.channel_id, m.party);
        match (m.joined_at, m.left_at) {
            (Some(joined), left) => {
                out.push(Drafted {
                    witness: Witness::Joined { agent },
                    key: key.clone(),
                    at: Some(joined),
                    draft: member_changed(m, Topic::MemberJoined, joined),
                });
                if let Some(left) = left {
                    out.push(Drafted {
                        witness: Witness::JoinedThenLeft { agent },
                        key,
                        at: Some(left),
                        draft: member_changed(m, Topic::MemberLeft, left),
                    });
                }
            }
            (None, left) => out.push(Drafted {
                witness: Witness::Left { agent },
                key,
                at: None,
                draft: member_changed(m, Topic::MemberLeft, left.unwrap_or(now)),
            }),
        }
    }
    for m in &b.messages {
        out.push(Drafted {
            witness: Witness::Message,
            key: m
                .id
                .0
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())
                .to_owned(),
            at: None,
            draft: message_created(m),
        });
    }
    for e in &b.edits {
        out.push(Drafted {
            witness: Witness::Edit,
            key: e.target.as_str().to_owned(),
            at: None,
            draft: message_edited(e, None),
        });
    }
    for r in &b.redactions {
        out.push(Drafted {
            witness: Witness::Redaction,
            key: r.target.as_str().to_owned(),
            at: None,
            draft: message_redacted(r, None),
        });
    }
    out
}
