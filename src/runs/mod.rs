//! Agents that answer: the run scheduler. Trigger candidates (written in the commit of the
//! transaction that mirrored their message) are evaluated by the trigger rules into per-agent
//! triggers; the pending triggers of one agent in one channel merge into one run once none
//! arrived for the debounce window; at most one run per (agent, channel) runs at a time, under a
//! global concurrency limit and a per-agent rate limit; agent→agent chains stop at
//! `bridge.max_agent_chain`. Everything is durable: after a crash, queued runs are started and
//! interrupted runs resumed (bounded by `bridge.run_attempts`), each answer posted once.

mod answer_files;
mod context;
mod converse;
mod execute;
mod history;
pub mod media;
pub mod nats;
pub mod openai;
pub mod runtime;
mod said;
pub mod select;
pub mod tools;
pub mod webhook;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::RoomId;
use tokio::{
    sync::{Notify, Semaphore},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use self::execute::Ended;
use crate::{
    bridge::{agents::AgentRegistry, stops::RunStops, triggers},
    db::{
        Store, StoreError,
        runs::{NewRun, RunEnd, RunRow},
        triggers::TriggerGroup,
    },
    metrics::Metrics,
    model::{
        RunStatus, Ts,
        ids::{AgentId, ChannelId, RunId},
    },
    puppet::Puppets,
    ratelimit::RateLimiter,
};

/// Re-read the queue this often even without a wake-up.
const POLL: Duration = Duration::from_secs(2);
/// Candidates evaluated per pass.
const EVALUATE_BATCH: i64 = 200;

/// The scheduler's settings.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Triggers within this window merge into one run.
    pub debounce: Duration,
    /// Older messages address nobody.
    pub max_message_age: Duration,
    /// Agent→agent turns in a row.
    pub max_agent_chain: u32,
    /// Runs at once.
    pub max_concurrent_runs: usize,
    /// Runs per agent per minute.
    pub runs_per_minute: u32,
    /// Edit interval of a streamed answer.
    pub stream_edit_interval: Duration,
    /// Edits a streamed answer makes at most, the final one included.
    pub max_stream_edits: u32,
    /// How long a post waits for the homeserver.
    pub send_wait: Duration,
    /// Runtime calls per run, a crash-interrupted one included.
    pub run_attempts: u32,
    /// What runs are given of attachments.
    pub media: crate::config::MediaConfig,
    /// Signs the media links webhook runtimes get.
    pub links: crate::links::Links,
    /// What is read of an encrypted room's file may be stored (`encryption.store_previews`).
    pub keep_encrypted_text: bool,
    /// The bounds on tool calls (`[tools]`).
    pub tools: crate::config::ToolsConfig,
    /// Where the `nats` runtime publishes runs: `[events]`'s server, stream name (its streams
    /// are `<stream>_AGENT_RUNS` and `<stream>_AGENT_REPLIES`), subject prefix and duplicate
    /// window.
    pub events: crate::config::EventsConfig,
}

/// The run scheduler.
pub struct Runner {
    store: Store,
    registry: Arc<AgentRegistry>,
    puppets: Arc<Puppets>,
    metrics: Arc<Metrics>,
    settings: RunSettings,
    http: reqwest::Client,
    /// What runs share for tools (their HTTP client, MCP sessions).
    tools: tools::Tools,
    /// The `nats` runtime's client and streams (none without `events.nats_url`).
    nats: Option<Arc<nats::Broker>>,
    global: Arc<Semaphore>,
    limiter: RateLimiter<AgentId>,
    /// (agent, channel) pairs with a run in this process: one at a time.
    active: Mutex<HashSet<(AgentId, ChannelId)>>,
    /// The runs executing, for `stop` to cancel.
    stops: Arc<RunStops>,
    wake: Arc<Notify>,
}

/// What a worker does.
enum Work {
    /// Queue a run for these pending triggers.
    Group(TriggerGroup),
    /// Start or resume a run a previous process left.
    Resume(Box<RunRow>),
}

impl Runner {
    /// The scheduler; `wake` is poked when candidates are committed.
    pub fn new(
        store: Store,
        registry: Arc<AgentRegistry>,
        puppets: Arc<Puppets>,
        metrics: Arc<Metrics>,
        settings: RunSettings,
        wake: Arc<Notify>,
        stops: Arc<RunStops>,
    ) -> Result<Arc<Self>, reqwest::Error> {
        Ok(Arc::new(Self {
            global: Arc::new(Semaphore::new(settings.max_concurrent_runs)),
            limiter: RateLimiter::new(settings.runs_per_minute),
            http: runtime::http_client()?,
            tools: tools::Tools::new(settings.tools.clone(), store.clone(), metrics.clone())?,
            nats: nats::Broker::new(&settings.events, metrics.clone()),
            store,
            registry,
            puppets,
            metrics,
            settings,
            active: Mutex::default(),
            stops,
            wake,
        }))
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashSet<(AgentId, ChannelId)>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, outcome: &'static str) {
        self.metrics.trigger(outcome);
    }

    /// Schedules until cancelled. Runs in flight stop at cancellation and are resumed by the
    /// next start (their state is durable).
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut workers = JoinSet::new();
        if let Some(broker) = &self.nats {
            tokio::spawn(broker.clone().prepare(cancel.clone()));
        }
        match self.store.runs().open().await {
            Ok(runs) => {
                if !runs.is_empty() {
                    tracing::info!(runs = runs.len(), "resuming runs the last process left");
                }
                for run in runs {
                    if let Some(channel) = run.channel_id
                        && self.active().insert((run.agent_id, channel))
                    {
                        self.spawn(&mut workers, Work::Resume(Box::new(run)), &cancel);
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the runs to resume; they wait for the next start")
            }
        }
        loop {
            if let Err(error) = self.evaluate().await {
                tracing::warn!(%error, "cannot evaluate trigger candidates; retrying");
            }
            let next = match self.dispatch(&mut workers, &cancel).await {
                Ok(next) => next,
                Err(error) => {
                    tracing::warn!(%error, "cannot read pending triggers; retrying");
                    None
                }
            };
            let wait = next.unwrap_or(POLL).min(POLL);
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(done) = workers.join_next(), if !workers.is_empty() => {
                    if let Err(error) = done {
                        tracing::error!(%error, "a run worker panicked; its run is resumed at the next start");
                        self.metrics.task_failed("run");
                    }
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // Workers see the cancellation and stop at their next await point.
        while workers.join_next().await.is_some() {}
    }

    fn spawn(self: &Arc<Self>, workers: &mut JoinSet<()>, work: Work, cancel: &CancellationToken) {
        let this = self.clone();
        let cancel = cancel.child_token();
        workers.spawn(async move {
            let key = match &work {
                Work::Group(g) => (g.agent_id, g.channel_id),
                Work::Resume(r) => (r.agent_id, r.channel_id.unwrap_or_default()),
            };
            let result = match work {
                Work::Group(group) => this.queue_and_run(group, &cancel).await,
                Work::Resume(run) => this.resume(*run, &cancel).await,
            };
            if let Err(error) = result {
                tracing::error!(%error, agent_id = %key.0, channel_id = %key.1, "run could not run; it is retried");
            }
            this.active().remove(&key);
            // Triggers that arrived meanwhile are due now.
            this.wake.notify_one();
        });
    }

    /// Evaluates committed candidates into per-agent triggers.
    async fn evaluate(&self) -> Result<(), StoreError> {
        loop {
            let candidates = self.store.triggers().candidates(EVALUATE_BATCH).await?;
            let n = candidates.read() as i64;
            // A candidate whose row holds an invalid id could address nobody answerable.
            for bad in candidates.bad {
                self.store.triggers().cancel(bad.raw.id).await?;
            }
            for candidate in candidates.rows {
                let evaluation = triggers::evaluate(
                    &self.store,
                    &self.registry,
                    &candidate,
                    Ts::now(),
                    self.settings.max_message_age,
                )
                .await?;
                self.store
                    .triggers()
                    .evaluate(&candidate, &evaluation.addressed)
                    .await?;
                for outcome in evaluation.outcomes {
                    self.count(outcome);
                }
            }
            if n < EVALUATE_BATCH {
                return Ok(());
            }
        }
    }

    /// Starts a worker for each (agent, channel) whose pending triggers are past the debounce;
    /// returns when the next group is due.
    async fn dispatch(
        self: &Arc<Self>,
        workers: &mut JoinSet<()>,
        cancel: &CancellationToken,
    ) -> Result<Option<Duration>, StoreError> {
        let now = Ts::now();
        let mut next: Option<Duration> = None;
        let groups = self.store.triggers().groups().await?;
        // A group whose room id is invalid can never be answered in its room.
        for bad in groups.bad {
            self.store
                .triggers()
                .cancel_pending(bad.raw.agent_id, bad.raw.channel_id)
                .await?;
        }
        for group in groups.rows {
            let due = group.newest.plus(self.settings.debounce);
            if due > now {
                let wait = Duration::from_millis((due.millis() - now.millis()).max(1) as u64);
                next = Some(next.map_or(wait, |n| n.min(wait)));
                continue;
            }
            if !self.active().insert((group.agent_id, group.channel_id)) {
                // A run of this agent in this channel is going on; its end wakes us.
                continue;
            }
            self.spawn(workers, Work::Group(group), cancel);
        }
        Ok(next)
    }

    /// The chain depth a trigger sent by an agent gives (its triggering answer's depth + 1).
    async fn depth(&self, event_id: &str, from_agent: bool) -> Result<i32, StoreError> {
        if !from_agent {
            return Ok(0);
        }
        let since = Ts::now().minus(self.settings.max_message_age);
        Ok(self
            .store
            .runs()
            .chain_depth_of(event_id, since)
            .await?
            .unwrap_or(0)
            + 1)
    }

    async fn queue_and_run(
        self: &Arc<Self>,
        group: TriggerGroup,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        let Some(agent) = self.registry.by_id(group.agent_id).filter(|a| a.active) else {
            // The agent is gone or disabled: its triggers will never be answered.
            self.store
                .triggers()
                .cancel_pending(group.agent_id, group.channel_id)
                .await?;
            return Ok(());
        };
        // The chain check: an agent's message addresses another agent only so many turns in a
        // row. Too-deep triggers leave the group.
        let mut depth = 0;
        for t in self
            .store
            .triggers()
            .pending(group.agent_id, group.channel_id)
            .await?
        {
            let d = self
                .depth(t.event_id.as_str(), t.payload.0.sender_is_agent)
                .await?;
            if d > self.settings.max_agent_chain as i32 {
                tracing::info!(agent = %agent.user_id, room_id = %group.room_id, event_id = %t.event_id, depth = d, "agent→agent chain limit reached; not answering");
                self.count("loop_refused");
                self.store.triggers().cancel(t.id).await?;
            } else {
                depth = depth.max(d);
            }
        }
        let new = NewRun {
            agent_id: agent.id,
            channel_id: group.channel_id,
            runtime: agent.behaviour.runtime.name(),
            chain_depth: depth,
        };
        let Some((id, _)) = self.store.runs().queue(&new).await? else {
            return Ok(());
        };
        self.start(
            id,
            agent.id,
            group.channel_id,
            &group.room_id,
            false,
            cancel,
        )
        .await
    }

    async fn resume(
        self: &Arc<Self>,
        run: RunRow,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        let Some(channel) = run.channel_id else {
            return Ok(());
        };
        let Some(room) = self.store.rooms().room_of_channel(channel).await? else {
            self.finish(run.id, RunEnd::failed("its channel is gone"))
                .await?;
            return Ok(());
        };
        let resume = run.status == RunStatus::Running;
        if resume && run.attempts >= self.settings.run_attempts as i32 {
            self.finish(
                run.id,
                RunEnd::failed("interrupted too often by bridge restarts"),
            )
            .await?;
            return Ok(());
        }
        self.start(run.id, run.agent_id, channel, &room, resume, cancel)
            .await
    }

    /// Waits for the agent's rate limit and a global slot, starts (or resumes) the run and
    /// executes it.
    async fn start(
        self: &Arc<Self>,
        id: RunId,
        agent: AgentId,
        channel: ChannelId,
        room: &RoomId,
        resume: bool,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        while let Err(wait) = self.limiter.check(&agent) {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let _permit = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            permit = self.global.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return Ok(()),
            },
        };
        let Some((triggers, session)) = self.store.runs().start(id, resume).await? else {
            // Cancelled while queued (its triggers were redacted), or already ended.
            return Ok(());
        };
        let Some(agent) = self.registry.by_id(agent) else {
            self.finish(id, RunEnd::failed("the agent or its room is gone"))
                .await?;
            return Ok(());
        };
        if !agent.active {
            self.finish(id, RunEnd::cancelled("the agent was disabled"))
                .await?;
            return Ok(());
        }
        if triggers.is_empty() {
            self.finish(id, RunEnd::cancelled("its triggers were redacted"))
                .await?;
            return Ok(());
        }
        let intent = self.puppets.intent(agent);
        let started = std::time::Instant::now();
        let stop = self.stops.register(channel, id);
        let ended = tokio::select! {
            // Cancelled mid-run (shutdown): the run stays running and is resumed next start.
            _ = cancel.cancelled() => return Ok(()),
            ended = self.execute(id, &intent, room, channel, session.map(|s| s.to_string()), &triggers, &stop.token) => ended,
        };
        match ended {
            Ended::Deferred => {
                self.store.runs().defer(id).await?;
                tracing::info!(run_id = %id, "run deferred: the runtime answers through the agent API");
            }
            Ended::End(end) => {
                self.metrics
                    .runtime_seconds
                    .observe(started.elapsed().as_secs_f64());
                let status = end.status;
                self.finish(id, end).await?;
                tracing::info!(run_id = %id, agent = %intent.user_id(), room_id = %room, %status, elapsed_ms = started.elapsed().as_millis() as u64, "run finished");
            }
        }
        Ok(())
    }

    async fn finish(&self, id: RunId, end: RunEnd) -> Result<(), StoreError> {
        let status = end.status;
        if self.store.runs().finish(id, &end).await? {
            self.metrics.run(status);
        }
        Ok(())
    }
}
