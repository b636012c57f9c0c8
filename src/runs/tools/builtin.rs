//! The built-in tools: `matrix.read_history` (more of this room than the context gives, read
//! as the agent, so only what its membership lets it see, and never past a `forget`) and
//! `daarion.list_channels` (the microDAO's channels the agent is a member of).

use serde_json::{Map, Value, json};

use super::{RunPlace, ToolError};
use crate::{
    model::tools::{LIST_CHANNELS, READ_HISTORY},
    runs::{history, runtime::ToolDef},
};

/// Messages `matrix.read_history` returns at most.
const MAX_MESSAGES: u64 = 100;

/// The definition the model gets of built-in `name` (function name `function`).
pub(super) fn definition(name: &str, function: String) -> Option<ToolDef> {
    match name {
        READ_HISTORY => Some(ToolDef {
            name: function,
            description: "Read older messages of this room than you were given, oldest first \
                          (the room you are answering in only)."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "limit": { "type": "integer", "minimum": 1, "maximum": MAX_MESSAGES,
                               "description": "How many of the latest messages to read (default 50)." }
                },
            }),
        }),
        LIST_CHANNELS => Some(ToolDef {
            name: function,
            description: "List the channels (rooms) of this microDAO that you are a member of."
                .into(),
            parameters: json!({ "type": "object", "properties": {} }),
        }),
        _ => None,
    }
}

/// Runs built-in `name`.
pub(super) async fn call(
    name: &str,
    place: &RunPlace<'_>,
    arguments: &Map<String, Value>,
) -> Result<String, ToolError> {
    match name {
        READ_HISTORY => read_history(place, arguments).await,
        LIST_CHANNELS => list_channels(place).await,
        other => Err(ToolError::NotAllowed(other.to_owned())),
    }
}

async fn read_history(
    place: &RunPlace<'_>,
    arguments: &Map<String, Value>,
) -> Result<String, ToolError> {
    let limit = match arguments.get("limit") {
        None | Some(Value::Null) => 50,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=MAX_MESSAGES).contains(n))
            .ok_or_else(|| {
                ToolError::Arguments(format!("`limit` must be an integer 1 to {MAX_MESSAGES}"))
            })?,
    } as usize;
    // As the agent: the homeserver gives only what its membership lets it see; the forget
    // mark keeps a forgotten conversation forgotten.
    let events = place
        .intent
        .history(place.room, limit, (limit * 10).max(200), place.forget_mark)
        .await
        .map_err(|e| ToolError::Network(e.to_string()))?;
    let said = history::conversation(&events, None, limit);
    let names = place
        .intent
        .member_names(place.room)
        .await
        .unwrap_or_default();
    let lines: Vec<String> = said
        .iter()
        .map(|s| {
            let name = names
                .get(&s.sender)
                .cloned()
                .unwrap_or_else(|| s.sender.localpart().to_owned());
            match &s.attachment {
                Some(a) if s.text.is_empty() => format!("{name}: {}", a.part.label()),
                Some(a) => format!("{name}: {} {}", s.text, a.part.label()),
                None => format!("{name}: {}", s.text),
            }
        })
        .collect();
    if lines.is_empty() {
        return Ok("(no messages)".into());
    }
    Ok(lines.join("\n"))
}

async fn list_channels(place: &RunPlace<'_>) -> Result<String, ToolError> {
    let channels = place
        .store
        .channels()
        .agent_channels(place.agent.id)
        .await
        .map_err(|e| ToolError::Protocol(format!("cannot read the channels: {e}")))?;
    // The microDAO of the room the agent answers in.
    let microdao = channels
        .iter()
        .find(|c| c.id == place.channel)
        .map(|c| c.microdao.clone());
    let listed: Vec<Value> = channels
        .iter()
        .filter(|c| microdao.as_ref().is_none_or(|m| *m == c.microdao))
        .map(|c| {
            json!({
                "name": c.name, "slug": c.slug, "topic": c.topic, "room_id": c.matrix_room_id,
                "visibility": c.visibility, "microdao": c.microdao,
            })
        })
        .collect();
    Ok(Value::Array(listed).to_string())
}
