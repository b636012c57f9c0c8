//! Operations operators run on a live bridge, shared by the admin API and the bot commands so
//! both behave the same: put an agent into a room or take it out, and the bridge's status
//! (channels created, archived and moved are in `rooms.rs`).
//! Each operation is audited with who asked for it.

use std::{sync::Arc, time::Duration};

use ruma::RoomId;
use serde::Serialize;

use crate::model::Agent;
use crate::{
    bridge::{agents::AgentRegistry, mirror::Mirror},
    db::{Store, StoreError, audit::Actor},
    matrix::HsError,
    model::AuditOutcome,
    puppet::{BotIntent, PuppetError, Puppets},
};

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The agent is disabled: it joins nothing.
    #[error("{0} is disabled")]
    Disabled(String),
    /// The room is not a channel the bridge mirrors.
    #[error("the bridge does not mirror room {0}")]
    NotMirrored(String),
    /// The homeserver refused (for example the bot may not invite there).
    #[error("the homeserver refused: {0}")]
    Homeserver(#[from] HsError),
    /// Acting as the agent failed.
    #[error(transparent)]
    Puppet(#[from] PuppetError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something named does not exist (a microDAO, a channel).
    #[error("{0}")]
    NotFound(String),
    /// Another bridge process is creating the same channel right now.
    #[error("the channel {0} is being created; try again in a minute")]
    InProgress(String),
}

/// The operations, with what they use: given at construction, shared by the admin API and the
/// bot commands.
pub struct Control {
    pub(super) store: Store,
    pub(super) bot: BotIntent,
    pub(super) registry: Arc<AgentRegistry>,
    puppets: Arc<Puppets>,
    appservice_id: String,
    /// Writes channel rows and archives through the mirror's locks and caches.
    pub(super) mirror: Arc<Mirror>,
    /// Creations of channels run one at a time in this process (they are rare), so two
    /// requests for the same (microDAO, slug) never create two rooms; across processes the
    /// creation row does it (`db::lifecycle`).
    pub(super) creating: tokio::sync::Mutex<()>,
    /// This replica's name (`leader.replica`), for the status.
    replica: String,
}

impl Control {
    /// Operations on `store`, acting as the bot through `bot` and as agents through `puppets`.
    pub fn new(
        store: Store,
        bot: BotIntent,
        registry: Arc<AgentRegistry>,
        puppets: Arc<Puppets>,
        appservice_id: String,
        mirror: Arc<Mirror>,
        replica: String,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            bot,
            registry,
            puppets,
            appservice_id,
            mirror,
            replica,
            creating: tokio::sync::Mutex::new(()),
        })
    }

    /// Invites `agent` into `room` as the bot and joins it at once. Idempotent: an agent already in
    /// the room stays there (the homeserver refuses the invite, the join is a no-op).
    pub async fn invite_agent(
        &self,
        room: &RoomId,
        agent: Arc<Agent>,
        by: &Actor,
    ) -> Result<(), ControlError> {
        if !agent.active {
            return Err(ControlError::Disabled(agent.name.clone()));
        }
        let store = &self.store;
        if store
            .rooms()
            .channel_for_room(room.as_str())
            .await?
            .is_none()
        {
            return Err(ControlError::NotMirrored(room.to_string()));
        }
        let intent = self.puppets.intent(agent.clone());
        intent.ensure_ready().await?;
        if let Err(invite) = self.bot.invite(room, &agent.user_id).await {
            // Already a member (or invited): the join below settles it. Anything else (the bot
            // lacks the power to invite, the room is gone) is the answer.
            if intent.join(room).await.is_err() {
                return Err(invite.into());
            }
        } else {
            intent.join(room).await?;
        }
        audit(store, by, "agent.invited", room, &agent).await?;
        Ok(())
    }

    /// Makes `agent` leave `room`, saying who removed it.
    pub async fn remove_agent(
        &self,
        room: &RoomId,
        agent: Arc<Agent>,
        by: &Actor,
    ) -> Result<(), ControlError> {
        let who = by.id.as_deref().unwrap_or("an operator");
        self.puppets
            .intent(agent.clone())
            .leave(room, &format!("removed by {who}"))
            .await?;
        audit(&self.store, by, "agent.kicked", room, &agent).await?;
        Ok(())
    }

    /// Reads the status; the ping waits at most five seconds.
    pub async fn status(&self) -> Result<Status, StoreError> {
        let mut status =
            status(&self.store, &self.bot, &self.registry, &self.appservice_id).await?;
        status.leader.this_replica = self.replica.clone();
        Ok(status)
    }
}

async fn audit(
    store: &Store,
    by: &Actor,
    action: &'static str,
    room: &RoomId,
    agent: &Agent,
) -> Result<(), StoreError> {
    let entry = by
        .did(action, Some(room.as_str()), AuditOutcome::Allowed)
        .details(serde_json::json!({ "agent": agent.external_id, "matrix_id": agent.user_id }));
    store.audit().record(&[entry]).await
}

/// The homeserver as the bridge sees it.
#[derive(Debug, Clone, Serialize)]
pub struct HomeserverStatus {
    /// Whether `/ping` made the round trip (homeserver → bridge → homeserver).
    pub reachable: bool,
    /// How long the homeserver took to reach the bridge, in milliseconds.
    pub ping_ms: Option<u64>,
    /// Why not, when unreachable.
    pub error: Option<String>,
}

/// Work waiting in the bridge's durable queues.
#[derive(Debug, Clone, Serialize)]
pub struct Queues {
    /// Follow-ups (joins, refusals, bot commands) pending.
    pub follow_ups: i64,
    /// Puppet sends not delivered yet.
    pub outbox: i64,
    /// Agent runs queued or running.
    pub runs: i64,
    /// Events not yet published to NATS.
    pub events: i64,
}

/// The bridge's status.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The bridge's version.
    pub version: &'static str,
    /// The homeserver.
    pub homeserver: HomeserverStatus,
    /// The queues.
    pub queues: Queues,
    /// Agents known, and how many of them are enabled.
    pub agents: usize,
    /// Enabled agents.
    pub agents_enabled: usize,
    /// Which replica leads.
    pub leader: LeaderStatus,
}

/// Which replica leads (docs/deployment.md).
#[derive(Debug, Clone, Serialize)]
pub struct LeaderStatus {
    /// The leading replica's name (none: the lease was never taken).
    pub replica: Option<String>,
    /// The lease's epoch.
    pub epoch: Option<i64>,
    /// When the lease runs out unless renewed.
    pub expires_at: Option<crate::model::Ts>,
    /// The replica that answered.
    pub this_replica: String,
    /// Whether the replica that answered leads.
    pub is_leader: bool,
}

async fn status(
    store: &Store,
    bot: &BotIntent,
    registry: &AgentRegistry,
    appservice_id: &str,
) -> Result<Status, StoreError> {
    let ping = tokio::time::timeout(Duration::from_secs(5), bot.ping(appservice_id)).await;
    let homeserver = match ping {
        Ok(Ok(d)) => HomeserverStatus {
            reachable: true,
            ping_ms: Some(d.as_millis() as u64),
            error: None,
        },
        Ok(Err(e)) => HomeserverStatus {
            reachable: false,
            ping_ms: None,
            error: Some(e.to_string()),
        },
        Err(_) => HomeserverStatus {
            reachable: false,
            ping_ms: None,
            error: Some("no answer within 5s".into()),
        },
    };
    let agents = registry.all();
    let lease = store.lease().current().await?;
    let is_leader = matches!(
        (store.fence().role(), &lease),
        (crate::db::lease::Role::Leader(epoch), Some(l)) if l.epoch == epoch
    );
    Ok(Status {
        leader: LeaderStatus {
            replica: lease.as_ref().map(|l| l.replica.clone()),
            epoch: lease.as_ref().map(|l| l.epoch),
            expires_at: lease.as_ref().map(|l| l.expires_at),
            this_replica: String::new(),
            is_leader,
        },
        version: env!("CARGO_PKG_VERSION"),
        homeserver,
        queues: Queues {
            follow_ups: store.jobs().pending().await?,
            outbox: store.outbox().pending().await?,
            runs: store.runs().open().await?.len() as i64,
            events: store.events().backlog().await?.pending,
        },
        agents: agents.len(),
        agents_enabled: agents.iter().filter(|a| a.active).count(),
    })
}
