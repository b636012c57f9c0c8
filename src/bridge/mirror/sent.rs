//! What a delivered puppet send writes: its message (or edit) row, the agent's activity in the
//! channel, and the outbox item marked sent, in one commit (the homeserver's echo of it later
//! is then a duplicate, absorbed by the event id's unique key).

use ruma::{EventId, RoomId};

use super::{Mirror, content::MessageView};
use crate::{
    bridge::planner::messages::shape,
    db::{
        Batch, Edit, NewMessage, Party, SentRecord, SessionChange, SessionOp, StoreError,
        outbox::OutboxItem, text::DbText,
    },
    model::{Agent, Ts, ids::MessageId},
    puppet::RUN_KEY_PREFIX,
};

impl Mirror {
    /// Records a puppet send the homeserver accepted as `event_id`.
    pub async fn mirror_sent(
        &self,
        agent: &Agent,
        room: &RoomId,
        item: &OutboxItem,
        event_id: &EventId,
    ) -> Result<(), StoreError> {
        let mut batch = Batch {
            sent: Some(SentRecord {
                outbox_id: item.id,
                event_id: event_id.to_owned(),
                run: item
                    .idempotency_key
                    .as_deref()
                    .and_then(|k| k.strip_prefix(RUN_KEY_PREFIX))
                    .and_then(|id| id.parse().ok())
                    .map(crate::model::ids::RunId),
            }),
            ..Default::default()
        };
        let channel = match self.caches.room(room) {
            Some(state) => Some(state.channel_id),
            None => self.store.rooms().channel_for_room(room.as_str()).await?,
        };
        if let Some(channel_id) = channel {
            let now = Ts::now();
            batch.sessions.push(SessionOp {
                channel_id,
                agent: Some(agent.id),
                change: SessionChange::Activate,
                at: now,
            });
            // Stored as JSON; read through the same view the planner uses.
            let json = (item.redacts.is_none() && item.event_type == "m.room.message")
                .then(|| item.content.0.to_string());
            let content = json
                .as_deref()
                .and_then(|j| serde_json::from_str::<MessageView<'_>>(j).ok());
            if let Some(content) = content {
                let shape = shape(&content, agent.user_id.localpart());
                let preview = DbText::new(super::preview::truncate(
                    &shape.preview,
                    self.settings.preview_chars,
                ));
                match shape.replaces.filter(|_| !shape.invalid) {
                    Some(target) => batch.edits.push(Edit {
                        target,
                        sender: Party::Agent(agent.id),
                        preview,
                        at: now,
                    }),
                    None => batch.messages.push(NewMessage {
                        id: MessageId::new(),
                        channel_id,
                        event_id: event_id.to_owned(),
                        sender: Party::Agent(agent.id),
                        preview,
                        at: now,
                        thread_root: shape.thread_root,
                        edited_at: None,
                        redacted_at: None,
                        // What the agent sent is mirrored here, not from the echo (a duplicate).
                        parts: super::parts::of_message(
                            &content.msgtype,
                            json.as_deref().unwrap_or("{}"),
                            false,
                        )
                        .parts,
                    }),
                }
            }
        }
        self.store.apply(&batch).await?;
        Ok(())
    }
}
