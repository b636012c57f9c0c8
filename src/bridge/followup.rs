//! Follow-up work a transaction asks for but must not wait on: joining rooms the bot or a
//! puppet was invited to (then reading their state so the channel starts complete), refusing
//! invites the bridge cannot honour, and running bot commands. The jobs are rows written in the transaction's own commit;
//! this worker claims them under a lease, retries transient failures with backoff, and gives up
//! (counted) after a bounded number of attempts. A crash loses nothing: the lease runs out and
//! the job is claimed again.

use std::{sync::Arc, time::Duration};

use ruma::UserId;
use serde_json::value::RawValue;
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;

use super::{
    commands::{CommandError, Commands, Invocation},
    mirror::Mirror,
};
use crate::{
    bridge::agents::AgentRegistry,
    db::{
        Store, StoreError,
        decode::BadRow,
        jobs::{JobRow, JobStore, RawJobRow},
    },
    matrix::HsError,
    metrics::Metrics,
    model::{FOLLOW_UPGRADE_VIA, JobKind, Ts},
    puppet::{BotIntent, GhostIntent, PuppetError, Puppets},
};

/// Jobs executed at once.
const PARALLEL: usize = 4;
/// Attempts before a job is given up.
const ATTEMPTS: i32 = 8;
/// How long a claimed job is held (a join and a state read take seconds).
const LEASE: Duration = Duration::from_secs(300);
/// Re-read the queue this often even without a wake-up.
const POLL: Duration = Duration::from_secs(5);

/// Why a follow-up failed.
#[derive(Debug, thiserror::Error)]
enum FollowUpError {
    #[error(transparent)]
    Hs(#[from] HsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Puppet(#[from] PuppetError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("invalid id in a job: {0}")]
    InvalidId(String),
}

impl FollowUpError {
    fn is_transient(&self) -> bool {
        match self {
            FollowUpError::Hs(e) => e.is_transient(),
            FollowUpError::Store(e) => e.is_transient(),
            FollowUpError::Puppet(e) => e.is_transient(),
            FollowUpError::Command(e) => e.is_transient(),
            FollowUpError::InvalidId(_) => false,
        }
    }
}

/// The follow-up worker.
pub struct FollowUps {
    mirror: Arc<Mirror>,
    jobs: JobStore,
    bot: BotIntent,
    registry: Arc<AgentRegistry>,
    puppets: Arc<Puppets>,
    commands: Arc<Commands>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
}

impl FollowUps {
    /// A worker applying joined rooms' state through `mirror`, acting through `puppets` and
    /// running bot commands through `commands`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mirror: Arc<Mirror>,
        store: Store,
        bot: BotIntent,
        registry: Arc<AgentRegistry>,
        puppets: Arc<Puppets>,
        commands: Arc<Commands>,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
    ) -> Arc<Self> {
        Arc::new(Self {
            mirror,
            jobs: store.jobs(),
            bot,
            registry,
            puppets,
            commands,
            metrics,
            wake,
        })
    }

    /// Works the queue until cancelled; in-flight jobs finish first.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let jobs = self.jobs.clone();
        let mut inflight = JoinSet::new();
        loop {
            let free = PARALLEL.saturating_sub(inflight.len());
            if free > 0 {
                match jobs.claim(free as i64, LEASE).await {
                    Ok(jobs) => {
                        for bad in jobs.bad {
                            self.fail_bad(bad).await;
                        }
                        for job in jobs.rows {
                            let this = self.clone();
                            inflight.spawn(async move { this.execute(job).await });
                        }
                    }
                    Err(error) => tracing::warn!(%error, "follow-up queue unreadable; retrying"),
                }
            }
            let wait = match jobs.next_due().await {
                Ok(Some(due)) => Duration::from_millis(
                    (due.millis() - Ts::now().millis()).clamp(0, POLL.as_millis() as i64) as u64,
                ),
                _ => POLL,
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                    if let Err(error) = done {
                        tracing::error!(%error, "a follow-up panicked; its lease will run out and it is retried");
                        self.metrics.task_failed("follow-up");
                    }
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait.max(Duration::from_millis(50))), if inflight.len() < PARALLEL => {}
            }
        }
        while inflight.join_next().await.is_some() {}
    }

    /// A job whose row holds an invalid id can never run: it fails for good, counted.
    async fn fail_bad(&self, bad: BadRow<RawJobRow>) {
        let job = &bad.raw;
        let error = FollowUpError::InvalidId(bad.error.to_string());
        tracing::error!(room_id = %job.room_id, user_id = %job.user_id, kind = %job.kind, %error, "follow-up failed for good");
        self.metrics.follow_up_failed.inc();
        if let Err(error) = self.jobs.failed(job.id, &error.to_string(), None).await {
            tracing::warn!(%error, job_id = %job.id, "cannot record a follow-up's outcome; its lease will run out");
        }
    }

    async fn execute(&self, job: JobRow) {
        let jobs = &self.jobs;
        let result = match job.kind {
            JobKind::Join => self.join(&job).await,
            JobKind::Reject => self.reject(&job).await,
            JobKind::Command => self.command(&job).await,
        };
        let recorded = match result {
            Ok(()) => jobs.done(job.id).await,
            Err(error) if error.is_transient() && job.attempts < ATTEMPTS => {
                let wait =
                    Duration::from_millis(500).saturating_mul(1 << job.attempts.clamp(0, 10));
                tracing::warn!(room_id = %job.room_id, user_id = %job.user_id, kind = %job.kind, attempt = job.attempts, %error, "follow-up failed; will retry");
                jobs.failed(job.id, &error.to_string(), Some(Ts::now().plus(wait)))
                    .await
            }
            Err(error) => {
                tracing::error!(room_id = %job.room_id, user_id = %job.user_id, kind = %job.kind, %error, "follow-up failed for good");
                self.metrics.follow_up_failed.inc();
                jobs.failed(job.id, &error.to_string(), None).await
            }
        };
        if let Err(error) = recorded {
            tracing::warn!(%error, job_id = %job.id, "cannot record a follow-up's outcome; its lease will run out");
        }
    }

    /// Acting as a user that is neither the bot nor a known agent: registered first when it is
    /// in the namespace.
    fn ghost(&self, user: &UserId) -> GhostIntent {
        let in_namespace = self.registry.namespace().is_puppet(user);
        self.puppets.ghost(user, in_namespace)
    }

    /// Accepts an invite as the bot or a puppet, then mirrors the room's full state.
    async fn join(&self, job: &JobRow) -> Result<(), FollowUpError> {
        let (room, user) = (&*job.room_id, &*job.user_id);
        if let Some(via) = job
            .reason
            .as_deref()
            .and_then(|r| r.strip_prefix(FOLLOW_UPGRADE_VIA))
        {
            return self.follow_upgrade(job, via).await;
        }
        let state = if user == self.bot.user_id() {
            self.bot.join(room).await?;
            tracing::info!(room_id = %room, user_id = %user, "joined room");
            self.bot.room_state(room).await?
        } else if let Some(agent) = self.registry.get(user) {
            // Registered, named and with its avatar before it shows up in the room.
            let intent = self.puppets.intent(agent);
            intent.join(room).await?;
            tracing::info!(room_id = %room, user_id = %user, "joined room");
            intent.room_state(room).await?
        } else {
            // A user of the namespace that is no agent (yet): only joined and read, never
            // acting otherwise.
            let ghost = self.ghost(user);
            ghost.join(room).await?;
            tracing::info!(room_id = %room, user_id = %user, "joined room");
            ghost.room_state(room).await?
        };
        let raws: Vec<&RawValue> = state.iter().map(|r| r.json()).collect();
        self.mirror.apply_room_state(room, &raws).await?;
        tracing::info!(room_id = %room, events = raws.len(), "room state mirrored");
        Ok(())
    }

    /// A channel follows its room's replacement (a room upgrade): the bot joins the new room
    /// through the servers given, then brings in the agents that are in the channel (invited
    /// by the bot, as the replacement is usually invite-only, and joined), and the new room's
    /// state is mirrored. Every step is idempotent, so a retried job redoes them safely.
    async fn follow_upgrade(&self, job: &JobRow, via: &str) -> Result<(), FollowUpError> {
        let room = &*job.room_id;
        let via: Vec<ruma::OwnedServerName> = via
            .split_whitespace()
            .filter_map(|s| ruma::ServerName::parse(s).ok())
            .collect();
        self.bot.join_via(room, via.clone()).await?;
        tracing::info!(room_id = %room, "the bot joined the replacement room");
        let agents = self
            .mirror
            .store()
            .rooms()
            .load(&[room.as_str()])
            .await?
            .pop()
            .map(|(_, _, agents)| agents)
            .unwrap_or_default();
        for agent in agents.into_iter().filter_map(|a| self.registry.by_id(a)) {
            if !agent.active {
                continue;
            }
            let intent = self.puppets.intent(agent.clone());
            intent.ensure_ready().await?;
            // Already invited or joined: the join settles it.
            if let Err(error) = self.bot.invite(room, &agent.user_id).await {
                tracing::debug!(room_id = %room, agent = %agent.user_id, %error, "invite into the replacement refused; joining anyway");
            }
            intent.join_via(room, via.clone()).await?;
            tracing::info!(room_id = %room, agent = %agent.user_id, "agent followed the room upgrade");
        }
        let state = self.bot.room_state(room).await?;
        let raws: Vec<&RawValue> = state.iter().map(|r| r.json()).collect();
        self.mirror.apply_room_state(room, &raws).await?;
        Ok(())
    }

    /// Runs a bot command and answers it.
    async fn command(&self, job: &JobRow) -> Result<(), FollowUpError> {
        let (room, sender) = (&*job.room_id, &*job.user_id);
        let event_id = job
            .event_id
            .as_deref()
            .ok_or_else(|| FollowUpError::InvalidId("a command job without its event".into()))?;
        self.commands
            .run(Invocation {
                job: &job.id.to_string(),
                room,
                sender,
                event_id,
                text: job.body.as_deref().unwrap_or(""),
            })
            .await?;
        tracing::info!(room_id = %room, user_id = %sender, "bot command answered");
        Ok(())
    }

    /// Refuses an invite with its reason.
    async fn reject(&self, job: &JobRow) -> Result<(), FollowUpError> {
        let (room, user) = (&*job.room_id, &*job.user_id);
        let reason = job.reason.as_deref().unwrap_or("refused");
        if user == self.bot.user_id() {
            self.bot.leave(room, reason).await?;
        } else if let Some(agent) = self.registry.get(user) {
            self.puppets.intent(agent).leave(room, reason).await?;
        } else {
            self.ghost(user).leave(room, reason).await?;
        }
        tracing::info!(room_id = %room, user_id = %user, reason, "refused invite");
        Ok(())
    }
}
