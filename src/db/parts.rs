//! Reads of `message_parts`: the parts of a page of messages in one query (the agent API's
//! message pages, the channel export). Parts are written by the transaction write path
//! (`write/stages/parts.rs`); a run adds what it read of an attachment (`set_text`).

use serde::Serialize;

use crate::{
    db::{Pool, Store, StoreError},
    model::{PartKind, ids::MessageId},
};

/// One part of a message as the agent API and the export show it. Never an encrypted file's
/// key: the table does not hold one.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PartRow {
    /// The message it belongs to.
    #[serde(skip)]
    pub message_id: MessageId,
    /// Its place in the message, from 0.
    pub position: i32,
    /// text | image | file | audio | video | tool_call | tool_result.
    pub kind: PartKind,
    /// The MIME type the event declares.
    pub mimetype: Option<String>,
    /// The size in bytes the event declares.
    pub size: Option<i64>,
    /// The file name.
    pub name: Option<String>,
    /// Width in pixels.
    pub width: Option<i32>,
    /// Height in pixels.
    pub height: Option<i32>,
    /// Duration in milliseconds.
    pub duration_ms: Option<i64>,
    /// A voice message (MSC3245).
    pub voice: bool,
    /// The file's `mxc://` URI, `encrypted` for an EncryptedFile, or `None` when unknown.
    pub source: Option<String>,
    /// A text part's text (a caption).
    pub text: Option<String>,
}

/// The columns of [`PartRow`].
const COLUMNS: &str = "message_id, position, kind, mimetype, size_bytes AS size, name, width, height, \
     duration_ms, voice, source, text";

/// The store's view of `message_parts` reads.
#[derive(Clone, Debug)]
pub struct PartStore {
    store: Store,
}

impl Store {
    /// Reads of message parts.
    pub fn parts(&self) -> PartStore {
        PartStore {
            store: self.clone(),
        }
    }
}

impl PartStore {
    /// The parts of `messages`, by message and position: one query for a whole page (nothing
    /// when the page is empty).
    pub async fn of_messages(&self, messages: &[MessageId]) -> Result<Vec<PartRow>, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        Ok(match &self.store.pool {
            Pool::Pg(pool) => {
                sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM message_parts WHERE message_id = ANY($1) \
                     ORDER BY message_id, position"
                ))
                .bind(messages)
                .fetch_all(pool)
                .await?
            }
            Pool::Sqlite(pool) => {
                let ids: Vec<String> = messages.iter().map(|m| m.to_string()).collect();
                sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM message_parts WHERE message_id IN \
                     (SELECT value FROM json_each($1)) ORDER BY message_id, position"
                ))
                .bind(serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into()))
                .fetch_all(pool)
                .await?
            }
        })
    }

    /// [`PartStore::of_messages`], handed to each message of `page` (by `id` and `parts`),
    /// in order.
    pub async fn attach<T>(
        &self,
        page: &mut [T],
        id: impl Fn(&T) -> MessageId,
        parts: impl Fn(&mut T) -> &mut Vec<PartRow>,
    ) -> Result<(), StoreError> {
        let ids: Vec<MessageId> = page.iter().map(&id).collect();
        let mut by: foldhash::HashMap<MessageId, Vec<PartRow>> = Default::default();
        for part in self.of_messages(&ids).await? {
            by.entry(part.message_id).or_default().push(part);
        }
        if by.is_empty() {
            return Ok(());
        }
        for item in page.iter_mut() {
            if let Some(found) = by.remove(&id(item)) {
                *parts(item) = found;
            }
        }
        Ok(())
    }

    /// Keeps what a run read of a message's attachment (a transcript, a file's text) as the text
    /// of its first part, cut at [`TEXT_CHARS`] characters; once (a text already there stays).
    pub async fn set_text(&self, event_id: &ruma::EventId, text: &str) -> Result<(), StoreError> {
        let text: String = text.chars().take(TEXT_CHARS).collect();
        const SQL: &str = "UPDATE message_parts SET text = $2 WHERE position = 0 AND text IS NULL \
             AND message_id = (SELECT id FROM messages WHERE matrix_event_id = $1)";
        match &self.store.pool {
            Pool::Pg(pool) => {
                sqlx::query(SQL)
                    .bind(event_id.as_str())
                    .bind(text)
                    .execute(pool)
                    .await?;
            }
            Pool::Sqlite(pool) => {
                sqlx::query(SQL)
                    .bind(event_id.as_str())
                    .bind(text)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Characters of text a part keeps at most: a caption (the write path), a transcript or a file's
/// text (a run).
pub const TEXT_CHARS: usize = 4000;
