//! What a runtime is given: the system prompt, the triggering messages, and the room's recent
//! messages (full bodies, read from the homeserver as the puppet, parsed with ruma) with
//! speakers' display names.

use ruma::{OwnedUserId, RoomId, UserId};

use super::{
    history, media,
    runtime::{AgentInfo, ChannelInfo, RunRequest, Turn},
};
use crate::{
    db::triggers::TriggerRow,
    model::Ts,
    model::ids::{ChannelId, RunId},
    puppet::{PuppetError, PuppetIntent},
};

/// Where a run's conversation is, and what bounds it.
pub(super) struct Place<'a> {
    /// The room.
    pub room: &'a RoomId,
    /// Its channel.
    pub channel: ChannelId,
    /// The agent's session there.
    pub session_id: Option<String>,
    /// Nothing at or before this event is part of the conversation (`forget`).
    pub forget_mark: Option<ruma::OwnedEventId>,
    /// Whether a user is an agent (of this bridge): its messages are marked as another agent's.
    pub is_agent: &'a (dyn Fn(&UserId) -> bool + Sync),
    /// What the run may fetch of attachments.
    pub media: media::Media<'a>,
    /// Signs links to attachments, for runtimes that fetch them (webhooks); none for others.
    pub links: Option<&'a crate::links::Links>,
}

/// Builds the request of run `id`.
pub(super) async fn request(
    id: RunId,
    intent: &PuppetIntent,
    place: Place<'_>,
    triggers: &[TriggerRow],
) -> Result<RunRequest, PuppetError> {
    let Place {
        room,
        channel,
        session_id,
        forget_mark,
        is_agent,
        media,
        links,
    } = place;
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
    let want = b.context_events.max(1) as usize;
    // Read far enough back for `want` messages, but never without bound: a room of nothing but
    // reactions or state would otherwise be paged to its start.
    let events = intent
        .history(room, want, (want * 10).max(200), forget_mark.as_deref())
        .await?;
    // The conversation the newest trigger is in: its thread, or the main timeline.
    let newest = triggers.iter().max_by_key(|t| t.at).map(|t| &t.payload.0);
    let thread = newest.and_then(|p| p.thread_root.clone());
    let mut said = history::conversation(&events, thread.as_deref(), want);
    // A reply carries the message it answers, even one older than the window: first in the
    // context, where a person would scroll up to it.
    let reply_to = newest.and_then(|p| p.reply_to.clone());
    if let Some(target) = reply_to
        && !said.iter().any(|s| s.event_id == target)
        && let Some(raw) = intent.event(room, &target).await?
        && let Some(message) = history::message(&raw)
    {
        said.insert(0, message);
    }
    let answered: Vec<&ruma::EventId> = triggers.iter().map(|t| &*t.event_id).collect();
    let context_cut = match b.context_chars {
        Some(budget) => history::within_budget(&mut said, budget as usize, &answered),
        None => 0,
    };
    // Attachments are fetched now, for this run, never on the transaction path.
    media::give(intent, &mut said, &media).await;
    let context: Vec<Turn> = said
        .into_iter()
        .map(|mut said| {
            if let (Some(links), Some(a)) = (links, said.attachment.as_deref_mut()) {
                let link = crate::links::Link {
                    agent: agent.id,
                    room: room.to_owned(),
                    event: said.event_id.clone(),
                    expires: Ts::now().millis() / 1000
                        + i64::try_from(media.config.link_ttl.as_secs()).unwrap_or(i64::MAX / 2),
                };
                a.part.url = Some(format!("/api/v1/media/{}", links.token(&link)));
            }
            said
        })
        .map(|said| Turn {
            is_self: said.sender == agent.user_id,
            // Another agent: one of this bridge's, or anyone's notice (bots speak in notices).
            is_agent: said.sender != agent.user_id && (said.notice || is_agent(&said.sender)),
            name: name_of(&said.sender),
            text: said.text,
            event_id: said.event_id.to_string(),
            sender: said.sender.to_string(),
            parts: said.attachment.map(|a| vec![a.part]).unwrap_or_default(),
        })
        .collect();
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
                is_agent: t.payload.0.sender_is_agent,
                name: name_of(&t.payload.0.sender),
                text: t.payload.0.body.clone(),
                event_id: t.event_id.to_string(),
                sender: t.payload.0.sender.to_string(),
                // Normally in `context` too, with its parts; never fetched twice.
                parts: Vec::new(),
            })
            .collect(),
        context,
        context_cut,
        tools: Vec::new(),
        tool_rounds: Vec::new(),
        answer_now: false,
        stop: Default::default(),
    })
}
