//! Exporting a channel's mirrored conversation (seed 003): the channel, its members and agent
//! sessions, then every message in time order with its sender, preview, edit and redaction
//! marks and parts (seed 004: its media and their caption); as JSON lines or CSV. Messages are
//! read in keyset pages over the `(channel_id, created_at)` index, each page's parts in one more
//! query, and written as they come, so memory stays constant whatever the channel's size.

use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::{
    db::{Store, StoreError, both, parts::PartRow},
    model::{
        Ts,
        ids::{ChannelId, MessageId},
    },
};

/// Messages read per page.
const PAGE: i64 = 1000;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line, each with a `type` (channel, member, session, message).
    Jsonl,
    /// One table: a `record` column (channel, member, session, message) and the union of the
    /// columns.
    Csv,
}

/// Which messages to export (created in `[since, until)`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Range {
    /// From.
    pub since: Option<Ts>,
    /// Until (exclusive).
    pub until: Option<Ts>,
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The channel does not exist.
    #[error("no channel {0}")]
    UnknownChannel(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the output failed.
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
}

impl From<sqlx::Error> for ExportError {
    fn from(e: sqlx::Error) -> Self {
        ExportError::Store(e.into())
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Members written.
    pub members: u64,
    /// Sessions written.
    pub sessions: u64,
    /// Messages written.
    pub messages: u64,
}

/// One exported record; every kind shares the CSV columns.
#[derive(Debug, Default, Serialize, sqlx::FromRow)]
struct Record {
    /// channel | member | session | message.
    #[serde(rename = "type")]
    #[sqlx(skip)]
    record: &'static str,
    /// Created, joined or started.
    at: Option<Ts>,
    /// Left or closed.
    ended_at: Option<Ts>,
    /// user | agent for members and sessions; human | agent | system for messages.
    party_type: Option<String>,
    /// The Matrix id (the room id for the channel).
    party: Option<String>,
    /// users.handle or agents.name (the channel's name for the channel).
    party_name: Option<String>,
    /// Role, session status, or the channel's visibility.
    status: Option<String>,
    /// The message's event.
    matrix_event_id: Option<String>,
    /// The thread it belongs to.
    thread_root_event_id: Option<String>,
    /// When it was last edited.
    edited_at: Option<Ts>,
    /// When it was redacted.
    redacted_at: Option<Ts>,
    /// The preview (the channel's topic for the channel).
    content_preview: Option<String>,
    /// A message's parts (`message_parts`) in order, empty for plain text; absent for the other
    /// records.
    #[sqlx(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    parts: Option<Vec<PartRow>>,
}

/// Writes records in the chosen format.
struct Sink<W> {
    out: W,
    format: Format,
    buf: Vec<u8>,
    header: bool,
}

impl<W: AsyncWrite + Unpin> Sink<W> {
    async fn write(&mut self, r: &Record) -> Result<(), ExportError> {
        self.buf.clear();
        match self.format {
            Format::Jsonl => {
                serde_json::to_writer(&mut self.buf, r).map_err(std::io::Error::other)?;
                self.buf.push(b'\n');
            }
            Format::Csv => {
                let mut w = csv::WriterBuilder::new()
                    .has_headers(!self.header)
                    .from_writer(&mut self.buf);
                w.serialize(CsvRecord::from(r))
                    .map_err(std::io::Error::other)?;
                w.flush()?;
                drop(w);
                self.header = true;
            }
        }
        self.out.write_all(&self.buf).await?;
        Ok(())
    }
}

/// The CSV row (`record` instead of JSON's `type`).
#[derive(Serialize)]
struct CsvRecord<'a> {
    record: &'a str,
    at: Option<Ts>,
    ended_at: Option<Ts>,
    party_type: Option<&'a str>,
    party: Option<&'a str>,
    party_name: Option<&'a str>,
    status: Option<&'a str>,
    matrix_event_id: Option<&'a str>,
    thread_root_event_id: Option<&'a str>,
    edited_at: Option<Ts>,
    redacted_at: Option<Ts>,
    content_preview: Option<&'a str>,
    /// The parts as a JSON array (empty when there are none).
    parts: Option<String>,
}

impl<'a> From<&'a Record> for CsvRecord<'a> {
    fn from(r: &'a Record) -> Self {
        Self {
            record: r.record,
            at: r.at,
            ended_at: r.ended_at,
            party_type: r.party_type.as_deref(),
            party: r.party.as_deref(),
            party_name: r.party_name.as_deref(),
            status: r.status.as_deref(),
            matrix_event_id: r.matrix_event_id.as_deref(),
            thread_root_event_id: r.thread_root_event_id.as_deref(),
            edited_at: r.edited_at,
            redacted_at: r.redacted_at,
            content_preview: r.content_preview.as_deref(),
            parts: r
                .parts
                .as_ref()
                .filter(|p| !p.is_empty())
                .and_then(|p| serde_json::to_string(p).ok()),
        }
    }
}

/// The channel `reference` names: its id, or its Matrix room id.
pub async fn resolve(store: &Store, reference: &str) -> Result<ChannelId, ExportError> {
    if let Ok(id) = reference.parse::<uuid::Uuid>() {
        let found: Option<ChannelId> = both!(store, pool => sqlx::query_scalar(
            "SELECT id FROM channels WHERE id = $1"
        )
        .bind(ChannelId(id))
        .fetch_optional(pool)
        .await?);
        return found.ok_or_else(|| ExportError::UnknownChannel(reference.into()));
    }
    store
        .rooms()
        .channel_for_room(reference)
        .await?
        .ok_or_else(|| ExportError::UnknownChannel(reference.into()))
}

const MEMBERS: &str = "SELECT m.joined_at AS at, m.left_at AS ended_at, \
     CASE WHEN m.member_agent_id IS NULL THEN 'user' ELSE 'agent' END AS party_type, \
     COALESCE(u.matrix_id, a.matrix_id) AS party, COALESCE(u.handle, a.name) AS party_name, m.role AS status, \
     NULL AS matrix_event_id, NULL AS thread_root_event_id, NULL AS edited_at, NULL AS redacted_at, \
     NULL AS content_preview FROM channel_members m LEFT JOIN users u ON u.id = m.member_user_id \
     LEFT JOIN agents a ON a.id = m.member_agent_id WHERE m.channel_id = $1 ORDER BY m.joined_at, m.id";

const SESSIONS: &str = "SELECT s.started_at AS at, s.closed_at AS ended_at, 'agent' AS party_type, \
     a.matrix_id AS party, a.name AS party_name, s.status AS status, NULL AS matrix_event_id, \
     NULL AS thread_root_event_id, NULL AS edited_at, NULL AS redacted_at, NULL AS content_preview \
     FROM agent_sessions s JOIN agents a ON a.id = s.agent_id WHERE s.channel_id = $1 ORDER BY s.started_at, s.id";

/// A page of messages after the keyset `(created_at, id)`.
const MESSAGES: &str = "SELECT m.created_at AS at, NULL AS ended_at, m.sender_type AS party_type, \
     COALESCE(u.matrix_id, a.matrix_id) AS party, COALESCE(u.handle, a.name) AS party_name, NULL AS status, \
     m.matrix_event_id, m.thread_root_event_id, m.edited_at, m.redacted_at, m.content_preview, \
     CAST(m.id AS TEXT) AS page_id \
     FROM messages m LEFT JOIN users u ON u.id = m.sender_user_id LEFT JOIN agents a ON a.id = m.sender_agent_id \
     WHERE m.channel_id = $1 AND ($2 IS NULL OR m.created_at >= $2) AND ($3 IS NULL OR m.created_at < $3) \
     AND ($4 IS NULL OR m.created_at > $4 OR (m.created_at = $4 AND CAST(m.id AS TEXT) > $5)) \
     ORDER BY m.created_at, CAST(m.id AS TEXT) LIMIT $6";

/// A message row with its keyset.
#[derive(sqlx::FromRow)]
struct MessageRow {
    #[sqlx(flatten)]
    record: Record,
    page_id: String,
}

/// Writes the export of `channel` to `out`.
pub async fn write(
    store: &Store,
    channel: ChannelId,
    format: Format,
    range: Range,
    out: impl AsyncWrite + Unpin,
) -> Result<Stats, ExportError> {
    let mut sink = Sink {
        out,
        format,
        buf: Vec::with_capacity(1024),
        header: false,
    };
    let mut stats = Stats::default();
    let head: Option<Record> = both!(store, pool => sqlx::query_as(
        "SELECT created_at AS at, NULL AS ended_at, NULL AS party_type, matrix_room_id AS party, \
         name AS party_name, visibility AS status, NULL AS matrix_event_id, NULL AS thread_root_event_id, \
         NULL AS edited_at, NULL AS redacted_at, topic AS content_preview FROM channels WHERE id = $1",
    )
    .bind(channel)
    .fetch_optional(pool)
    .await?);
    let mut head = head.ok_or_else(|| ExportError::UnknownChannel(channel.to_string()))?;
    head.record = "channel";
    sink.write(&head).await?;
    // Members and sessions are bounded by the room's size: read whole.
    for (sql, kind) in [(MEMBERS, "member"), (SESSIONS, "session")] {
        let rows: Vec<Record> =
            both!(store, pool => sqlx::query_as(sql).bind(channel).fetch_all(pool).await?);
        for mut r in rows {
            r.record = kind;
            sink.write(&r).await?;
            if kind == "member" {
                stats.members += 1;
            } else {
                stats.sessions += 1;
            }
        }
    }
    let mut after: Option<(Ts, String)> = None;
    loop {
        let mut page: Vec<MessageRow> = both!(store, pool => sqlx::query_as(MESSAGES)
            .bind(channel)
            .bind(range.since)
            .bind(range.until)
            .bind(after.as_ref().map(|a| a.0))
            .bind(after.as_ref().map(|a| a.1.clone()))
            .bind(PAGE)
            .fetch_all(pool)
            .await?);
        let full = page.len() as i64 == PAGE;
        // The page's parts in one query (a message id is its keyset's text).
        store
            .parts()
            .attach(
                &mut page,
                |row| MessageId(row.page_id.parse().unwrap_or_default()),
                |row| row.record.parts.get_or_insert_with(Vec::new),
            )
            .await?;
        for mut row in page {
            row.record.record = "message";
            row.record.parts.get_or_insert_with(Vec::new);
            sink.write(&row.record).await?;
            stats.messages += 1;
            after = row.record.at.map(|at| (at, row.page_id));
        }
        if !full {
            break;
        }
    }
    sink.out.flush().await?;
    Ok(stats)
}
