//! Agents that answer: the run scheduler and executor. Committed triggers arrive from the
//! mirror; messages addressing the same agent in the same channel within the debounce window
//! merge into one run; at most one run per (agent, channel) runs at a time, under a global
//! concurrency limit and a per-agent rate limit; agent→agent chains stop at
//! `bridge.max_agent_chain`. A run types, calls its runtime, streams the answer into one message
//! edited as it grows, and is recorded in `agent_runs` from `queued` to its end.

pub mod openai;
pub mod runtime;
pub mod webhook;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ruma::{OwnedEventId, OwnedRoomId, UserId};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use self::runtime::{AgentInfo, ChannelInfo, Echo, RunOutput, RunRequest, Runtime, Turn};
use crate::{
    api::RateLimiter,
    config::{Config, MessageKind, RuntimeKind},
    db::{Store, StoreError, StoredAgent, runs::RunEnd, types::Ts},
    ids::RunId,
    metrics::{Metrics, OutcomeLabel, StatusLabel},
    mirror::{
        Mirror,
        trigger::{RunSignal, Trigger},
    },
    puppet::{
        Puppets,
        content::{self, Outgoing},
    },
};

/// Capacity of the signal queue between the mirror and the scheduler.
pub const QUEUE: usize = 4096;

type Key = (String, OwnedRoomId);

#[derive(Default)]
struct Slot {
    /// Triggers waiting for the debounce to end or for the running run to finish.
    pending: Vec<Trigger>,
    deadline: Option<Instant>,
    /// The run queued (recorded, waiting for a slot) with its triggers.
    queued: Option<(RunId, Vec<Trigger>)>,
    worker: bool,
}

pub struct Runner {
    store: Store,
    config: Arc<Config>,
    mirror: Arc<Mirror>,
    puppets: Arc<Puppets>,
    metrics: Arc<Metrics>,
    runtimes: HashMap<String, Arc<dyn Runtime>>,
    echo: Arc<dyn Runtime>,
    global: Arc<Semaphore>,
    limiter: RateLimiter,
    slots: Mutex<HashMap<Key, Slot>>,
}

impl Runner {
    pub fn new(
        store: Store,
        config: Arc<Config>,
        mirror: Arc<Mirror>,
        puppets: Arc<Puppets>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let mut runtimes: HashMap<String, Arc<dyn Runtime>> = HashMap::new();
        for b in &config.blueprints {
            let rt: Arc<dyn Runtime> = match (b.runtime, &b.openai, &b.webhook) {
                (RuntimeKind::Openai, Some(o), _) => Arc::new(openai::OpenAi::new(o.clone())),
                (RuntimeKind::Webhook, _, Some(w)) => Arc::new(webhook::Webhook::new(w.clone())),
                _ => Arc::new(Echo),
            };
            runtimes.insert(b.code.clone(), rt);
        }
        Arc::new(Self {
            global: Arc::new(Semaphore::new(config.bridge.max_concurrent_runs)),
            limiter: RateLimiter::new(config.bridge.runs_per_minute),
            store,
            config,
            mirror,
            puppets,
            metrics,
            runtimes,
            echo: Arc::new(Echo),
            slots: Mutex::default(),
        })
    }

    /// Consumes the mirror's signals until the queue closes.
    pub async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<RunSignal>) {
        while let Some(signal) = rx.recv().await {
            match signal {
                RunSignal::Trigger(t) => {
                    if let Err(error) = self.submit(t).await {
                        tracing::warn!(%error, "cannot schedule a run");
                    }
                }
                RunSignal::Redacted(event) => self.cancel(&event).await,
            }
        }
    }

    fn count(&self, outcome: &'static str) {
        self.metrics
            .triggers
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    async fn submit(self: &Arc<Self>, t: Trigger) -> Result<(), StoreError> {
        if t.from_agent {
            // Agent→agent: the chain grows by one with every turn; past the limit, no run.
            let since = Ts(Ts::now().0
                - chrono::Duration::from_std(self.config.bridge.max_message_age)
                    .unwrap_or_default());
            let depth = self
                .store
                .chain_depth_of(&t.event_id, since)
                .await?
                .unwrap_or(0)
                + 1;
            if depth > self.config.bridge.max_agent_chain as i32 {
                tracing::info!(agent = %t.agent, room_id = %t.room_id, event_id = %t.event_id, depth, "agent→agent chain limit reached; not answering");
                self.count("loop_refused");
                return Ok(());
            }
        }
        let key = (t.agent.clone(), t.room_id.clone());
        let spawn = {
            let mut slots = self.slots.lock().expect("slots lock");
            let slot = slots.entry(key.clone()).or_default();
            slot.pending.push(t);
            slot.deadline = Some(Instant::now() + self.config.bridge.debounce);
            !std::mem::replace(&mut slot.worker, true)
        };
        if spawn {
            let this = self.clone();
            tokio::spawn(async move { this.worker(key).await });
        }
        Ok(())
    }

    /// A redacted trigger leaves its queued run; a run left without triggers is cancelled.
    async fn cancel(&self, event: &str) {
        let mut cancelled = Vec::new();
        {
            let mut slots = self.slots.lock().expect("slots lock");
            for slot in slots.values_mut() {
                slot.pending.retain(|t| t.event_id != event);
                if let Some((id, triggers)) = &mut slot.queued {
                    triggers.retain(|t| t.event_id != event);
                    if triggers.is_empty() {
                        cancelled.push(*id);
                        slot.queued = None;
                    }
                }
            }
        }
        for id in cancelled {
            let end = RunEnd {
                status: "cancelled",
                error: Some("its trigger was redacted".into()),
                ..Default::default()
            };
            match self.store.finish_run(id, &end).await {
                Ok(true) => {
                    tracing::info!(run_id = %id, "run cancelled: trigger redacted");
                    self.metrics
                        .runs
                        .get_or_create(&StatusLabel {
                            status: "cancelled".into(),
                        })
                        .inc();
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, run_id = %id, "cannot record a cancelled run"),
            }
        }
    }

    /// Runs the (agent, channel)'s work one run at a time until nothing is pending.
    async fn worker(self: Arc<Self>, key: Key) {
        loop {
            // Debounce: wait until no new trigger arrived for the whole window.
            loop {
                let deadline = {
                    let slots = self.slots.lock().expect("slots lock");
                    slots.get(&key).and_then(|s| s.deadline)
                };
                match deadline {
                    Some(d) if d > Instant::now() => tokio::time::sleep_until(d.into()).await,
                    _ => break,
                }
            }
            let triggers = {
                let mut slots = self.slots.lock().expect("slots lock");
                let slot = slots.get_mut(&key).expect("worker owns the slot");
                slot.deadline = None;
                let triggers = std::mem::take(&mut slot.pending);
                if triggers.is_empty() {
                    slot.worker = false;
                    slots.remove(&key);
                    return;
                }
                triggers
            };
            if let Err(error) = self.queue_and_execute(&key, triggers).await {
                tracing::error!(%error, agent = %key.0, room_id = %key.1, "run failed to run");
            }
        }
    }

    async fn queue_and_execute(
        self: &Arc<Self>,
        key: &Key,
        triggers: Vec<Trigger>,
    ) -> Result<(), StoreError> {
        let Some(agent) = self.mirror.agent(&key.0) else {
            return Ok(());
        };
        let user = UserId::parse(&agent.matrix_id).map_err(|e| StoreError::Seed(e.to_string()))?;
        let blueprint = self.config.agent_blueprint(&user);
        let runtime = blueprint
            .and_then(|b| self.runtimes.get(&b.code).cloned())
            .unwrap_or_else(|| self.echo.clone());
        // The definitive chain check: the answer that triggered this may have been recorded only
        // after `submit` looked (the homeserver can echo a message before our send returns), but
        // it is by the end of the debounce. Too-deep agent triggers leave the run.
        let since = Ts(Ts::now().0
            - chrono::Duration::from_std(self.config.bridge.max_message_age).unwrap_or_default());
        let mut depth = 0;
        let mut kept = Vec::with_capacity(triggers.len());
        for t in triggers {
            let d = if t.from_agent {
                self.store
                    .chain_depth_of(&t.event_id, since)
                    .await?
                    .unwrap_or(0)
                    + 1
            } else {
                0
            };
            if d > self.config.bridge.max_agent_chain as i32 {
                tracing::info!(agent = %key.0, room_id = %key.1, event_id = %t.event_id, depth = d, "agent→agent chain limit reached; not answering");
                self.count("loop_refused");
            } else {
                depth = depth.max(d);
                kept.push(t);
            }
        }
        if kept.is_empty() {
            return Ok(());
        }
        let triggers = kept;
        let id = RunId::new();
        let input = json!({ "triggers": triggers.iter().map(|t| &t.event).collect::<Vec<_>>() });
        self.store
            .insert_run(
                id,
                &key.0,
                key.1.as_str(),
                &triggers[0].event_id,
                &input,
                runtime.name(),
                depth,
            )
            .await?;
        self.set_queued(key, Some((id, triggers)));

        // Wait for this agent's rate limit and a global slot; triggers arriving meanwhile merge
        // into this queued run.
        while let Err(wait) = self.limiter.check(agent.id) {
            tokio::time::sleep(wait).await;
        }
        let _permit = self
            .global
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closes");
        let triggers = {
            let mut slots = self.slots.lock().expect("slots lock");
            let slot = slots.get_mut(key).expect("worker owns the slot");
            let queued = slot.queued.take();
            match queued {
                // Cancelled while queued (its triggers were redacted).
                None => return Ok(()),
                Some((_, mut triggers)) => {
                    triggers.append(&mut slot.pending);
                    slot.deadline = None;
                    triggers
                }
            }
        };
        let input = json!({ "triggers": triggers.iter().map(|t| &t.event).collect::<Vec<_>>() });
        self.store.start_run(id, &input).await?;
        let started = Instant::now();
        let end = self
            .execute(
                id,
                &agent,
                &key.1,
                &triggers,
                runtime.as_ref(),
                blueprint.map(|b| b.code.as_str()),
            )
            .await;
        let status = end.status;
        if status != "running" {
            self.metrics
                .runtime_seconds
                .observe(started.elapsed().as_secs_f64());
            if self.store.finish_run(id, &end).await? {
                self.metrics
                    .runs
                    .get_or_create(&StatusLabel {
                        status: status.into(),
                    })
                    .inc();
            }
        }
        tracing::info!(run_id = %id, agent = %agent.matrix_id, room_id = %key.1, status, elapsed_ms = started.elapsed().as_millis() as u64, "run finished");
        Ok(())
    }

    fn set_queued(&self, key: &Key, queued: Option<(RunId, Vec<Trigger>)>) {
        let mut slots = self.slots.lock().expect("slots lock");
        if let Some(slot) = slots.get_mut(key) {
            slot.queued = queued;
        }
    }

    /// Calls the runtime and turns its answer into one message (edited as it streams).
    async fn execute(
        &self,
        id: RunId,
        agent: &StoredAgent,
        room: &OwnedRoomId,
        triggers: &[Trigger],
        runtime: &dyn Runtime,
        blueprint_code: Option<&str>,
    ) -> RunEnd {
        let typing = async {
            let u = self.puppets.ensure_ready(agent).await?;
            self.puppets.ensure_joined(room, agent, &u).await?;
            self.puppets
                .hs()
                .typing(room, &u, Some(Duration::from_secs(30)))
                .await?;
            Ok::<(), crate::puppet::PuppetError>(())
        };
        // Typing shows while the context is read: both are homeserver round trips.
        let (typed, request) = tokio::join!(typing, self.request(id, agent, room, triggers));
        if let Err(error) = typed {
            tracing::warn!(run_id = %id, %error, "cannot show typing");
        }
        let request = match request {
            Ok(r) => r,
            Err(error) => {
                return self
                    .failed(
                        id,
                        agent,
                        room,
                        blueprint_code,
                        format!("cannot read the room's context: {error}"),
                    )
                    .await;
            }
        };
        let (tx, rx) = mpsc::channel::<String>(256);
        let last = triggers.last().expect("a run has triggers");
        let stream = self.stream(id, agent, room, last, rx);
        let called = Instant::now();
        let (result, streamed) = tokio::join!(runtime.call(&request, tx), stream);
        match result {
            Ok(RunOutput { deferred: true, .. }) => RunEnd {
                status: "running",
                ..Default::default()
            },
            Ok(out) => {
                if let Some(ttft) = streamed.first_token {
                    self.metrics
                        .first_token_seconds
                        .observe(ttft.duration_since(called).as_secs_f64());
                }
                match streamed.event_id {
                    Some(event_id) => RunEnd {
                        status: "completed",
                        output: Some(json!({ "text": out.text })),
                        reply_event_id: Some(event_id),
                        prompt_tokens: out.prompt_tokens,
                        completion_tokens: out.completion_tokens,
                        error: None,
                    },
                    None => {
                        self.failed(
                            id,
                            agent,
                            room,
                            blueprint_code,
                            streamed
                                .error
                                .unwrap_or_else(|| "the answer could not be posted".into()),
                        )
                        .await
                    }
                }
            }
            Err(error) => {
                // Whatever was already posted stays; the run is failed, never retried.
                let mut end = self
                    .failed(id, agent, room, blueprint_code, error.to_string())
                    .await;
                end.reply_event_id = streamed.event_id;
                end
            }
        }
    }

    /// Posts the answer as it streams: typing until the first piece, then one message edited
    /// no more often than `stream_edit_interval`, and a final edit with the whole text.
    async fn stream(
        &self,
        id: RunId,
        agent: &StoredAgent,
        room: &OwnedRoomId,
        last: &Trigger,
        mut rx: mpsc::Receiver<String>,
    ) -> Streamed {
        let user = UserId::parse(&agent.matrix_id).expect("agents have valid ids");
        let kind = self.config.agent_message_kind(&user);
        let interval = self.config.bridge.stream_edit_interval;
        let mut text = String::new();
        let mut posted_text = String::new();
        let mut out = Streamed::default();
        let mut last_edit = Instant::now();
        let mut target: Option<OwnedEventId> = None;
        loop {
            let piece = if let Some(posted) = target.as_ref().filter(|_| posted_text != text) {
                // Something is waiting to be shown: wake up when the edit interval allows it.
                let wait = interval.saturating_sub(last_edit.elapsed());
                match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(p) => p,
                    Err(_) => {
                        self.edit(agent, room, posted, &text, kind, false).await;
                        posted_text = text.clone();
                        last_edit = Instant::now();
                        continue;
                    }
                }
            } else {
                rx.recv().await
            };
            let Some(piece) = piece else { break };
            if out.first_token.is_none() {
                out.first_token = Some(Instant::now());
            }
            text.push_str(&piece);
            if target.is_none() && !text.trim().is_empty() {
                let content = content::message(&Outgoing {
                    body: text.clone(),
                    markdown: true,
                    kind,
                    reply_to: last.event_id.as_str().try_into().ok(),
                    thread_root: last.thread_root.as_deref().and_then(|r| r.try_into().ok()),
                    // A reply mentions whom it answers (an agent too: the chain limit bounds that).
                    mentions: last.sender.as_str().try_into().ok().into_iter().collect(),
                });
                match self.post(agent, room, "m.room.message", content).await {
                    Ok(event_id) => {
                        let _ = self.store.set_run_reply(id, event_id.as_str()).await;
                        out.event_id = Some(event_id.to_string());
                        target = Some(event_id);
                        posted_text = text.clone();
                        last_edit = Instant::now();
                    }
                    Err(error) => {
                        out.error = Some(error);
                        // Drain so the runtime is not blocked; the run will be failed.
                        while rx.recv().await.is_some() {}
                        return out;
                    }
                }
            }
        }
        if let Some(target) = &target
            && posted_text != text
        {
            self.edit(agent, room, target, &text, kind, true).await;
        }
        out
    }

    async fn edit(
        &self,
        agent: &StoredAgent,
        room: &OwnedRoomId,
        target: &OwnedEventId,
        text: &str,
        kind: MessageKind,
        wait: bool,
    ) {
        let content = content::edit(target.clone(), text, true, kind, vec![]);
        match self
            .puppets
            .enqueue(agent, room, "m.room.message", content, None, None)
            .await
        {
            Ok((item, _)) if wait => {
                let _ = self.puppets.wait(item.id, self.config.api.send_wait).await;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot queue a streaming edit"),
        }
    }

    async fn post(
        &self,
        agent: &StoredAgent,
        room: &OwnedRoomId,
        event_type: &str,
        content: Value,
    ) -> Result<OwnedEventId, String> {
        let (item, _) = self
            .puppets
            .enqueue(agent, room, event_type, content, None, None)
            .await
            .map_err(|e| e.to_string())?;
        let item = self
            .puppets
            .wait(
                item.id,
                self.config.api.send_wait.max(Duration::from_secs(30)),
            )
            .await
            .map_err(|e| e.to_string())?;
        match (item.status.as_str(), item.event_id) {
            ("sent", Some(e)) => OwnedEventId::try_from(e).map_err(|e| e.to_string()),
            (_, _) => Err(item
                .error
                .unwrap_or_else(|| "the homeserver has not accepted the answer yet".into())),
        }
    }

    /// A failed run: recorded with its error; one short notice in the room when configured.
    async fn failed(
        &self,
        id: RunId,
        agent: &StoredAgent,
        room: &OwnedRoomId,
        blueprint: Option<&str>,
        error: String,
    ) -> RunEnd {
        tracing::warn!(run_id = %id, agent = %agent.matrix_id, room_id = %room, %error, "run failed");
        let bp = blueprint.and_then(|code| self.config.blueprints.iter().find(|b| b.code == code));
        let notice = bp
            .and_then(|b| b.failure_notice)
            .unwrap_or(bp.is_none_or(|b| b.runtime != RuntimeKind::Webhook));
        if let Ok(user) = UserId::parse(&agent.matrix_id) {
            let _ = self.puppets.hs().typing(room, &user, None).await;
        }
        if notice {
            let content = content::message(&Outgoing {
                body: format!(
                    "{} could not answer this time (run {id} failed).",
                    agent.name
                ),
                markdown: false,
                kind: MessageKind::Notice,
                ..Default::default()
            });
            if let Err(e) = self
                .puppets
                .enqueue(
                    agent,
                    room,
                    "m.room.message",
                    content,
                    None,
                    Some(format!("run-failed-{id}")),
                )
                .await
            {
                tracing::warn!(error = %e, "cannot post the failure notice");
            }
        }
        RunEnd {
            status: "failed",
            error: Some(error),
            ..Default::default()
        }
    }

    /// Builds the runtime's request: system prompt, triggers, and the room's recent events
    /// (full bodies, read from the homeserver as the puppet) with speaker names.
    async fn request(
        &self,
        id: RunId,
        agent: &StoredAgent,
        room: &OwnedRoomId,
        triggers: &[Trigger],
    ) -> Result<RunRequest, crate::homeserver::HsError> {
        let user = UserId::parse(&agent.matrix_id).expect("agents have valid ids");
        let bp = self.config.agent_blueprint(&user);
        let decl = self.config.agent_decl(&user);
        let n = bp.map(|b| b.context_events).unwrap_or(20);
        let hs = self.puppets.hs();
        let names = hs.member_names(room, &user).await.unwrap_or_default();
        let events = hs.recent_events(room, &user, n.max(1)).await?;
        let mut context: Vec<Turn> = events
            .iter()
            .filter_map(|raw| {
                let v: Value = serde_json::from_str(raw.json().get()).ok()?;
                if v["type"] != "m.room.message"
                    || v["content"]["m.relates_to"]["rel_type"] == "m.replace"
                {
                    return None;
                }
                let sender = v["sender"].as_str()?.to_owned();
                let text = v["content"]["body"].as_str()?.to_owned();
                let name = names.get(&sender).cloned().unwrap_or_else(|| {
                    sender
                        .trim_start_matches('@')
                        .split(':')
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                });
                Some(Turn {
                    is_self: sender == agent.matrix_id,
                    name,
                    text,
                    event_id: v["event_id"].as_str().unwrap_or_default().to_owned(),
                    sender,
                })
            })
            .collect();
        context.reverse();
        let mut system = bp
            .and_then(|b| b.instructions.clone())
            .unwrap_or_else(|| format!("You are {}, an AI agent in a Matrix chat.", agent.name));
        if let Some(extra) = decl.and_then(|d| d.instructions.as_ref()) {
            system.push_str("\n\n");
            system.push_str(extra);
        }
        let channel_id = self
            .store
            .channel_for_room(room.as_str())
            .await
            .ok()
            .flatten()
            .map(|c| c.to_string())
            .unwrap_or_default();
        Ok(RunRequest {
            run_id: id.to_string(),
            agent: AgentInfo {
                id: agent.id.to_string(),
                external_id: decl.map(|d| d.external_id.clone()).unwrap_or_default(),
                name: agent.name.clone(),
                matrix_id: agent.matrix_id.clone(),
            },
            channel: ChannelInfo {
                id: channel_id,
                room_id: room.to_string(),
            },
            session_id: None,
            model: bp.and_then(|b| b.model.clone()),
            system_prompt: system,
            triggers: triggers.iter().map(|t| t.event.clone()).collect(),
            trigger_texts: triggers.iter().map(|t| t.body.clone()).collect(),
            context,
        })
    }
}

#[derive(Default)]
struct Streamed {
    event_id: Option<String>,
    first_token: Option<Instant>,
    error: Option<String>,
}
