//! What a runtime is given: the system prompt, the triggering messages, and the room's recent
//! messages (full bodies, read from the homeserver as the puppet, parsed with ruma) with
//! speakers' display names.

use ruma::{
    OwnedUserId, RoomId,
    events::{
        AnyMessageLikeEvent, AnyTimelineEvent, MessageLikeEvent,
        room::message::{Relation, RoomMessageEventContent},
    },
};

use super::runtime::{AgentInfo, ChannelInfo, RunRequest, Turn};
use crate::{
    db::triggers::TriggerRow,
    model::ids::{ChannelId, RunId},
    puppet::{PuppetError, PuppetIntent},
};

/// Builds the request of run `id`.
pub(super) async fn request(
    id: RunId,
    intent: &PuppetIntent,
    room: &RoomId,
    channel: ChannelId,
    session_id: Option<String>,
    triggers: &[TriggerRow],
) -> Result<RunRequest, PuppetError> {
    let agent = intent.agent();
    let b = &agent.behaviour;
    // Names are a nicety: the context is still useful without them.
    let names = intent.member_names(room).await.unwrap_or_default();
    let name_of = |user: &OwnedUserId| {
        names
            .get(user)
            .cloned()
            .unwrap_or_else(|| user.localpart().to_owned())
    };
    let events = intent.recent_events(room, b.context_events.max(1)).await?;
    let mut context: Vec<Turn> = events
        .iter()
        .filter_map(|raw| {
            let AnyTimelineEvent::MessageLike(AnyMessageLikeEvent::RoomMessage(
                MessageLikeEvent::Original(ev),
            )) = raw.deserialize().ok()?
            else {
                return None;
            };
            let content: &RoomMessageEventContent = &ev.content;
            if matches!(content.relates_to, Some(Relation::Replacement(_))) {
                return None;
            }
            Some(Turn {
                is_self: ev.sender == agent.user_id,
                name: name_of(&ev.sender),
                text: content.body().to_owned(),
                event_id: ev.event_id.to_string(),
                sender: ev.sender.to_string(),
            })
        })
        .collect();
    context.reverse();
    let mut system = b
        .instructions
        .clone()
        .unwrap_or_else(|| format!("You are {}, an AI agent in a Matrix chat.", agent.name));
    if let Some(extra) = &b.agent_instructions {
        system.push_str("\n\n");
        system.push_str(extra);
    }
    Ok(RunRequest {
        run_id: id.to_string(),
        agent: AgentInfo {
            id: agent.id.to_string(),
            external_id: agent.external_id.clone(),
            name: agent.name.clone(),
            matrix_id: agent.user_id.to_string(),
        },
        channel: ChannelInfo {
            id: channel.to_string(),
            room_id: room.to_string(),
        },
        session_id,
        model: b.model.clone(),
        system_prompt: system,
        triggers: triggers.iter().map(|t| t.payload.0.event.clone()).collect(),
        trigger_texts: triggers.iter().map(|t| t.payload.0.body.clone()).collect(),
        trigger_turns: triggers
            .iter()
            .map(|t| Turn {
                is_self: false,
                name: name_of(&t.payload.0.sender),
                text: t.payload.0.body.clone(),
                event_id: t.event_id.to_string(),
                sender: t.payload.0.sender.to_string(),
            })
            .collect(),
        context,
    })
}
