//! Who is addressed: the trigger rules that decide which agents a message calls on (a direct
//! chat, `m.mentions`, a reply to the agent, a thread it is part of, an old client's pill or
//! name, per-channel `respond` settings). They run after commit, on the durable candidate
//! rows, so their lookups are off the transaction's latency path.

use std::time::Duration;

use crate::{
    bridge::agents::AgentRegistry,
    db::{CandidatePayload, Store, StoreError, triggers::TriggerRow},
    model::{Agent, Respond, Ts, ids::AgentId},
};

/// Why a candidate addressed nobody, or whom it addressed.
#[derive(Debug, Default)]
pub struct Evaluation {
    /// The agents it addresses.
    pub addressed: Vec<AgentId>,
    /// Outcomes for the triggers metric (`addressed`, `stale`).
    pub outcomes: Vec<&'static str>,
}

/// Applies the rules to one candidate.
pub async fn evaluate(
    store: &Store,
    registry: &AgentRegistry,
    candidate: &TriggerRow,
    now: Ts,
    max_age: Duration,
) -> Result<Evaluation, StoreError> {
    let mut out = Evaluation::default();
    let c: &CandidatePayload = &candidate.payload.0;
    let agents: Vec<std::sync::Arc<Agent>> = store
        .channels()
        .agents(candidate.channel_id)
        .await?
        .into_iter()
        .filter_map(|id| registry.by_id(id))
        .collect();
    // A disabled agent answers nothing; it still counts as present for the DM rule below.
    let present = agents.len();
    let agents: Vec<std::sync::Arc<Agent>> = agents.into_iter().filter(|a| a.active).collect();
    if agents.is_empty() {
        return Ok(out);
    }
    if now.minus(max_age) > candidate.at {
        out.outcomes.push("stale");
        return Ok(out);
    }
    // A direct chat: invited as one, or one person and one agent.
    let dm = present == 1
        && (c.is_direct
            || store
                .channels()
                .human_member_count(candidate.channel_id)
                .await?
                <= 1);
    // Settings are read here (not cached): the CLI and the API change them from outside.
    let settings = store.runs().respond_settings(candidate.channel_id).await?;
    for agent in agents {
        if agent.user_id == c.sender {
            continue;
        }
        // An explicit setting wins; without one, DMs are `all` and group rooms `mentions`.
        let respond = match settings.iter().find(|(a, _)| *a == agent.id) {
            Some((_, r)) => *r,
            None if dm => Respond::All,
            None => agent.behaviour.respond.unwrap_or(Respond::Mentions),
        };
        let explicit = c
            .mentions
            .as_ref()
            .is_some_and(|m| m.contains(&agent.user_id));
        let addressed = if c.sender_is_agent {
            // An agent's message never addresses another agent unless it mentions it.
            explicit
        } else {
            match respond {
                Respond::Never => false,
                Respond::All => true,
                Respond::Mentions => {
                    explicit
                        || (c.mentions.is_none() && legacy_mention(c, &agent))
                        || match &c.reply_to {
                            Some(target) => {
                                store
                                    .channels()
                                    .message_sender(target.as_str())
                                    .await?
                                    .as_deref()
                                    == Some(agent.user_id.as_str())
                            }
                            None => false,
                        }
                        || match &c.thread_root {
                            Some(root) => {
                                store
                                    .channels()
                                    .agent_in_thread(root.as_str(), agent.id)
                                    .await?
                            }
                            None => false,
                        }
                }
            }
        };
        if addressed {
            out.outcomes.push("addressed");
            out.addressed.push(agent.id);
        }
    }
    Ok(out)
}

/// Old clients without `m.mentions`: a matrix.to pill of the agent, or its display name (or
/// localpart) at the start of the body.
fn legacy_mention(c: &CandidatePayload, agent: &Agent) -> bool {
    let id = agent.user_id.as_str();
    if let Some(html) = &c.formatted_body
        && (html.contains(&format!("matrix.to/#/{id}"))
            || html.contains(&format!(
                "matrix.to/#/{}",
                id.replace('@', "%40").replace(':', "%3A")
            )))
    {
        return true;
    }
    let body = c.body.trim_start().to_lowercase();
    let localpart = agent.user_id.localpart().to_lowercase();
    [agent.name.to_lowercase(), localpart].iter().any(|n| {
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
    use crate::model::Behaviour;

    fn payload(body: &str, html: Option<&str>) -> CandidatePayload {
        CandidatePayload {
            sender: "@alice:x".try_into().unwrap(),
            sender_is_agent: false,
            body: body.into(),
            formatted_body: html.map(Into::into),
            mentions: None,
            reply_to: None,
            thread_root: None,
            is_direct: false,
            event: serde_json::value::RawValue::from_string("null".into()).unwrap(),
        }
    }

    fn sofia() -> Agent {
        Agent {
            id: AgentId::new(),
            external_id: "agent:sofia".into(),
            user_id: "@agent_sofia:x".try_into().unwrap(),
            name: "Sofia".into(),
            microdao_id: None,
            kind: "assistant".into(),
            active: true,
            behaviour: Behaviour::default(),
        }
    }

    #[test]
    fn legacy_mentions() {
        let s = sofia();
        assert!(legacy_mention(&payload("Sofia: hi", None), &s));
        assert!(legacy_mention(&payload("sofia, what now?", None), &s));
        assert!(!legacy_mention(&payload("Sofiana: hi", None), &s));
        assert!(!legacy_mention(&payload("ask Sofia", None), &s));
        assert!(legacy_mention(
            &payload(
                "hey",
                Some("<a href=\"https://matrix.to/#/@agent_sofia:x\">Sofia</a>")
            ),
            &s
        ));
    }
}
