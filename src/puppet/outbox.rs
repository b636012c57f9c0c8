//! Delivery of the durable outbox: one dispatcher claims the head of each room's queue (rooms
//! are delivered strictly in order, several rooms at once), sends it as its puppet with the
//! item's stable transaction id (the homeserver deduplicates a re-send after a crash), and has
//! the bridge record what was sent in the same commit that marks the item sent. Transient
//! failures are retried with backoff (429 honours `retry_after`); the queue survives restarts.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use futures_core::future::BoxFuture;
use ruma::{
    EventId, OwnedEventId, OwnedRoomId, RoomId, events::AnyMessageLikeEventContent, serde::Raw,
};
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;

use super::{PuppetError, Puppets};
use crate::{
    db::{
        StoreError,
        decode::BadRow,
        outbox::{OutboxItem, RawOutboxItem},
    },
    model::{Agent, Ts},
};

/// Where delivered sends are recorded: the mirror, seen from the puppet layer (which must not
/// depend on it).
pub trait SentSink: Send + Sync + 'static {
    /// Records that `item` was sent as `event_id` (and marks it sent), in one commit.
    fn sent<'a>(
        &'a self,
        agent: &'a Agent,
        room: &'a RoomId,
        item: &'a OutboxItem,
        event_id: &'a EventId,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Rooms delivered at once.
const PARALLEL: usize = 16;
/// Re-read the queue this often even without a wake-up (a lost wake-up only delays).
const POLL: Duration = Duration::from_secs(5);

/// The outbox's delivery worker.
pub struct Delivery<S> {
    puppets: Arc<Puppets>,
    sink: Arc<S>,
    wake: Arc<Notify>,
}

/// How one attempt ended.
enum Attempt {
    Sent(OwnedEventId),
    Retry(PuppetError, Duration),
    Failed(PuppetError),
}

impl<S: SentSink> Delivery<S> {
    /// A worker delivering `puppets`' queue, recording sends in `sink`; `wake` is what
    /// [`Puppets`] pokes when it queues.
    pub fn new(puppets: Arc<Puppets>, sink: Arc<S>, wake: Arc<Notify>) -> Arc<Self> {
        Arc::new(Self {
            puppets,
            sink,
            wake,
        })
    }

    /// Delivers until cancelled; in-flight deliveries finish first.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut inflight = JoinSet::new();
        let mut rooms: HashMap<tokio::task::Id, OwnedRoomId> = HashMap::new();
        let mut busy: HashSet<OwnedRoomId> = HashSet::new();
        loop {
            let mut next_due: Option<Ts> = None;
            match self.puppets.store.outbox().heads(256).await {
                Ok(heads) => {
                    for bad in heads.bad {
                        self.fail_bad(bad).await;
                    }
                    let now = Ts::now();
                    for item in heads.rows {
                        if inflight.len() >= PARALLEL {
                            break;
                        }
                        if busy.contains(&item.room_id) {
                            continue;
                        }
                        if let Some(at) = item.not_before.filter(|at| *at > now) {
                            next_due = Some(next_due.map_or(at, |n| n.min(at)));
                            continue;
                        }
                        busy.insert(item.room_id.clone());
                        let room = item.room_id.clone();
                        let this = self.clone();
                        let handle = inflight.spawn(async move { this.deliver(item).await });
                        rooms.insert(handle.id(), room);
                    }
                }
                Err(error) => tracing::warn!(%error, "outbox unreadable; retrying"),
            }
            let wait = next_due
                .map(|at| Duration::from_millis((at.millis() - Ts::now().millis()).max(0) as u64))
                .unwrap_or(POLL)
                .min(POLL);
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(done) = inflight.join_next_with_id(), if !inflight.is_empty() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(error) => {
                            tracing::error!(%error, "an outbox delivery panicked; its item stays queued");
                            self.puppets.metrics.task_failed("outbox-delivery");
                            error.id()
                        }
                    };
                    if let Some(room) = rooms.remove(&id) {
                        busy.remove(&room);
                    }
                    self.puppets.finished.notify_waiters();
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // Shutdown: let in-flight sends finish (each is bounded by the client's timeout), so no
        // item is left half-recorded.
        while inflight.join_next().await.is_some() {}
    }

    /// A queued item whose row holds an invalid id can never be sent: it fails for good (and
    /// the room's next item becomes its head).
    async fn fail_bad(&self, bad: BadRow<RawOutboxItem>) {
        let error = PuppetError::InvalidId(bad.error.to_string());
        tracing::error!(outbox_id = %bad.raw.id, %error, "puppet send failed for good");
        self.puppets.metrics.outbox("failed");
        if let Err(error) = self
            .puppets
            .store
            .outbox()
            .fail(bad.raw.id, &error.to_string())
            .await
        {
            tracing::warn!(%error, outbox_id = %bad.raw.id, "cannot record a delivery attempt");
        }
    }

    async fn deliver(&self, item: OutboxItem) {
        let attempt = match self.try_deliver(&item).await {
            Ok(event_id) => Attempt::Sent(event_id),
            Err(error) if error.is_transient() => {
                let backoff = BACKOFF_START
                    .saturating_mul(2u32.saturating_pow(item.attempts.clamp(0, 16) as u32))
                    .min(BACKOFF_MAX);
                let wait = match &error {
                    PuppetError::Hs(e) => e.retry_after().unwrap_or(backoff),
                    _ => backoff,
                };
                Attempt::Retry(error, wait)
            }
            Err(error) => Attempt::Failed(error),
        };
        let store = &self.puppets.store;
        let recorded = match attempt {
            Attempt::Sent(event_id) => {
                tracing::info!(room_id = %item.room_id, %event_id, txn_id = %item.txn_id, "puppet send delivered");
                self.puppets.metrics.outbox("sent");
                Ok(())
            }
            Attempt::Retry(error, wait) => {
                tracing::warn!(room_id = %item.room_id, txn_id = %item.txn_id, %error, retry_in_ms = wait.as_millis() as u64, "puppet send failed; will retry");
                self.puppets.metrics.outbox("retry");
                store
                    .outbox()
                    .retry(item.id, &error.to_string(), Ts::now().plus(wait))
                    .await
            }
            Attempt::Failed(error) => {
                tracing::error!(room_id = %item.room_id, txn_id = %item.txn_id, %error, "puppet send failed for good");
                self.puppets.metrics.outbox("failed");
                store.outbox().fail(item.id, &error.to_string()).await
            }
        };
        if let Err(error) = recorded {
            // The item stays pending and is attempted again: the same transaction id makes the
            // homeserver return the same event.
            tracing::warn!(%error, outbox_id = %item.id, "cannot record a delivery attempt");
        }
    }

    async fn try_deliver(&self, item: &OutboxItem) -> Result<OwnedEventId, PuppetError> {
        let agent = self
            .puppets
            .registry
            .by_id(item.agent_id)
            .ok_or_else(|| PuppetError::Gone(item.agent_id.to_string()))?;
        let room: &RoomId = &item.room_id;
        // The homeserver cannot check the lease's epoch: confirm it right before sending, so a
        // leader that lost its lease while paused sends nothing its successor also sends
        // (the same transaction id would make the homeserver return one event anyway, but an
        // encrypted send would spend a Megolm index the successor reuses).
        self.puppets.store.lease().confirm().await?;
        let intent = self.puppets.intent(agent.clone());
        intent.ensure_joined(room).await?;
        let hs = &self.puppets.hs;
        let event_id = match &item.redacts {
            Some(target) => {
                let mut reason = item
                    .content
                    .0
                    .get("reason")
                    .and_then(|r| r.as_str())
                    .map(str::to_owned);
                // A redaction cannot be encrypted: the homeserver must read it to apply it, and
                // clients (Element included) send it in clear. Its reason would be the only
                // text of the agent's in clear in an encrypted room, so it is left out there.
                if reason.is_some()
                    && let Some(crypto) = self.puppets.crypto()
                    && crypto.is_encrypted(room, &agent.user_id).await?
                {
                    tracing::debug!(room = %room, "redaction reason left out in an encrypted room");
                    reason = None;
                }
                hs.redact(room, &agent.user_id, target.clone(), &item.txn_id, reason)
                    .await?
            }
            None => {
                let raw = serde_json::value::to_raw_value(&item.content.0)
                    .map_err(|e| PuppetError::InvalidId(e.to_string()))?;
                let content = Raw::<AnyMessageLikeEventContent>::from_json(raw);
                // Into an encrypted room only ever encrypted: the same transaction id makes a
                // retry (whose ciphertext differs) return the event first sent.
                let encrypted = match self.puppets.crypto() {
                    Some(crypto) => {
                        crypto
                            .encrypt(&agent.user_id, room, &item.event_type, &content)
                            .await?
                    }
                    None => None,
                };
                let (event_type, content) = match encrypted {
                    Some(encrypted) => ("m.room.encrypted", encrypted),
                    None => (item.event_type.as_str(), content),
                };
                hs.send_event(room, &agent.user_id, &item.txn_id, event_type, content)
                    .await?
            }
        };
        // Mirror what was sent at once (the echo in a later transaction is then a no-op), count
        // it as the agent's activity, and mark the item sent, in one commit.
        self.sink.sent(&agent, room, item, &event_id).await?;
        Ok(event_id)
    }
}
