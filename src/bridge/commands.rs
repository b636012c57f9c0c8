//! Bot commands in Matrix (`!daarion invite sofia`, or anything in a direct chat with the bot):
//! recognised by the planner and queued as durable follow-up jobs in the transaction's commit,
//! then parsed, authorised (room power levels, plus the configured bridge admins) and executed
//! here, and answered with an `m.notice` in Markdown that replies to the command: as the bot,
//! or, in a direct chat with an agent (where the bot is not), as that agent.
//! A reply's transaction id (the agent's outbox key) is derived from the job, so a retried job
//! never answers twice.

use std::sync::Arc;

use ruma::{EventId, OwnedUserId, RoomId, UserId};

use super::{
    agents::AgentRegistry,
    control::{self, Control},
    stops::RunStops,
};
use crate::model::Agent;
use crate::{
    db::{Store, StoreError, audit::Actor, rooms::StoredRoom},
    matrix::HsError,
    model::runtime::MessageKind,
    model::{
        ActorType, AuditOutcome, Respond,
        ids::{AgentId, ChannelId},
    },
    puppet::{
        BotIntent, PuppetError, Puppets, Send as PuppetSend,
        content::{self, Outgoing},
    },
};

/// Who can answer a command: the bot, or in a direct chat with an agent, the agent itself.
#[derive(Clone)]
pub struct Speakers {
    /// The bridge bot (encrypted in encrypted rooms).
    pub bot: BotIntent,
    /// The agents' puppets (their answers go through the durable outbox).
    pub puppets: Arc<Puppets>,
}

/// Power level a room member needs for `invite`, `kick` and `respond` (moderator).
pub const MANAGE_LEVEL: i64 = 50;

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// What the bot understands.
    Help,
    /// The agents, and which of them are in this room.
    Agents,
    /// Put an agent into this room.
    Invite(String),
    /// Take an agent out of this room.
    Kick(String),
    /// When an agent answers in this room.
    Respond(String, Respond),
    /// The bridge's status (bridge admins).
    Status,
    /// The agents' sessions in this room.
    Sessions,
    /// The agents in this room forget everything said before this command.
    Forget,
    /// Stop the answers being written in this room.
    Stop,
    /// Place this room into a microDAO (external id), under a slug (default: its current one).
    Adopt(String, Option<String>),
}

/// Parses a command text; the error is the helpful answer.
pub fn parse(text: &str, prefix: &str) -> Result<Command, String> {
    let mut words = text.split_whitespace();
    let Some(verb) = words.next() else {
        return Ok(Command::Help);
    };
    let args: Vec<&str> = words.collect();
    let one = |usage: &str| -> Result<String, String> {
        match args.as_slice() {
            [agent] => Ok((*agent).to_owned()),
            _ => Err(format!("Usage: `{prefix} {usage}`")),
        }
    };
    match verb.to_ascii_lowercase().as_str() {
        "help" | "?" => Ok(Command::Help),
        "agents" | "list" => Ok(Command::Agents),
        "invite" => one("invite <agent>").map(Command::Invite),
        "kick" | "remove" => one("kick <agent>").map(Command::Kick),
        "respond" => match args.as_slice() {
            [agent, mode] => match Respond::parse(&mode.to_ascii_lowercase()) {
                Some(r) => Ok(Command::Respond((*agent).to_owned(), r)),
                None => Err(format!(
                    "`{}` is not a response mode: use `mentions`, `all` or `never`.",
                    mode.escape_debug()
                )),
            },
            _ => Err(format!(
                "Usage: `{prefix} respond <agent> mentions|all|never`"
            )),
        },
        "status" => Ok(Command::Status),
        "sessions" => Ok(Command::Sessions),
        "forget" => Ok(Command::Forget),
        "stop" => Ok(Command::Stop),
        "adopt" => match args.as_slice() {
            [microdao] => Ok(Command::Adopt((*microdao).to_owned(), None)),
            [microdao, slug] => Ok(Command::Adopt(
                (*microdao).to_owned(),
                Some((*slug).to_owned()),
            )),
            _ => Err(format!("Usage: `{prefix} adopt <microdao> [slug]`")),
        },
        other => Err(format!(
            "I don't know the command `{}`.\n\n{}",
            other.escape_debug(),
            help(prefix)
        )),
    }
}

/// The help text.
pub fn help(prefix: &str) -> String {
    format!(
        "**Commands** (in a direct chat with me, the prefix is optional):\n\n\
         - `{prefix} help`: this text\n\
         - `{prefix} agents`: the agents, and which are in this room\n\
         - `{prefix} invite <agent>`: bring an agent into this room (power level {MANAGE_LEVEL})\n\
         - `{prefix} kick <agent>`: take an agent out of this room (power level {MANAGE_LEVEL})\n\
         - `{prefix} respond <agent> mentions|all|never`: when the agent answers here (power level {MANAGE_LEVEL})\n\
         - `{prefix} sessions`: the agents' sessions in this room\n\
         - `{prefix} forget`: the agents here forget everything said before it\n\
         - `{prefix} stop` (or just `stop`): stop the answers being written here\n\
         - `{prefix} adopt <microdao> [slug]`: make this room a channel of that microDAO (power level {MANAGE_LEVEL})\n\
         - `{prefix} status`: the bridge's status (bridge admins)\n\n\
         An agent is named by its id (`sofia`, `agent:sofia`), its Matrix id or its name."
    )
}

/// Why running a command failed (and should be retried, when transient).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The homeserver refused the reply.
    #[error(transparent)]
    Hs(#[from] HsError),
    /// Sending the answer as the bot failed.
    #[error(transparent)]
    Bot(#[from] PuppetError),
}

impl CommandError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            CommandError::Store(e) => e.is_transient(),
            CommandError::Hs(e) => e.is_transient(),
            CommandError::Bot(e) => e.is_transient(),
        }
    }
}

/// Runs commands as the bot.
pub struct Commands {
    control: Arc<Control>,
    store: Store,
    /// Who answers.
    speakers: Speakers,
    registry: Arc<AgentRegistry>,
    prefix: String,
    admins: Vec<OwnedUserId>,
    stops: Arc<RunStops>,
}

/// The room a command runs in, as the bridge mirrors it, and whether an agent answers there.
#[derive(Clone, Copy)]
struct Place<'a> {
    room: Option<&'a (ruma::OwnedRoomId, StoredRoom, Vec<AgentId>)>,
    /// A direct chat with an agent: the agent answers (the bot is not a member).
    agent_speaks: bool,
}

/// A command to run: where, from whom, and its text.
pub struct Invocation<'a> {
    /// The job (its id makes the reply's transaction id).
    pub job: &'a str,
    /// The room.
    pub room: &'a RoomId,
    /// Who sent it.
    pub sender: &'a UserId,
    /// The command's event (the reply points at it).
    pub event_id: &'a EventId,
    /// The command text (after the prefix).
    pub text: &'a str,
}

impl Commands {
    /// Commands running `control`'s operations and answered by `speakers`, with the configured
    /// prefix and bridge admins.
    pub fn new(
        control: Arc<Control>,
        store: Store,
        speakers: Speakers,
        registry: Arc<AgentRegistry>,
        prefix: String,
        admins: Vec<OwnedUserId>,
        stops: Arc<RunStops>,
    ) -> Arc<Self> {
        Arc::new(Self {
            control,
            store,
            speakers,
            registry,
            prefix,
            admins,
            stops,
        })
    }

    /// Parses, authorises and runs a command, then answers it. Only failures worth retrying
    /// are errors; everything else (bad arguments, no permission, a refusal) is the answer.
    pub async fn run(&self, call: Invocation<'_>) -> Result<(), CommandError> {
        let actor = Actor {
            kind: ActorType::User,
            id: Some(call.sender.to_string()),
        };
        let room = self.store.rooms().load(&[call.room.as_str()]).await?.pop();
        // In a direct chat with an agent the bot is not a member: the agent answers.
        let agent = room
            .as_ref()
            .filter(|(_, r, _)| r.is_direct == Some(true))
            .and_then(|(_, _, agents)| agents.iter().find_map(|a| self.registry.by_id(*a)));
        let (answer, outcome) = match parse(call.text, &self.prefix) {
            Err(help) => (help, AuditOutcome::Denied),
            Ok(command) => {
                let place = Place {
                    room: room.as_ref(),
                    agent_speaks: agent.is_some(),
                };
                self.execute(&call, place, &command, &actor).await?
            }
        };
        let entry = actor
            .did("command.run", Some(call.room.as_str()), outcome)
            .details(serde_json::json!({ "command": call.text, "event_id": call.event_id }));
        self.store.audit().record(&[entry]).await?;
        self.reply(&call, agent, &answer).await
    }

    async fn execute(
        &self,
        call: &Invocation<'_>,
        place: Place<'_>,
        command: &Command,
        actor: &Actor,
    ) -> Result<(String, AuditOutcome), CommandError> {
        let store = &self.store;
        let room = place.room;
        let admin = self.admins.iter().any(|a| a == call.sender);
        let level = room
            .and_then(|(_, r, _)| r.power_levels.as_ref())
            .map_or(0, |p| p.0.level(call.sender.as_str()));
        let may_manage = admin || level >= MANAGE_LEVEL;
        let in_room: Vec<AgentId> = room.map(|(_, _, a)| a.clone()).unwrap_or_default();
        let channel: Option<ChannelId> = room.map(|(_, r, _)| r.channel_id);
        let denied = |what: &str| {
            Ok((
                format!(
                    "You need power level {MANAGE_LEVEL} in this room (yours is {level}), or to be a \
                     bridge admin, to {what}."
                ),
                AuditOutcome::Denied,
            ))
        };
        let registry = &self.registry;
        let find = |name: &str| -> Result<Arc<Agent>, String> {
            registry.find(name).ok_or_else(|| {
                format!(
                    "There is no agent called `{}`. `{} agents` lists them.",
                    name.escape_debug(),
                    self.prefix
                )
            })
        };
        let ok = |text: String| Ok((text, AuditOutcome::Allowed));
        match command {
            Command::Help => ok(help(&self.prefix)),
            Command::Agents => ok(agents_list(&registry.all(), &in_room)),
            Command::Status if !admin => Ok((
                "Only bridge admins (`bridge.admins` in the bridge's config) may see its status."
                    .into(),
                AuditOutcome::Denied,
            )),
            Command::Status => {
                let s = self.control.status().await?;
                ok(status_text(&s))
            }
            Command::Stop => {
                let Some(channel) = channel else {
                    return ok(not_mirrored());
                };
                ok(match self.stops.stop(channel) {
                    0 => "No agent is answering here right now.".into(),
                    1 => "Stopped.".into(),
                    n => format!("Stopped {n} answers."),
                })
            }
            Command::Forget => {
                let Some(channel) = channel else {
                    return ok(not_mirrored());
                };
                store
                    .channels()
                    .set_forget_mark(channel, call.event_id)
                    .await?;
                ok(if place.agent_speaks {
                    "Done: I forget everything said before this point.".into()
                } else {
                    "Done: the agents in this room forget everything said before this point.".into()
                })
            }
            Command::Sessions => {
                let Some(channel) = channel else {
                    return ok(not_mirrored());
                };
                ok(sessions_text(
                    &store.sessions().of_channel(channel, 20).await?,
                ))
            }
            Command::Invite(_) | Command::Kick(_) | Command::Respond(..) | Command::Adopt(..)
                if !may_manage =>
            {
                denied(match command {
                    Command::Invite(_) => "invite agents",
                    Command::Kick(_) => "remove agents",
                    Command::Adopt(..) => "place this room into a microDAO",
                    _ => "change when agents answer",
                })
            }
            Command::Invite(name) => {
                let agent = match find(name) {
                    Ok(a) => a,
                    Err(e) => return Ok((e, AuditOutcome::Denied)),
                };
                match self
                    .control
                    .invite_agent(call.room, agent.clone(), actor)
                    .await
                {
                    Ok(()) => ok(format!("{} joined this room.", agent.name)),
                    Err(control::ControlError::Store(e)) => Err(e.into()),
                    Err(e) => Ok((
                        format!("Cannot invite {}: {e}.", agent.name),
                        AuditOutcome::Denied,
                    )),
                }
            }
            Command::Kick(name) => {
                let agent = match find(name) {
                    Ok(a) => a,
                    Err(e) => return Ok((e, AuditOutcome::Denied)),
                };
                if !in_room.contains(&agent.id) {
                    return Ok((
                        format!("{} is not in this room.", agent.name),
                        AuditOutcome::Denied,
                    ));
                }
                match self
                    .control
                    .remove_agent(call.room, agent.clone(), actor)
                    .await
                {
                    Ok(()) => ok(format!("{} left this room.", agent.name)),
                    Err(control::ControlError::Store(e)) => Err(e.into()),
                    Err(e) => Ok((
                        format!("Cannot remove {}: {e}.", agent.name),
                        AuditOutcome::Denied,
                    )),
                }
            }
            Command::Adopt(microdao, slug) => {
                if channel.is_none() {
                    return Ok((not_mirrored(), AuditOutcome::Denied));
                }
                match self
                    .control
                    .adopt(call.room, microdao, slug.as_deref(), actor)
                    .await
                {
                    Ok((answer, true)) => ok(answer),
                    Ok((answer, false)) => Ok((answer, AuditOutcome::Denied)),
                    Err(control::ControlError::Store(e)) => Err(e.into()),
                    Err(e) => Ok((
                        format!("Cannot adopt this room: {e}."),
                        AuditOutcome::Denied,
                    )),
                }
            }
            Command::Respond(name, respond) => {
                let agent = match find(name) {
                    Ok(a) => a,
                    Err(e) => return Ok((e, AuditOutcome::Denied)),
                };
                let Some(channel) = channel else {
                    return ok(not_mirrored());
                };
                store
                    .runs()
                    .set_respond(agent.id, channel, *respond, actor)
                    .await?;
                ok(format!(
                    "{} now answers {} in this room.",
                    agent.name,
                    match respond {
                        Respond::Mentions => "when mentioned, replied to or in its threads",
                        Respond::All => "every message",
                        Respond::Never => "nothing",
                    }
                ))
            }
        }
    }

    /// Answers as `agent` (through its durable outbox, keyed by the job) or as the bot.
    async fn reply(
        &self,
        call: &Invocation<'_>,
        agent: Option<Arc<Agent>>,
        text: &str,
    ) -> Result<(), CommandError> {
        let content = content::message(&Outgoing {
            body: text.to_owned(),
            markdown: true,
            kind: MessageKind::Notice,
            reply_to: Some(call.event_id.to_owned()),
            thread_root: None,
            mentions: vec![call.sender.to_owned()],
        });
        let key = format!("cmd-{}", call.job);
        match agent {
            Some(agent) => {
                let send = PuppetSend {
                    content,
                    key: Some(key),
                    request_hash: None,
                };
                self.speakers
                    .puppets
                    .intent(agent)
                    .send(call.room, send)
                    .await?;
            }
            None => {
                self.speakers.bot.send(call.room, &key, &content).await?;
            }
        }
        Ok(())
    }
}

fn not_mirrored() -> String {
    "This room is not mirrored by the bridge (invite the bridge bot first).".into()
}

fn agents_list(agents: &[Arc<Agent>], in_room: &[AgentId]) -> String {
    if agents.is_empty() {
        return "There are no agents yet.".into();
    }
    let mut agents = agents.to_vec();
    agents.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = String::from("**Agents** (✓ in this room):\n\n");
    for a in agents {
        let mark = if in_room.contains(&a.id) { " ✓" } else { "" };
        let off = if a.active { "" } else { " (disabled)" };
        out.push_str(&format!(
            "- {}{mark}{off}: `{}`, {}\n",
            a.name, a.external_id, a.user_id
        ));
    }
    out
}

fn status_text(s: &control::Status) -> String {
    let hs = if s.homeserver.reachable {
        format!("reachable (ping {} ms)", s.homeserver.ping_ms.unwrap_or(0))
    } else {
        format!(
            "**unreachable**: {}",
            s.homeserver.error.as_deref().unwrap_or("unknown")
        )
    };
    let leader = match (&s.leader.replica, s.leader.epoch) {
        (Some(replica), Some(epoch)) => format!(
            "{replica} (epoch {epoch}); this answer is from {}",
            s.leader.this_replica
        ),
        _ => "none yet".into(),
    };
    format!(
        "**daarion-bridge {}**\n\n\
         - homeserver: {hs}\n\
         - leader: {leader}\n\
         - agents: {} ({} enabled)\n\
         - queues: {} follow-ups, {} sends, {} runs, {} events unpublished\n",
        s.version,
        s.agents,
        s.agents_enabled,
        s.queues.follow_ups,
        s.queues.outbox,
        s.queues.runs,
        s.queues.events
    )
}

fn sessions_text(sessions: &[crate::db::sessions::ChannelSession]) -> String {
    if sessions.is_empty() {
        return "No agent has had a session in this room yet.".into();
    }
    let mut out = String::from("**Sessions** in this room (newest first):\n\n");
    for s in sessions {
        out.push_str(&format!(
            "- {} (`{}`): {}, last active {}\n",
            s.agent_name,
            s.agent,
            s.status,
            s.last_activity_at.0.format("%Y-%m-%d %H:%M UTC")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_and_helpful_errors() {
        let p = |t| parse(t, "!daarion");
        assert_eq!(p(""), Ok(Command::Help));
        assert_eq!(p("AGENTS"), Ok(Command::Agents));
        assert_eq!(p("invite sofia"), Ok(Command::Invite("sofia".into())));
        assert_eq!(
            p("respond sofia ALL"),
            Ok(Command::Respond("sofia".into(), Respond::All))
        );
        assert!(p("invite").unwrap_err().contains("invite <agent>"));
        assert!(p("invite a b").unwrap_err().contains("Usage"));
        assert!(p("respond sofia loud").unwrap_err().contains("mentions"));
        assert_eq!(
            p("adopt microdao:garden"),
            Ok(Command::Adopt("microdao:garden".into(), None))
        );
        assert_eq!(
            p("ADOPT microdao:garden general"),
            Ok(Command::Adopt(
                "microdao:garden".into(),
                Some("general".into())
            ))
        );
        assert!(p("adopt").unwrap_err().contains("adopt <microdao> [slug]"));
        let unknown = p("dance").unwrap_err();
        assert!(unknown.contains("`dance`") && unknown.contains("!daarion help"));
    }
}
