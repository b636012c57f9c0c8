//! The mirror: turns room events into DAARION rows. It plans a [`Batch`] in memory from the
//! events (in the order received) and the room state it caches, hands the batch to the store as
//! one database transaction, and only then updates its caches and schedules follow-ups (joins,
//! invite rejections, state reads), so nothing it remembers was not committed.

pub mod event;
pub mod followup;
mod planner;
pub mod preview;
pub mod trigger;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, OnceLock, RwLock},
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId, serde::Raw};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use self::{
    event::Envelope,
    planner::{Finished, Planner},
};
use crate::{
    config::Config,
    db::{Batch, NameSource, PowerLevels, Store, StoreError, StoredAgent, Visibility, types::Ts},
    ids::MicrodaoId,
    metrics::Metrics,
};

pub use self::followup::FollowUp;
use self::trigger::{Candidate, Respond, RunSignal};

/// What the mirror remembers of a mirrored room.
#[derive(Debug, Clone)]
pub struct RoomState {
    pub microdao_id: MicrodaoId,
    pub name: String,
    pub name_source: NameSource,
    pub alias: Option<String>,
    pub topic: Option<String>,
    pub visibility: Visibility,
    pub visibility_pinned: bool,
    pub power: PowerLevels,
    /// An invite marked the room as a direct chat.
    pub is_direct: bool,
    /// Agents that are active members, with their response setting.
    pub agents: BTreeMap<String, Respond>,
}

/// Outcome of applying one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Effects committed.
    Committed,
    /// The txnId was already applied; nothing changed.
    Replay,
}

/// How many known senders the mirror remembers before starting afresh (bounds memory).
const KNOWN_USERS_CAP: usize = 100_000;

pub struct Mirror {
    store: Store,
    config: Arc<Config>,
    bot: OwnedUserId,
    pub(crate) metrics: Arc<Metrics>,
    rooms: Mutex<HashMap<OwnedRoomId, RoomState>>,
    known_users: Mutex<HashSet<String>>,
    agents: RwLock<HashMap<String, StoredAgent>>,
    ignored_logged: Mutex<HashSet<OwnedRoomId>>,
    default_microdao: Option<MicrodaoId>,
    follow_ups: mpsc::Sender<FollowUp>,
    /// Where committed triggers and redactions go (the run scheduler), once it exists.
    runs: OnceLock<mpsc::Sender<RunSignal>>,
}

/// Per-transaction working state of the planner.
impl Mirror {
    /// Builds the mirror; loads agents and the default microDAO.
    pub async fn new(
        store: Store,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        follow_ups: mpsc::Sender<FollowUp>,
    ) -> Result<Self, StoreError> {
        let default_microdao = match &config.bridge.default_microdao {
            Some(ext) => store.microdao_by_external_id(ext).await?,
            None => None,
        };
        let mirror = Self {
            bot: config.bot_user_id(),
            store,
            config,
            metrics,
            rooms: Mutex::default(),
            known_users: Mutex::default(),
            agents: RwLock::default(),
            ignored_logged: Mutex::default(),
            default_microdao,
            follow_ups,
            runs: OnceLock::new(),
        };
        mirror.reload_agents().await?;
        Ok(mirror)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn bot(&self) -> &UserId {
        &self.bot
    }

    /// Re-reads the agents table (agents may be added by other services).
    pub async fn reload_agents(&self) -> Result<(), StoreError> {
        let agents = self.store.agents().await?;
        let map = agents
            .into_iter()
            .map(|a| (a.matrix_id.clone(), a))
            .collect();
        *self.agents.write().expect("agents lock") = map;
        Ok(())
    }

    /// Connects the run scheduler: from now on committed triggers reach it.
    pub fn set_run_sink(&self, sink: mpsc::Sender<RunSignal>) {
        let _ = self.runs.set(sink);
    }

    /// Forgets a room's cached state (its agents' settings changed elsewhere).
    pub fn forget_room(&self, room_id: &RoomId) {
        self.rooms.lock().expect("rooms lock").remove(room_id);
    }

    /// Every known agent.
    pub fn agents(&self) -> Vec<StoredAgent> {
        self.agents
            .read()
            .expect("agents lock")
            .values()
            .cloned()
            .collect()
    }

    /// The agent behind a puppet id, if any.
    pub fn agent(&self, user_id: &str) -> Option<StoredAgent> {
        self.agents
            .read()
            .expect("agents lock")
            .get(user_id)
            .cloned()
    }

    /// Applies one homeserver transaction. Events are applied in order; malformed or unknown
    /// events are counted and skipped.
    pub async fn apply_transaction(
        &self,
        txn_id: &str,
        events: &[Raw<ruma::events::AnyTimelineEvent>],
    ) -> Result<Applied, StoreError> {
        let raws: Vec<&RawValue> = events.iter().map(|r| r.json()).collect();
        self.apply(Some(txn_id), None, &raws, false).await
    }

    /// Applies a room's full state read from the homeserver (after a join).
    pub async fn apply_room_state(
        &self,
        room_id: &RoomId,
        state: &[&RawValue],
    ) -> Result<Applied, StoreError> {
        self.apply(None, Some(room_id), state, true).await
    }

    async fn apply(
        &self,
        txn_id: Option<&str>,
        room: Option<&RoomId>,
        raws: &[&RawValue],
        sync: bool,
    ) -> Result<Applied, StoreError> {
        let mut envelopes = Vec::with_capacity(raws.len());
        let mut kept: Vec<&RawValue> = Vec::with_capacity(raws.len());
        // What identifies a transaction besides its txnId: its events. A retry carries the same
        // events (only `unsigned.age` changes), while Synapse on SQLite restarts its txnIds at 1
        // after a restart and sends new events under old ids: those must not count as replays.
        let mut fingerprint = Sha256::new();
        let mut malformed = 0;
        for raw in raws {
            match serde_json::from_str::<Envelope<'_>>(raw.get()) {
                Ok(mut env) => {
                    fingerprint.update(env.event_id.as_bytes());
                    fingerprint.update(b"\n");
                    if env.room_id.is_none() {
                        env.room_id = room.map(ToOwned::to_owned);
                    }
                    if env.room_id.is_some() {
                        envelopes.push(env);
                        kept.push(*raw);
                    } else {
                        malformed += 1;
                    }
                }
                Err(error) => {
                    fingerprint.update(raw.get().as_bytes());
                    fingerprint.update(b"\n");
                    tracing::warn!(txn_id, %error, "skipping malformed event");
                    malformed += 1;
                }
            }
        }

        let mut planner = Planner::new(self, sync);
        planner.load(&envelopes).await?;
        for (raw, env) in kept.iter().zip(&envelopes) {
            let before = planner.candidates.len();
            planner.event(env).await?;
            // Runtimes get the triggering event in full.
            for c in &mut planner.candidates[before..] {
                c.event = serde_json::from_str(raw.get()).unwrap_or_default();
            }
        }
        let Finished {
            batch,
            rooms,
            users,
            follow_ups,
            candidates,
            redacted,
            outcomes,
        } = planner.finish(
            txn_id.map(|id| (id, hex(&fingerprint.finalize()))),
            raws.len(),
        );
        let signals = self.triggers(&batch, &candidates).await?;

        if txn_id.is_none() && batch.is_empty() {
            return Ok(Applied::Committed);
        }
        if !self.store.apply(&batch).await? {
            return Ok(Applied::Replay);
        }

        // Committed: count what it did (a replay or a failed write counts nothing), and let the
        // caches learn what the database holds.
        for _ in 0..malformed {
            self.metrics.event("unknown", "malformed");
        }
        for (kind, outcome) in outcomes {
            self.metrics.event(kind, outcome);
        }
        self.rooms.lock().expect("rooms lock").extend(rooms);
        {
            let mut known = self.known_users.lock().expect("users lock");
            if known.len() + users.len() > KNOWN_USERS_CAP {
                known.clear();
            }
            known.extend(users);
        }
        for f in follow_ups {
            if self.follow_ups.try_send(f).is_err() {
                tracing::warn!("follow-up queue full; dropping a join/reject request");
                self.metrics.follow_up_dropped.inc();
            }
        }
        if let Some(runs) = self.runs.get() {
            for signal in redacted.into_iter().map(RunSignal::Redacted).chain(signals) {
                if runs.try_send(signal).is_err() {
                    tracing::warn!("run queue full; a trigger is dropped");
                    self.metrics
                        .triggers
                        .get_or_create(&crate::metrics::OutcomeLabel { outcome: "dropped" })
                        .inc();
                }
            }
        }
        Ok(Applied::Committed)
    }

    /// Applies the trigger rules to the transaction's candidate messages.
    async fn triggers(
        &self,
        batch: &Batch,
        candidates: &[Candidate],
    ) -> Result<Vec<RunSignal>, StoreError> {
        if candidates.is_empty() || self.runs.get().is_none() {
            return Ok(Vec::new());
        }
        let sent_in_batch = |event: &str| {
            batch
                .messages
                .iter()
                .find(|m| m.event_id == event)
                .map(|m| m.sender.clone())
        };
        let thread_in_batch = |root: &str, agent: &str| {
            batch.messages.iter().any(|m| {
                m.sender == agent && (m.event_id == root || m.thread_root.as_deref() == Some(root))
            })
        };
        let now = Ts::now();
        let mut out = Vec::new();
        for c in candidates {
            let mut outcomes = Vec::new();
            let triggers = trigger::evaluate(
                &self.store,
                c,
                now,
                self.config.bridge.max_message_age,
                &sent_in_batch,
                &thread_in_batch,
                &mut outcomes,
            )
            .await?;
            for outcome in outcomes {
                self.metrics
                    .triggers
                    .get_or_create(&crate::metrics::OutcomeLabel { outcome })
                    .inc();
            }
            out.extend(triggers.into_iter().map(RunSignal::Trigger));
        }
        Ok(out)
    }

    fn log_ignored(&self, room_id: &RoomId, why: &str) {
        if self
            .ignored_logged
            .lock()
            .expect("ignored lock")
            .insert(room_id.to_owned())
        {
            tracing::info!(%room_id, why, "ignoring events of a room that is not mirrored");
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
