//! Who is addressed: the trigger rules that decide which agents a message calls on. The planner
//! collects candidate messages while it plans a transaction; [`evaluate`] turns them into
//! triggers (with a few lookups, only for rooms where agents are members) that the run
//! scheduler receives once the transaction is committed.

use std::collections::BTreeMap;

use ruma::OwnedRoomId;

use crate::db::{Store, StoreError, types::Ts};

/// When an agent answers in a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Respond {
    /// When mentioned, replied to, or in a thread it is part of (the default).
    Mentions,
    /// Every message from a person (DMs always).
    All,
    Never,
}

impl Respond {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mentions" => Some(Self::Mentions),
            "all" => Some(Self::All),
            "never" => Some(Self::Never),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Respond::Mentions => "mentions",
            Respond::All => "all",
            Respond::Never => "never",
        }
    }
}

/// A message the agent must answer.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub agent: String,
    pub room_id: OwnedRoomId,
    pub event_id: String,
    pub sender: String,
    /// Sent by another agent (counts toward the agent→agent chain).
    pub from_agent: bool,
    pub at: Ts,
    pub body: String,
    pub thread_root: Option<String>,
    /// The triggering event, in full, as the homeserver sent it.
    pub event: serde_json::Value,
}

/// What the run scheduler learns from a committed transaction.
#[derive(Debug, Clone)]
pub enum RunSignal {
    Trigger(Trigger),
    /// A redacted event: a queued run it triggered is cancelled.
    Redacted(String),
}

/// A mirrored message that might address agents, with what the rules look at.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub room_id: OwnedRoomId,
    pub event_id: String,
    pub sender: String,
    pub sender_is_agent: bool,
    pub at: Ts,
    pub body: String,
    pub formatted_body: Option<String>,
    /// `m.mentions.user_ids`; `None` when the event has no `m.mentions` (an old client).
    pub mentions: Option<Vec<String>>,
    pub reply_to: Option<String>,
    pub thread_root: Option<String>,
    pub event: serde_json::Value,
    /// The room's agents when the message arrived, with their setting and display name.
    pub agents: BTreeMap<String, (Respond, String)>,
    pub is_direct: bool,
}

/// Why a candidate addressed nobody (for metrics and logs).
pub const STALE: &str = "stale";

/// Applies the rules to one candidate. `sent_in_batch` resolves reply targets and thread
/// membership among messages of the same transaction (not yet committed).
pub async fn evaluate(
    store: &Store,
    c: &Candidate,
    now: Ts,
    max_age: std::time::Duration,
    sent_in_batch: &(dyn Fn(&str) -> Option<String> + Sync),
    thread_in_batch: &(dyn Fn(&str, &str) -> bool + Sync),
    outcomes: &mut Vec<&'static str>,
) -> Result<Vec<Trigger>, StoreError> {
    let mut out = Vec::new();
    if c.agents.is_empty() {
        return Ok(out);
    }
    if now.0 - c.at.0 > chrono::Duration::from_std(max_age).unwrap_or_default() {
        outcomes.push(STALE);
        return Ok(out);
    }
    // A direct chat: invited as one, or one person and one agent.
    let dm = c.agents.len() == 1
        && (c.is_direct || store.human_member_count(c.room_id.as_str()).await? <= 1);
    // Settings are read at evaluation (not cached): the CLI and the API change them from outside.
    let settings = store.respond_settings(c.room_id.as_str()).await?;
    for (agent, (default, name)) in &c.agents {
        if agent == &c.sender {
            continue;
        }
        // An explicit setting wins; without one, DMs are `all` and group rooms `mentions`.
        let respond = match settings
            .iter()
            .find(|(a, _)| a == agent)
            .and_then(|(_, r)| Respond::parse(r))
        {
            Some(r) => r,
            None if dm => Respond::All,
            None => *default,
        };
        let explicit = c.mentions.as_ref().is_some_and(|m| m.contains(agent));
        let addressed = if c.sender_is_agent {
            // An agent's message never addresses another agent unless it mentions it.
            explicit
        } else {
            match &respond {
                Respond::Never => false,
                Respond::All => true,
                Respond::Mentions => {
                    explicit
                        || (c.mentions.is_none() && legacy_mention(c, agent, name))
                        || match &c.reply_to {
                            Some(target) => {
                                let sender = match sent_in_batch(target) {
                                    Some(s) => Some(s),
                                    None => store.message_sender(target).await?,
                                };
                                sender.as_deref() == Some(agent.as_str())
                            }
                            None => false,
                        }
                        || match &c.thread_root {
                            Some(root) => {
                                thread_in_batch(root, agent)
                                    || store.agent_in_thread(root, agent).await?
                            }
                            None => false,
                        }
                }
            }
        };
        if addressed {
            outcomes.push("addressed");
            out.push(Trigger {
                agent: agent.clone(),
                room_id: c.room_id.clone(),
                event_id: c.event_id.clone(),
                sender: c.sender.clone(),
                from_agent: c.sender_is_agent,
                at: c.at,
                body: c.body.clone(),
                thread_root: c.thread_root.clone(),
                event: c.event.clone(),
            });
        }
    }
    Ok(out)
}

/// Old clients without `m.mentions`: a matrix.to pill of the agent, or its display name (or
/// localpart) at the start of the body.
fn legacy_mention(c: &Candidate, agent: &str, name: &str) -> bool {
    if let Some(html) = &c.formatted_body
        && (html.contains(&format!("matrix.to/#/{agent}"))
            || html.contains(&format!(
                "matrix.to/#/{}",
                agent.replace('@', "%40").replace(':', "%3A")
            )))
    {
        return true;
    }
    let body = c.body.trim_start().to_lowercase();
    let localpart = agent
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or_default()
        .to_lowercase();
    [name.to_lowercase(), localpart].iter().any(|n| {
        !n.is_empty()
            && body.starts_with(n.as_str())
            && body[n.len()..]
                .chars()
                .next()
                .is_none_or(|ch| !ch.is_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(body: &str, html: Option<&str>) -> Candidate {
        Candidate {
            room_id: "!r:x".try_into().unwrap(),
            event_id: "$e".into(),
            sender: "@alice:x".into(),
            sender_is_agent: false,
            at: Ts::now(),
            body: body.into(),
            formatted_body: html.map(Into::into),
            mentions: None,
            reply_to: None,
            thread_root: None,
            event: serde_json::Value::Null,
            agents: BTreeMap::new(),
            is_direct: false,
        }
    }

    #[test]
    fn legacy_mentions() {
        assert!(legacy_mention(
            &cand("Sofia: hi", None),
            "@agent_sofia:x",
            "Sofia"
        ));
        assert!(legacy_mention(
            &cand("sofia, what now?", None),
            "@agent_sofia:x",
            "Sofia"
        ));
        assert!(!legacy_mention(
            &cand("Sofiana: hi", None),
            "@agent_sofia:x",
            "Sofia"
        ));
        assert!(!legacy_mention(
            &cand("ask Sofia", None),
            "@agent_sofia:x",
            "Sofia"
        ));
        assert!(legacy_mention(
            &cand(
                "hey",
                Some("<a href=\"https://matrix.to/#/@agent_sofia:x\">Sofia</a>")
            ),
            "@agent_sofia:x",
            "Sofia"
        ));
    }
}
